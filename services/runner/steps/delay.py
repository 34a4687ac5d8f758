"""`delay`: `{"type": "delay", "seconds": N}` (1 s to 7 days): the run stops here, its
state (the context so far, the step to go on with, the trace) is stored in the runner's
database and its worker slot freed; any runner resumes it after the delay
(services/runner/delays.py). Only at the top level of `steps`, and in a sync flow only
after a `respond` (step_placement.py).

It raises `RunSuspended`, a BaseException like a cancellation: the engine's catch-all for
a step's failure (`except Exception`) must not turn it into one, and no step or
`on_error` handles it. The worker turns it into the stored state."""

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from services.runner.steps.base import RunContext, StepModel, StepType

MAX_DELAY_S = 7 * 86_400


class RunSuspended(BaseException):
    """The run stops at the top-level step `ref_id` until `resume_at`; `values` is the
    run's context so far (its top-level step outputs, `request`, the webhook's input).
    `output`: the step's own, in the trace. `answers`: a `respond` step's hand-over,
    whose answer the caller gets once the run is stored (steps/respond.py)."""

    def __init__(
        self,
        ref_id: str,
        resume_at: datetime,
        values: dict[str, Any],
        output: dict[str, Any] | None = None,
        answers: bool = False,
    ) -> None:
        super().__init__(ref_id)
        self.ref_id = ref_id
        self.resume_at = resume_at
        self.values = values
        self.output = output if output is not None else {"resume_at": resume_at.isoformat()}
        self.answers = answers


class DelayStep(StepModel):
    type: Literal["delay"]
    seconds: int = Field(ge=1, le=MAX_DELAY_S)

    def trace_input(self) -> dict[str, Any]:
        return {"seconds": self.seconds}


async def run(step: DelayStep, ctx: RunContext) -> Any:
    resume_at = datetime.now(UTC) + timedelta(seconds=step.seconds)
    raise RunSuspended(step.ref_id, resume_at, ctx.values)


DELAY = StepType("delay", DelayStep, run)
