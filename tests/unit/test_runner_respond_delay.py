"""`respond` and `delay` steps (issue 25) without services: where they may stand, what a
respond step answers and what the run's record says after it."""

from typing import Any

import pytest

from harness.factories import webhook_request
from services.runner.definition import parse_definition
from services.runner.engine import Engine, Flow
from services.runner.steps.base import EarlyAnswer, RunState
from services.runner.steps.respond import with_answer
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest

TEMPLATES = TemplateEngine()
RESPOND = {"ref_id": "ack", "type": "respond", "status_code": 202, "body": '{"a": {{ web1.a }}}'}


def parse(raw: dict[str, Any]) -> Any:
    return parse_definition({"name": "t", **raw}, TEMPLATES, 300)


def refusal(raw: dict[str, Any]) -> tuple[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse(raw)
    return caught.value.message, caught.value.data


async def run(raw: dict[str, Any], body: Any, state: RunState) -> Any:
    flow = Flow("f1", "w1", 1, parse(raw))
    request = webhook_request(body, request_id="r1", flow_id="f1", workspace_id="w1")
    return await Engine(TEMPLATES).run(flow, request, state)


def test_respond_refused_in_async_flows_even_nested() -> None:
    message, data = refusal({"webhook": {"async": True}, "steps": [RESPOND]})
    assert data == {"field": "steps[0]"}
    assert message.startswith("steps[0]: an async flow's caller is answered 202")
    nested = {"ref_id": "c", "type": "condition", "if": "{{ true }}", "then": [RESPOND]}
    _, data = refusal({"webhook": {"async": True}, "steps": [nested]})
    assert data == {"field": "steps[0].then[0]"}
    assert parse({"steps": [nested]}).steps[0].then[0].type == "respond"


def test_respond_status_is_final() -> None:
    _, data = refusal({"steps": [{**RESPOND, "status_code": 103}]})
    assert data == {"field": "steps[0].status_code"}


async def test_respond_answers_at_once_and_the_record_keeps_the_answer() -> None:
    told: list[EarlyAnswer] = []
    state = RunState(Engine(TEMPLATES).limits)
    state.on_answer = told.append
    raw = {
        "steps": [
            {**RESPOND, "headers": {"X-Id": "{{ request.id }}"}},
            {"ref_id": "after", "type": "fail", "message": "late", "status_code": 502},
        ]
    }
    result = await run(raw, {"a": 1}, state)
    assert [(a.status_code, a.content_type, a.body, a.headers) for a in told] == [
        (202, "application/json", '{"a": 1}', {"X-Id": "r1"})
    ]
    assert (result.outcome, result.status_code, result.error) == (
        "failed",
        502,
        "step 'after' failed: late",
    )
    recorded = with_answer(result, state.answered)
    assert (recorded.outcome, recorded.status_code, recorded.body, recorded.headers) == (
        "failed",
        202,
        '{"a": 1}',
        {"X-Id": "r1"},
    )
    assert recorded.answered_at == told[0].at
    assert with_answer(result, None) is result


async def test_a_second_respond_fails_the_run() -> None:
    state = RunState(Engine(TEMPLATES).limits)
    raw = {"steps": [RESPOND, {**RESPOND, "ref_id": "again"}]}
    result = await run(raw, {"a": 1}, state)
    assert result.outcome == "failed"
    assert result.error == (
        "step 'again' failed: the caller was answered already, by an earlier respond"
    )
