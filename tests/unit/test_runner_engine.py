import asyncio
import itertools
import re
import time
from typing import Any

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.bounds import RunBounds
from services.runner.definition import parse_definition
from services.runner.engine import Engine, Flow
from services.runner.render_budget import RenderBudget
from services.runner.steps.base import RunState
from services.runner.templates import TemplateEngine
from shared.schemas.runs import RunResult, StartRun, StartRuns, WebhookRequest
from tests.cpu_templates import burning

TEMPLATES = TemplateEngine()
CONTRACT_BODY = (
    '{"valid": {% if res1.value == "myResult" %}"{{ res1.value }}"{% else %}false{% endif %}}'
)


def flow(raw: dict[str, Any]) -> Flow:
    return Flow("f1", "w1", 1, parse_definition({"name": "t", **raw}, TEMPLATES, 300))


def request(body: Any, **extra: Any) -> WebhookRequest:
    fields = {"request_id": "r1", "flow_id": "f1", "workspace_id": "w1"}
    return webhook_request(
        body, path="/v1/flow-webhook/f1", headers={"x-signature": "s"}, **{**fields, **extra}
    )


async def run(raw: dict[str, Any], body: Any) -> RunResult:
    return await Engine(TEMPLATES).run(flow(raw), request(body))


CONTRACT = {
    "webhook": {"ref_id": "web1", "response": {"status_code": 200, "body": CONTRACT_BODY}},
    "steps": [{"ref_id": "res1", "type": "template", "template": "{{ web1.kind }}"}],
}


async def test_contract_example() -> None:
    result = await run(CONTRACT, {"kind": "myResult"})
    assert (result.outcome, result.status_code, result.content_type, result.body) == (
        "succeeded",
        200,
        "application/json",
        '{"valid": "myResult"}',
    )
    assert [(s.ref_id, s.output, s.error) for s in result.steps] == [
        ("res1", {"value": "myResult"}, None)
    ]
    result = await run(CONTRACT, {"kind": "other"})
    assert result.body == '{"valid": false}'


async def test_text_and_named_content_types() -> None:
    text = {"webhook": {"response": {"status_code": 201, "body": "hello {{ web1.n }}"}}}
    result = await run(text, {"n": 1})
    assert (result.status_code, result.content_type, result.body) == (
        201,
        "text/plain; charset=utf-8",
        "hello 1",
    )
    named = {"webhook": {"response": {"body": "<a/>", "content_type": "application/xml"}}}
    assert (await run(named, {})).content_type == "application/xml"


async def test_default_response_is_the_last_output() -> None:
    raw = {
        "steps": [
            {"ref_id": "a", "type": "template", "template": "{{ web1.n + 1 }}"},
            {"ref_id": "b", "type": "template", "template": "{{ a.value * 2 }}"},
        ]
    }
    result = await run(raw, {"n": 1})
    assert orjson.loads(result.body) == {
        "status": 200,
        "error": None,
        "message": "ok",
        "data": {"value": 4},
    }
    empty = await run({}, {})
    assert orjson.loads(empty.body)["data"] is None


async def test_failed_step_is_a_flow_error_naming_it() -> None:
    result = await run(CONTRACT, {})
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert orjson.loads(result.body) == {
        "status": 500,
        "error": "flow_error",
        "data": None,
        "message": "step 'res1' failed: steps[0].template: 'dict object' has no attribute 'kind'",
    }
    assert result.steps[0].error is not None


async def test_request_metadata() -> None:
    raw = {
        "webhook": {
            "response": {
                "body": (
                    '{{ request.method }} {{ request.headers["x-signature"] }} {{ request.id }}'
                )
            }
        }
    }
    assert (await run(raw, {})).body == "POST s r1"


def test_a_message_holds_one_start_run_or_many() -> None:
    one = StartRun(request=request({"n": 1}), flow_version=3)
    many = StartRuns(items=[one, one.model_copy(update={"flow_version": 4})])
    assert StartRuns.read(one.model_dump_json().encode()).items == [one]
    assert [s.flow_version for s in StartRuns.read(many.model_dump_json().encode()).items] == [3, 4]
    # An unreadable item is left out; the others are run.
    mixed = b'{"items": [{"nope": 1}, ' + one.model_dump_json().encode() + b"]}"
    assert StartRuns.read(mixed).items == [one]
    with pytest.raises(ValueError):
        StartRuns.read(b'{"items": [{"nope": 1}]}')
    with pytest.raises(ValueError):
        StartRuns.read(b"not json")


# --- the response: one render budget, a pause before each template (issue 20) --------


