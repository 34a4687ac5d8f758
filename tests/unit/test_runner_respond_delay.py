"""`respond` and `delay` steps (issue 25) without services: where they may stand, what a
respond step answers and what the run's record says after it."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.definition import parse_definition
from services.runner.delays import (
    WaitingBoundExceeded,
    bound_failure,
    check_bounds,
    check_run_bound,
    is_first_copy_candidate,
    resume_copy_mark,
    waiting_mark,
)
from services.runner.engine import Engine, Flow
from services.runner.runs import waiting_result
from services.runner.steps.base import EarlyAnswer, RunState
from services.runner.steps.delay import RunSuspended
from services.runner.steps.respond import with_answer
from services.runner.templates import TemplateEngine
from services.runner.worker_protocol import Answered, FlowSnapshot, Resumed, Suspension
from shared.errors import BadRequest
from shared.schemas.runs import StartRun

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


def test_respond_stands_only_at_the_top_level_of_steps() -> None:
    """The rest of the run is handed over at it: its position must be one index."""
    nested = {"ref_id": "c", "type": "condition", "if": "{{ true }}", "then": [RESPOND]}
    message, data = refusal({"steps": [nested]})
    assert (message, data) == (
        "steps[0].then[0]: a respond step may stand only at the top level of steps: the"
        " rest of the run is handed over at it, and resumes at the step after it",
        {"field": "steps[0].then[0]"},
    )
    loop = {"ref_id": "each", "type": "loop", "over": "{{ [1] }}", "steps": [RESPOND]}
    assert refusal({"steps": [loop]})[1] == {"field": "steps[0].steps[0]"}
    fail = {"ref_id": "boom", "type": "fail", "message": "x"}
    assert refusal({"steps": [fail], "on_error": [RESPOND]})[1] == {"field": "on_error[0]"}


def test_respond_status_is_final() -> None:
    _, data = refusal({"steps": [{**RESPOND, "status_code": 103}]})
    assert data == {"field": "steps[0].status_code"}


async def hand_over(raw: dict[str, Any], body: Any) -> tuple[RunSuspended, RunState, Resumed]:
    """Runs the flow to its respond step; returns the hand-over, the state and the run as
    stored (through JSON, as a runner resumes it)."""
    engine = Engine(TEMPLATES)
    state = RunState(engine.limits)
    with pytest.raises(RunSuspended) as stopped:
        await run(raw, body, state)
    state.trace[-1].output = stopped.value.output  # as the worker stores it
    answered = state.answered
    assert answered is not None
    stored = Resumed(
        next_step=1 + [s["ref_id"] for s in raw["steps"]].index(stopped.value.ref_id),
        values=stopped.value.values,
        trace=engine.trace(state),
        started_at=state.trace[0].started_at,
        answered=Answered(**answered.__dict__),
        flow=FlowSnapshot(id="f1", workspace_id="w1", version=1, definition=raw),
    )
    return stopped.value, state, Resumed.model_validate_json(stored.model_dump_json())


async def resume(raw: dict[str, Any], body: Any, stored: Resumed) -> tuple[Any, RunState]:
    engine = Engine(TEMPLATES)
    state = RunState(engine.limits)
    state.trace = list(stored.trace)
    assert stored.answered is not None
    state.answered = EarlyAnswer(**dict(stored.answered))
    flow = Flow("f1", "w1", 1, parse(raw))
    request = webhook_request(body, request_id="r1", flow_id="f1", workspace_id="w1")
    return await engine.run(flow, request, state, stored), state


async def test_respond_hands_the_run_over_and_the_record_keeps_the_answer() -> None:
    """The respond step stops the run (a hand-over, due at once) with its answer; the
    run resumed from the stored state runs the steps after it, with the step's output
    in its context, and its record is what the sender got with how the run ended."""
    raw = {
        "steps": [
            {**RESPOND, "headers": {"X-Id": "{{ request.id }}"}},
            {
                "ref_id": "after",
                "type": "fail",
                "message": "{{ ack.status_code }}",
                "status_code": 502,
            },
        ]
    }
    stopped, state, stored = await hand_over(raw, {"a": 1})
    answer = state.answered
    assert answer is not None
    assert (stopped.ref_id, stopped.answers, stopped.resume_at) == ("ack", True, answer.at)
    assert (answer.status_code, answer.content_type, answer.body, answer.headers) == (
        202,
        "application/json",
        '{"a": 1}',
        {"X-Id": "r1"},
    )
    output = {"status_code": 202, "answered_at": answer.at.isoformat()}
    assert stopped.output == stopped.values["ack"] == output
    assert stored.next_step == 1
    result, resumed_state = await resume(raw, {"a": 1}, stored)
    assert (result.outcome, result.status_code, result.error) == (
        "failed",
        502,
        "step 'after' failed: 202",
    )
    assert [(step.ref_id, step.output) for step in result.steps] == [
        ("ack", output),
        ("after", None),
    ]
    recorded = with_answer(result, resumed_state.answered)
    assert (recorded.outcome, recorded.status_code, recorded.body, recorded.headers) == (
        "failed",
        202,
        '{"a": 1}',
        {"X-Id": "r1"},
    )
    assert recorded.answered_at == answer.at
    assert with_answer(result, None) is result


async def test_a_second_respond_fails_the_run() -> None:
    raw = {"steps": [RESPOND, {**RESPOND, "ref_id": "again"}]}
    _, _, stored = await hand_over(raw, {"a": 1})
    result, _ = await resume(raw, {"a": 1}, stored)
    assert result.outcome == "failed"
    assert result.error == (
        "step 'again' failed: the caller was answered already, by an earlier respond"
    )


def test_a_hand_over_refused_by_a_bound_fails_without_the_answer() -> None:
    """Its caller was not answered yet: it gets the failure, not the respond's answer."""
    at = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    answered = Answered(status_code=202, content_type="text/plain", body="ok", headers={}, at=at)
    state = Resumed(
        next_step=1,
        values={},
        trace=[],
        started_at=at,
        answered=answered,
        flow=FlowSnapshot(id="f1", workspace_id="w1", version=1, definition={}),
    )
    request = webhook_request({}, request_id="r1", flow_id="f1", workspace_id="w1")
    start = StartRun(request=request, flow_version=1)
    over = Suspension(request_id="r1", resume_at=at, state=state, answers=True)
    failed = bound_failure(start, over, "past the bound")
    assert (failed.outcome, failed.status_code, failed.answered_at) == ("failed", 500, None)
    assert failed.error == "past the bound"
    waited = bound_failure(start, over.model_copy(update={"answers": False}), "past the bound")
    assert (waited.outcome, waited.status_code, waited.body, waited.answered_at) == (
        "failed",
        202,
        "ok",
        at,
    )


