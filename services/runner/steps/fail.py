"""`fail`: ends the run on purpose with a message (a template) and optionally a status
code (default 500 `flow_error`)."""

from typing import Any, Literal

from pydantic import Field

from services.runner.steps.base import RunContext, StepModel, StepType


class StepFailed(Exception):
    """A step's failure. `status`: the answer's status code a `fail` step asks for;
    `answered_status`: what the server answered an `http` step that failed (None: no
    answer, or not an `http` step); `recoverable`: False for a failure that used up one
    of the run's own bounds (a render's CPU budget, memory), after which the flow's
    `on_error` steps do not run."""

    def __init__(
        self,
        ref_id: str,
        message: str,
        status: int | None = None,
        *,
        answered_status: int | None = None,
        recoverable: bool = True,
    ) -> None:
        super().__init__(message)
        self.ref_id = ref_id
        self.message = message
        self.status = status
        self.answered_status = answered_status
        self.recoverable = recoverable


class FailStep(StepModel):
    type: Literal["fail"]
    message: str = "the flow failed"
    status_code: int = Field(default=500, ge=100, le=599)

    def templates(self) -> dict[str, str]:
        return {"message": self.message}


async def run(step: FailStep, ctx: RunContext) -> Any:
    message = ctx.templates.render_text(step.message, ctx.values, f"{ctx.path}.message")
    raise StepFailed(step.ref_id, message, step.status_code)


FAIL = StepType("fail", FailStep, run)