async def test_the_response_renders_as_one_budgeted_unit_with_pauses() -> None:
    """The body and every header template render each after a pass through the event
    loop (other runs take turns between them: no slice holds the worker for all), and
    all are charged to one budget, the render budget."""
    turns = 0
    renders: list[tuple[str, int, RenderBudget | None]] = []

    class Recording(TemplateEngine):
        def render_text(
            self,
            source: str,
            context: dict[str, Any],
            field: str,
            budget: RenderBudget | None = None,
        ) -> str:
            renders.append((field, turns, budget))
            return super().render_text(source, context, field, budget)

    async def other_run() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    raw = {
        "webhook": {
            "response": {
                "body": "{{ last.value }}",
                "headers": {"X-A": "a{{ web1.n }}", "X-B": "b", "X-C": "c"},
            }
        },
        "steps": [{"ref_id": "last", "type": "template", "template": "done {{ web1.n }}"}],
    }
    other = asyncio.create_task(other_run())
    try:
        result = await Engine(Recording(render_timeout_s=0.2)).run(flow(raw), request({"n": 1}))
    finally:
        other.cancel()
    assert (result.outcome, result.body, result.headers) == (
        "succeeded",
        "done 1",
        {"X-A": "a1", "X-B": "b", "X-C": "c"},
    )
    assert [field for field, _, _ in renders] == [
        "steps[0].template",
        "webhook.response.body",
        "webhook.response.headers.X-A",
        "webhook.response.headers.X-B",
        "webhook.response.headers.X-C",
    ]
    seen_turns = [seen for _, seen, _ in renders]
    assert all(a < b for a, b in itertools.pairwise(seen_turns)), seen_turns
    budgets = [budget for field, _, budget in renders if field.startswith("webhook.")]
    assert budgets[0] is not None and all(budget is budgets[0] for budget in budgets)
    assert budgets[0].seconds == 0.2 and 0 < budgets[0].used_s < 0.2


async def test_response_templates_past_their_one_budget_fail_the_run() -> None:
    """A body and four headers, each within the render budget alone (60 % of it), are
    past it together: the run fails with `flow_error`, naming the bound."""
    templates = TemplateEngine(render_timeout_s=0.2)
    each = burning(0.12)
    alone = {"webhook": {"response": {"body": each + "ok"}}}
    assert (await Engine(templates).run(flow(alone), request({}))).body == "ok"

    raw = {
        "webhook": {
            "response": {
                "body": each + "ok",
                "headers": {f"X-{name}": each + name for name in "ABCD"},
            }
        }
    }
    result = await Engine(templates).run(flow(raw), request({}))
    assert (result.outcome, result.status_code, result.content_type) == (
        "failed",
        500,
        "application/json",
    )
    envelope = orjson.loads(result.body)
    assert (envelope["status"], envelope["error"], envelope["data"]) == (500, "flow_error", None)
    # Which template the budget ran out in depends on the machine by a few ms.
    assert re.fullmatch(
        r"the webhook response failed: webhook\.response\.headers\.X-[ABCD]: rendering the"
        r" response's body and headers took longer than 0\.2 s of CPU time in all"
        r" \(FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S\)",
        envelope["message"],
    ), envelope["message"]
    assert result.error == envelope["message"]


# --- on_error (issue 25) ----------------------------------------------------------------

NEVER = {"ref_id": "never", "type": "template", "template": "x"}
RECOVERING: dict[str, Any] = {
    "webhook": {
        "response": {
            "status_code": 200,
            "body": '{"recovered": {{ (error is not none) | tojson }},'
            ' "step": {{ error.step | tojson if error else "null" }},'
            ' "status": {{ error.status | tojson if error else "null" }},'
            ' "note": {{ note | tojson if note is defined else "null" }}}',
            "headers": {"X-Failed-Step": "{{ error.step if error else '' }}"},
        }
    },
    "steps": [
        {"ref_id": "a", "type": "template", "template": "{{ web1.n }}"},
        {"ref_id": "boom", "type": "fail", "message": "no {{ a.value }}", "status_code": 422},
        NEVER,
    ],
    "on_error": [
        {
            "ref_id": "note",
            "type": "template",
            "template": "{{ error.message }} after {{ a.value }};"
            " never ran: {{ never is not defined }}",
        }
    ],
}


async def test_on_error_steps_see_the_error_and_the_response_answers() -> None:
    result = await run(RECOVERING, {"n": 7})
    assert (result.outcome, result.status_code, result.content_type) == (
        "failed",
        200,
        "application/json",
    )
    assert orjson.loads(result.body) == {
        "recovered": True,
        "step": "boom",
        "status": None,  # a `fail` step: no server answered
        "note": {"value": "no 7 after 7; never ran: True"},
    }
    assert result.headers == {"X-Failed-Step": "boom"}
    assert result.error == "step 'boom' failed: no 7"  # the step's error, kept
    assert [(s.ref_id, s.error) for s in result.steps] == [
        ("a", None),
        ("boom", "no 7"),
        ("note", None),
    ]


