"""Runs a flow for one webhook request: the steps in order, each output reachable by
its ref-id in later templates, then the webhook response. Produces the `RunResult`
(the exact HTTP answer for the sender) and the step trace.

The response's templates (its body and each header) render as one unit: one render
budget (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S of CPU time) for all of them together, and a
pause (a pass through the event loop) before each, so that no slice of the run holds
its worker past the slice bound however many templates the response has: past the
budget the run fails with `flow_error`, and no worker is killed.

A flow's `on_error` steps run when a step fails (`_recover`): a `fail` step, an `http`
step that could not be sent or was refused, a template's error, a value past its bound,
whatever else a step raises. Not when the run is stopped from outside (its timeout, its
CPU or memory bound, its worker killed), nor after a failure that used up one of the
run's own budgets (a render past FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S, memory), nor when
the response itself fails. They see the context so far plus `error` (`step`: the
failed step's ref-id, `message`, `status`: what the server answered an `http` step, or
null); then the flow's response, if it has one, is the answer. The run stays `failed`
with the step's error: the sender got an answer, but a step did fail (alerts count it)."""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from services.runner.bounds import BoundExceeded, RunBounds, bound_trace, json_value
from services.runner.definition import ERROR_NAME, FlowDefinition
from services.runner.render_budget import RenderBudget
from services.runner.steps import STEP_TYPES, StepModel
from services.runner.steps.base import RunContext, RunState
from services.runner.steps.fail import StepFailed
from services.runner.templates import RenderBudgetFailure, TemplateEngine, TemplateFailure
from shared.errors import FlowError
from shared.outbound import OutboundHttp
from shared.schemas.runs import RunResult, StepTrace, WebhookRequest, error_result
from shared.schemas.vocabulary import JSON, Outcome, envelope
from shared.tracing import traced_step

if TYPE_CHECKING:
    from services.runner.worker_protocol import Resumed

_OUT_OF_MEMORY = "the run went over its worker's memory bound (FLOWHOOKS_RUNNER_WORKER_MEMORY_MB)"
TEXT = "text/plain; charset=utf-8"
# A rendered response header value, at most (a header line must stay well within what
# proxies and clients accept, 8 KiB being common).
MAX_HEADER_VALUE_CHARS = 4096


@dataclass(frozen=True)
class Flow:
    id: str
    workspace_id: str
    version: int
    definition: FlowDefinition


