"""Runs a flow for one webhook request: the steps in order, each output reachable by
its ref-id in later templates, then the webhook response. Produces the `RunResult`
(the exact HTTP answer for the sender) and the step trace."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.runner.definition import FlowDefinition
from services.runner.outbound import OutboundHttp
from services.runner.steps import STEP_TYPES, StepModel
from services.runner.steps.base import RunContext, StepLimits
from services.runner.steps.fail import StepFailed
from services.runner.templates import TemplateEngine, TemplateFailure
from shared.errors import ApiError, FlowError
from shared.schemas.runs import RunResult, StepTrace, WebhookRequest

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Flow:
    id: str
    workspace_id: str
    version: int
    definition: FlowDefinition


def json_value(value: Any) -> Any:
    """What a template produced, as plain JSON (anything else becomes its text)."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


def error_result(
    request_id: str,
    error: ApiError,
    outcome: str,
    started_at: datetime,
    steps: list[StepTrace] | None = None,
) -> RunResult:
    return RunResult(
        request_id=request_id,
        outcome=outcome,
        status_code=error.status_code,
        content_type=JSON,
        body=orjson.dumps(error.envelope()).decode(),
        error=error.message,
        steps=steps or [],
        started_at=started_at,
        finished_at=datetime.now(UTC),
    )


class Engine:
    def __init__(
        self,
        templates: TemplateEngine,
        limits: StepLimits | None = None,
        http: OutboundHttp | None = None,
    ) -> None:
        self.templates = templates
        self.limits = limits or StepLimits()
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
                "raw_body": request.raw_body,
                "received_at": request.received_at.isoformat(),
            },
        }

    async def run_steps(
        self,
        steps: list[StepModel],
        values: dict[str, Any],
        prefix: str,
        trace: list[StepTrace],
    ) -> Any:
        """Run `steps` in order; returns the last one's output (None without steps)."""
        output: Any = None
        for index, step in enumerate(steps):
            path = f"{prefix}[{index}]"
            started_at, clock = datetime.now(UTC), time.perf_counter()
            entry = StepTrace(
                ref_id=step.ref_id,
                type=step.type,
                input=step.trace_input(),
                started_at=started_at,
                duration_ms=0,
            )
            trace.append(entry)
            try:
                context = RunContext(
                    self.templates, values, path, self, trace, self.limits, self.http
                )
                output = json_value(await STEP_TYPES[step.type].run(step, context))
            except TemplateFailure as exc:
                entry.error = str(exc)
                raise StepFailed(step.ref_id, str(exc)) from None
            except StepFailed as exc:
                entry.error = exc.message
                raise
            finally:
                entry.duration_ms = round((time.perf_counter() - clock) * 1000, 3)
            entry.output = output
            values[step.ref_id] = output
        return output

    async def run(self, flow: Flow, request: WebhookRequest) -> RunResult:
        started_at = datetime.now(UTC)
        values = self.context(flow, request)
        trace: list[StepTrace] = []
        try:
            last = await self.run_steps(flow.definition.steps, values, "steps", trace)
        except StepFailed as exc:
            error = FlowError(f"step {exc.ref_id!r} failed: {exc.message}", status=exc.status)
            return error_result(request.request_id, error, "failed", started_at, trace)
        response = flow.definition.webhook.response
        if response is None:
            body = orjson.dumps({"status": 200, "error": None, "message": "ok", "data": last})
            return RunResult(
                request_id=request.request_id,
                outcome="succeeded",
                status_code=200,
                content_type=JSON,
                body=body.decode(),
                steps=trace,
                started_at=started_at,
                finished_at=datetime.now(UTC),
            )
        try:
            text = self.templates.render_text(response.body, values, "webhook.response.body")
        except TemplateFailure as exc:
            error = FlowError(f"the webhook response failed: {exc}")
            return error_result(request.request_id, error, "failed", started_at, trace)
        return RunResult(
            request_id=request.request_id,
            outcome="succeeded",
            status_code=response.status_code,
            content_type=response.content_type or (JSON if is_json(text) else TEXT),
            body=text,
            steps=trace,
            started_at=started_at,
            finished_at=datetime.now(UTC),
        )


def is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True
