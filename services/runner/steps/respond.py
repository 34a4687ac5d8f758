"""`respond`: answers a sync flow's caller at this point, with `status_code`, a templated
`body` (its content type as the flow's response: `content_type`, else JSON when the body
is JSON, else text) and templated `headers`; the steps after it go on running, and the
caller does not wait for them. Output `{"status_code", "answered_at"}`.

The rest of the run is handed over durably before the answer is sent: the step raises
`RunSuspended` (as a zero-second `delay`), the worker sends the run's state, and the
supervisor stores it (services/runner/delays.py), then answers the caller and acks the
sync message (services/runner/runs.py). Any runner resumes it at the next step, as an
async run, so a runner killed after the answer loses nothing and the record gets the
run's real outcome. Hence only at the top level of `steps` (step_placement.py).

Once per run: a second `respond` that runs fails the run (its caller has its answer).
Refused on save in async flows (definition.py): their caller was answered `202` when
the request was queued, so there is nobody left to answer. The run's record carries the
answer given (`RunResult.answered_at`, status, body, headers) and the run's own
outcome: a step failing after `respond` makes the run `failed` though its caller got the
answer."""

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from services.runner.bounds import BoundExceeded
from services.runner.steps.base import EarlyAnswer, RunContext, StepModel, StepType
from services.runner.steps.delay import RunSuspended
from services.runner.steps.fail import StepFailed
from shared.schemas.runs import RunResult


class RespondStep(StepModel):
    type: Literal["respond"]
    status_code: int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str | None = Field(default=None, max_length=200)
    headers: dict[str, str] = Field(default_factory=dict)

    def templates(self) -> dict[str, str]:
        return {
            "body": self.body,
            **{f"headers.{name}": value for name, value in self.headers.items()},
        }


async def run(step: RespondStep, ctx: RunContext) -> Any:
    # Here, not at the top: the engine imports the step types.
    from services.runner.engine import MAX_HEADER_VALUE_CHARS, TEXT, is_json
    from shared.schemas.vocabulary import JSON

    if ctx.state.answered is not None:
        raise StepFailed(step.ref_id, "the caller was answered already, by an earlier respond")
    budget = ctx.templates.budget(f"{ctx.path}'s body and headers")
    body = ctx.templates.render_text(step.body, ctx.values, f"{ctx.path}.body", budget)
    try:
        size = len(body.encode())
    except UnicodeEncodeError as exc:
        raise BoundExceeded(f"the body is not valid text: {exc.reason}") from None
    if size > ctx.limits.max_response_bytes:
        raise BoundExceeded(
            f"the body of {size} bytes is larger than the bound of"
            f" {ctx.limits.max_response_bytes} bytes (FLOWHOOKS_RUNNER_MAX_RESPONSE_BYTES)"
        )
    headers = {}
    for name, template in step.headers.items():
        field = f"{ctx.path}.headers.{name}"
        await asyncio.sleep(0)
        value = ctx.templates.render_text(template, ctx.values, field, budget)
        if len(value) > MAX_HEADER_VALUE_CHARS:
            raise BoundExceeded(
                f"{field} rendered to {len(value)} characters, over {MAX_HEADER_VALUE_CHARS}"
            )
        if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
            raise BoundExceeded(f"{field} rendered to a line break or control character")
        headers[name] = value
    content_type = step.content_type or (JSON if is_json(body) else TEXT)
    answer = EarlyAnswer(step.status_code, content_type, body, headers, datetime.now(UTC))
    ctx.state.answered = answer
    output = {"status_code": step.status_code, "answered_at": answer.at.isoformat()}
    # The step's output is part of the stored context: steps after it may use it.
    ctx.values[step.ref_id] = output
    raise RunSuspended(step.ref_id, answer.at, ctx.values, output=output, answers=True)


def with_answer(result: RunResult, answer: EarlyAnswer | None) -> RunResult:
    """The run's result as recorded: what the sender got (the early answer), with how the
    run ended after it."""
    if answer is None:
        return result
    return result.model_copy(
        update={
            "status_code": answer.status_code,
            "content_type": answer.content_type,
            "body": answer.body,
            "headers": answer.headers,
            "answered_at": answer.at,
        }
    )


RESPOND = StepType("respond", RespondStep, run)