DELAY = {"ref_id": "wait", "type": "delay", "seconds": 5}


def test_where_a_delay_may_stand() -> None:
    assert parse({"webhook": {"async": True}, "steps": [DELAY]}).steps[0].seconds == 5
    assert [s.type for s in parse({"steps": [RESPOND, DELAY]}).steps] == ["respond", "delay"]
    message, data = refusal({"steps": [DELAY, RESPOND]})
    assert data == {"field": "steps[0]"}
    assert message == (
        "steps[0]: a delay in a sync flow must come after a respond step (at the top level"
        " of steps): its caller is answered before the run waits"
    )
    loop = {"ref_id": "each", "type": "loop", "over": "{{ [1] }}", "steps": [DELAY]}
    _, data = refusal({"webhook": {"async": True}, "steps": [loop]})
    assert data == {"field": "steps[0].steps[0]"}
    _, data = refusal({"webhook": {"async": True}, "steps": [], "on_error": [DELAY]})
    assert data == {"field": "on_error[0]"}


@pytest.mark.parametrize("seconds", [0, 7 * 86_400 + 1])
def test_a_delay_is_one_second_to_seven_days(seconds: int) -> None:
    _, data = refusal({"webhook": {"async": True}, "steps": [{**DELAY, "seconds": seconds}]})
    assert data == {"field": "steps[0].seconds"}