async def test_a_flow_with_on_error_whose_steps_succeed_answers_as_before() -> None:
    raw = {**RECOVERING, "steps": [RECOVERING["steps"][0], NEVER]}  # no `fail` step
    result = await run(raw, {"n": 1})
    assert (result.outcome, result.status_code) == ("succeeded", 200)
    assert orjson.loads(result.body) == {
        "recovered": False,
        "step": None,
        "status": None,
        "note": None,
    }
    assert [s.ref_id for s in result.steps] == ["a", "never"]


async def test_on_error_without_a_response_keeps_the_flow_error_answer() -> None:
    raw = {**RECOVERING, "webhook": {}}
    result = await run(raw, {"n": 7})
    assert (result.outcome, result.status_code) == ("failed", 422)
    assert orjson.loads(result.body) == {
        "status": 422,
        "error": "flow_error",
        "data": None,
        "message": "step 'boom' failed: no 7",
    }
    assert [s.ref_id for s in result.steps] == ["a", "boom", "note"]


async def test_an_on_error_step_that_fails_ends_the_run_with_both_errors() -> None:
    raw = {
        **RECOVERING,
        "webhook": {"response": {"body": "{{ error.step }}"}},
        "on_error": [
            {"ref_id": "first", "type": "template", "template": "{{ error.step }}"},
            {"ref_id": "again", "type": "fail", "message": "handler {{ first.value }}"},
            {"ref_id": "skipped", "type": "template", "template": "x"},
        ],
    }
    result = await run(raw, {"n": 7})
    assert (result.outcome, result.status_code) == ("failed", 500)
    message = "step 'boom' failed: no 7; then on_error step 'again' failed: handler boom"
    assert orjson.loads(result.body) == {
        "status": 500,
        "error": "flow_error",
        "data": None,
        "message": message,
    }
    assert result.error == message
    # Once: the handler's failure runs no handler again.
    assert [s.ref_id for s in result.steps] == ["a", "boom", "first", "again"]


async def test_a_response_that_fails_after_recovery_names_both() -> None:
    raw = {
        **RECOVERING,
        "webhook": {"response": {"body": "{{ error.step.nope }}"}},
    }
    result = await run(raw, {"n": 7})
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert orjson.loads(result.body)["message"] == (
        "step 'boom' failed: no 7; then the webhook response failed: webhook.response.body:"
        " 'str object' has no attribute 'nope'"
    )


class AnsweringHttp:
    """Stands in for OutboundHttp: answers `status` with `Retry-After: 30`."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def request(self, method: str, url: str, **_: Any) -> tuple[int, dict[str, str], bytes]:
        return self.status, {"Retry-After": "30"}, b"busy"


async def test_error_status_is_what_the_server_answered_a_failed_http_step() -> None:
    """A 503 whose Retry-After would pass the run's deadline fails the step at once: the
    answered status reaches on_error; a template's failure gives null."""
    raw = {
        **RECOVERING,
        "steps": [
            {"ref_id": "a", "type": "template", "template": "{{ web1.n }}"},
            {"ref_id": "call", "type": "http", "url": "https://api.example.com/", "retries": 2},
            NEVER,
        ],
    }
    state = RunState(RunBounds())
    state.deadline = time.monotonic() + 5
    engine = Engine(TEMPLATES, None, AnsweringHttp(503))  # type: ignore[arg-type]
    result = await engine.run(flow(raw), request({"n": 7}), state)
    assert (result.outcome, result.status_code) == ("failed", 200), result.body
    body = orjson.loads(result.body)
    assert (body["recovered"], body["step"], body["status"]) == (True, "call", 503)

    undefined = {
        **RECOVERING,
        "steps": [
            RECOVERING["steps"][0],
            {"ref_id": "t", "type": "template", "template": "{{ web1.x }}"},
            NEVER,
        ],
    }
    result = await run(undefined, {"n": 7})
    body = orjson.loads(result.body)
    assert (result.status_code, body["step"], body["status"]) == (200, "t", None)


async def test_a_render_past_its_budget_runs_no_on_error() -> None:
    """Such a failure used up one of the run's own budgets: the flow_error answer."""
    templates = TemplateEngine(render_timeout_s=0.1)
    raw = {
        **RECOVERING,
        "steps": [{"ref_id": "a", "type": "template", "template": burning(0.5) + "x"}, NEVER],
    }
    result = await Engine(templates).run(flow(raw), request({}))
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert orjson.loads(result.body)["error"] == "flow_error"
    assert [s.ref_id for s in result.steps] == ["a"]