class Engine:
    def __init__(
        self,
        templates: TemplateEngine,
        limits: RunBounds | None = None,
        http: OutboundHttp | None = None,
    ) -> None:
        self.templates = templates
        self.limits = limits or RunBounds()
        self.http = http

    def context(self, flow: Flow, request: WebhookRequest) -> dict[str, Any]:
        return {
            flow.definition.webhook.ref_id: request.input,
            "request": {
                "id": request.request_id,
                "method": request.method,
                "path": request.path,
                "headers": request.headers,
                "query": request.query,
                "raw_body": request.raw_body_text(),
                "received_at": request.received_at.isoformat(),
            },
        }

    async def run_steps(
        self,
        steps: list[StepModel],
        values: dict[str, Any],
        prefix: str,
        state: RunState,
        iterations: tuple[int, ...] = (),
    ) -> Any:
        """Run `steps` in order; returns the last one's output (None without steps).
        Every step starts with a pass through the event loop, so that runs sharing a
        worker take turns and the worker's CPU meter sees each step. `iterations`: the
        loop indexes the steps run in (outermost first), which tell an `http` step's
        requests in one iteration from those in another."""
        output: Any = None
        for index, step in enumerate(steps):
            await asyncio.sleep(0)
            path = f"{prefix}[{index}]"
            started_at, clock = datetime.now(UTC), time.perf_counter()
            entry = StepTrace(
                ref_id=step.ref_id,
                type=step.type,
                input=step.trace_input(),
                started_at=started_at,
                duration_ms=0,
            )
            state.record(entry)
            try:
                context = RunContext(
                    self.templates,
                    values,
                    path,
                    self,
                    state,
                    self.limits,
                    self.http,
                    iterations,
                )
                output, state.output_sizes[id(entry)] = json_value(
                    await traced_step(
                        step.ref_id, step.type, STEP_TYPES[step.type].run(step, context)
                    ),
                    self.limits.max_value_bytes,
                )
            except StepFailed as exc:
                entry.error = exc.message
                raise
            except (TemplateFailure, BoundExceeded) as exc:
                entry.error = str(exc)
                raise StepFailed(
                    step.ref_id,
                    str(exc),
                    answered_status=getattr(exc, "answered_status", None),
                    recoverable=not isinstance(exc, RenderBudgetFailure),
                ) from None
            except MemoryError:
                entry.error = _OUT_OF_MEMORY
                raise StepFailed(step.ref_id, _OUT_OF_MEMORY, recoverable=False) from None
            except Exception as exc:
                # Whatever else a flow provokes (RecursionError from a recursive macro,
                # a bug in a step) is this run's failure, never the runner's.
                entry.error = f"{type(exc).__name__}: {str(exc)[:500]}"
                raise StepFailed(step.ref_id, entry.error) from None
            finally:
                entry.duration_ms = round((time.perf_counter() - clock) * 1000, 3)
            entry.output = output
            values[step.ref_id] = output
        return output

    async def run(
        self,
        flow: Flow,
        request: WebhookRequest,
        state: RunState | None = None,
        resume: "Resumed | None" = None,
    ) -> RunResult:
        """The run's result. `state` (the caller's, so that it can read the trace of a
        run it had to stop) collects the trace. `resume`: a run going on after a `delay`
        step (its context as stored; its trace is in `state` already)."""
        state = state if state is not None else RunState(self.limits)
        state.request_id = request.request_id
        started_at = datetime.now(UTC) if resume is None else resume.started_at
        values = self.context(flow, request) if resume is None else resume.values
        steps = (
            flow.definition.steps if resume is None else flow.definition.steps[resume.next_step :]
        )
        if flow.definition.on_error:
            values[ERROR_NAME] = None  # the response may test it: no step failed
        try:
            last = await self.run_steps(steps, values, "steps", state)
            budget = self.templates.budget("the response's body and headers")
            status_code, content_type, body = await self._response(flow, values, last, budget)
            headers = await self._headers(flow, values, budget)
        except StepFailed as exc:
            error = FlowError(f"step {exc.ref_id!r} failed: {exc.message}", status=exc.status)
            if flow.definition.on_error and exc.recoverable:
                return await self._recover(flow, request, values, exc, error, state, started_at)
            return error_result(
                request.request_id, error, Outcome.FAILED, started_at, self.trace(state)
            )
        except (TemplateFailure, BoundExceeded) as exc:
            error = FlowError(f"the webhook response failed: {exc}")
            return error_result(
                request.request_id, error, Outcome.FAILED, started_at, self.trace(state)
            )
        return RunResult(
            request_id=request.request_id,
            outcome=Outcome.SUCCEEDED,
            status_code=status_code,
            content_type=content_type,
            body=body,
            headers=headers,
            steps=self.trace(state),
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )

    async def _recover(
        self,
        flow: Flow,
        request: WebhookRequest,
        values: dict[str, Any],
        failure: StepFailed,
        error: FlowError,
        state: RunState,
        started_at: datetime,
    ) -> RunResult:
        """After `failure`: the flow's `on_error` steps (once: one that fails ends the run
        with both errors, answered with its `fail` status if it is one), then the flow's
        response if it has one (else the step's `flow_error` answer). Always `failed`,
        with the step's error."""
        values[ERROR_NAME] = {
            "step": failure.ref_id,
            "message": failure.message,
            "status": failure.answered_status,
        }
        try:
            await self.run_steps(flow.definition.on_error, values, "on_error", state)
            if flow.definition.webhook.response is None:
                return error_result(
                    request.request_id, error, Outcome.FAILED, started_at, self.trace(state)
                )
            budget = self.templates.budget("the response's body and headers")
            status_code, content_type, body = await self._response(flow, values, None, budget)
            headers = await self._headers(flow, values, budget)
        except StepFailed as exc:
            both = FlowError(
                f"{error.message}; then on_error step {exc.ref_id!r} failed: {exc.message}",
                status=exc.status if exc.status is not None else failure.status,
            )
            return error_result(
                request.request_id, both, Outcome.FAILED, started_at, self.trace(state)
            )
        except (TemplateFailure, BoundExceeded) as exc:
            both = FlowError(f"{error.message}; then the webhook response failed: {exc}")
            return error_result(
                request.request_id, both, Outcome.FAILED, started_at, self.trace(state)
            )
        return RunResult(
            request_id=request.request_id,
            outcome=Outcome.FAILED,
            status_code=status_code,
            content_type=content_type,
            body=body,
            error=error.message,
            headers=headers,
            steps=self.trace(state),
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )

    def trace(self, state: RunState) -> list[StepTrace]:
        return bound_trace(
            state.trace, self.limits.max_trace_bytes, state.dropped_steps, state.output_sizes
        )

    async def _headers(
        self, flow: Flow, values: dict[str, Any], budget: RenderBudget
    ) -> dict[str, str]:
        """The flow's response headers, rendered, each after a pause, within what is left
        of the response's render budget. A value with a line break or another control
        character would split or corrupt the answer: the run fails instead."""
        response = flow.definition.webhook.response
        if response is None or not response.headers:
            return {}
        headers = {}
        for name, template in response.headers.items():
            field = f"webhook.response.headers.{name}"
            await asyncio.sleep(0)
            value = self.templates.render_text(template, values, field, budget)
            if len(value) > MAX_HEADER_VALUE_CHARS:
                raise BoundExceeded(
                    f"{field} rendered to {len(value)} characters, over {MAX_HEADER_VALUE_CHARS}"
                )
            if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
                raise BoundExceeded(f"{field} rendered to a line break or control character")
            headers[name] = value
        return headers

    async def _response(
        self, flow: Flow, values: dict[str, Any], last: Any, budget: RenderBudget
    ) -> tuple[int, str, str]:
        """The sender's status code, content type and body (rendered after a pause, the
        last step's slice being over, within the response's render budget); raises
        `BoundExceeded` for a body past `FLOWHOOKS_RUNNER_MAX_RESPONSE_BYTES` or one that
        is not valid text."""
        response = flow.definition.webhook.response
        if response is None:
            answer = envelope(200, None, "ok", last)
            status_code, content_type, body = 200, JSON, orjson.dumps(answer).decode()
        else:
            await asyncio.sleep(0)
            text = self.templates.render_text(
                response.body, values, "webhook.response.body", budget
            )
            content_type = response.content_type or (JSON if is_json(text) else TEXT)
            status_code, body = response.status_code, text
        try:
            size = len(body.encode())
        except UnicodeEncodeError as exc:
            raise BoundExceeded(f"the body is not valid text: {exc.reason}") from None
        if size > self.limits.max_response_bytes:
            raise BoundExceeded(
                f"the body of {size} bytes is larger than the bound of"
                f" {self.limits.max_response_bytes} bytes (FLOWHOOKS_RUNNER_MAX_RESPONSE_BYTES)"
            )
        return status_code, content_type, body


def is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True