async def test_a_run_stops_at_its_delay_and_goes_on_from_the_stored_state() -> None:
    raw = {
        "webhook": {"async": True},
        "steps": [
            {"ref_id": "first", "type": "template", "template": "{{ web1.n + 1 }}"},
            DELAY,
            {"ref_id": "last", "type": "template", "template": "{{ first.value * 10 }}"},
        ],
    }
    definition = parse(raw)
    flow = Flow("f1", "w1", 1, definition)
    request = webhook_request({"n": 1}, request_id="r1", flow_id="f1", workspace_id="w1")
    engine = Engine(TEMPLATES)
    state = RunState(engine.limits)
    with pytest.raises(RunSuspended) as stopped:
        await engine.run(flow, request, state)
    assert stopped.value.ref_id == "wait"
    assert stopped.value.values["first"] == {"value": 2}
    assert [entry.ref_id for entry in state.trace] == ["first", "wait"]
    # As the worker stores it and a runner resumes it: the steps before are not run again.
    stored = Resumed.model_validate_json(
        Resumed(
            next_step=2,
            values=stopped.value.values,
            trace=engine.trace(state),
            started_at=state.trace[0].started_at,
            flow=FlowSnapshot(id="f1", workspace_id="w1", version=1, definition=raw),
        ).model_dump_json()
    )
    resumed_state = RunState(engine.limits)
    resumed_state.trace = list(stored.trace)
    result = await engine.run(flow, request, resumed_state, stored)
    assert (result.outcome, orjson.loads(result.body)["data"]) == ("succeeded", {"value": 20})
    assert [step.ref_id for step in result.steps] == ["first", "wait", "last"]
    assert result.started_at == stored.started_at


def test_the_waiting_bounds_name_themselves() -> None:
    check_bounds(2, 100, 50, max_waiting_runs=2, max_state_bytes=100)  # at them: stored
    with pytest.raises(WaitingBoundExceeded) as runs:
        check_bounds(3, 100, 50, max_waiting_runs=2, max_state_bytes=100)
    assert str(runs.value) == (
        "the workspace has 2 runs waiting in delay steps, its bound"
        " (FLOWHOOKS_RUNNER_DELAY_MAX_WAITING_RUNS)"
    )
    with pytest.raises(WaitingBoundExceeded) as size:
        check_bounds(1, 101, 60, max_waiting_runs=2, max_state_bytes=100)
    assert str(size.value) == (
        "the run's state of 60 bytes would put the workspace's waiting runs past their"
        " bound of 100 bytes in all (FLOWHOOKS_RUNNER_DELAY_MAX_STATE_BYTES)"
    )
    check_run_bound(2048, 2048)
    with pytest.raises(WaitingBoundExceeded) as one:
        check_run_bound(2049, 2048)
    assert str(one.value) == (
        "the run's state of 2049 bytes is larger than the bound of 2048 bytes for one"
        " waiting run (FLOWHOOKS_RUNNER_DELAY_MAX_RUN_STATE_BYTES)"
    )


def test_which_copies_of_a_resumed_run_are_judged_and_how_they_are_marked() -> None:
    request = webhook_request({}, request_id="r1", flow_id="f1", workspace_id="w1")
    new = StartRun(request=request, flow_version=1)
    resumed = new.model_copy(update={"resume": {"next_step": 2, "token": "t1"}})
    assert waiting_mark(new) == "r1#waiting-from0"
    assert waiting_mark(resumed) == "r1#waiting-from2"  # a second delay's message
    assert resume_copy_mark(resumed) == "r1#resumed-t1"
    assert [is_first_copy_candidate(s) for s in (new, resumed)] == [False, True]
    # Parked since, or split from a message delivered again: the same copy, not judged.
    assert not is_first_copy_candidate(resumed.model_copy(update={"parked": 1}))
    assert not is_first_copy_candidate(resumed.model_copy(update={"repeated": "again"}))


def test_a_replay_that_stops_in_a_delay_is_told_it_waits() -> None:
    resume_at = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    state = Resumed(
        next_step=1,
        values={},
        trace=[],
        started_at=resume_at,
        flow=FlowSnapshot(id="f1", workspace_id="w1", version=1, definition={}),
    )
    answer = waiting_result("r1", Suspension(request_id="r1", resume_at=resume_at, state=state))
    assert (answer.status_code, answer.content_type) == (202, "application/json")
    assert orjson.loads(answer.body) == {
        "status": 202,
        "error": None,
        "message": "waiting",
        "data": {"request_id": "r1", "resume_at": "2026-12-07T10:00:00+00:00"},
    }
