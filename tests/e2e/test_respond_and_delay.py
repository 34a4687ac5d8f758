"""Issue 25's steps end to end: `respond` answers a sync caller early while the run goes
on (a slow `http` step after it does not hold the caller; a step failing after it makes
the run `failed` though the caller got 2xx); `delay` stores the run and resumes it, on
another runner after a SIGKILL, without sending a completed `http` step again (the sink's
ledger). One system for the module."""

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

SINK_HOST = "127.0.0.2"
SLOW_S = 2.5
MAX_WAITING = 2  # per workspace
STORED = "flowhooks_runner_runs_stored_waiting_total"
IN_POOL = "flowhooks_runner_runs_in_pool"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{SINK_HOST}/32"]',
        FLOWHOOKS_RUNNER_DELAY_POLL_S="0.2",
        FLOWHOOKS_RUNNER_DELAY_MAX_WAITING_RUNS=str(MAX_WAITING),
    ) as running:
        # Two more runners, ready by the time the kill tests need them (their starts
        # overlap the tests before): each kill test kills one and needs another.
        running.launch("runner")
        running.launch("runner")
        yield running


class Ledger(list[dict[str, Any]]):
    """The requests the sink answered; `arrived`: the paths of every request as it came
    (a slow one before its answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[str] = []


@pytest.fixture
async def sink() -> AsyncIterator[tuple[str, Ledger]]:
    """Records every request (path, Idempotency-Key, body, when, whether its caller was
    still there for the answer); /slow answers after `SLOW_S`."""
    ledger = Ledger()

    async def record(request: web.Request) -> web.Response:
        ledger.arrived.append(request.path)
        entry = {
            "path": request.path,
            "key": request.headers.get("Idempotency-Key"),
            "body": await request.read(),
        }
        if request.path == "/slow":
            await asyncio.sleep(SLOW_S)
        entry["at"] = time.monotonic()
        # A caller killed meanwhile (its worker died with its runner) never completed it.
        entry["completed"] = request.transport is not None and not request.transport.is_closing()
        ledger.append(entry)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{name}", record)
    async with serving(app, SINK_HOST) as base:
        yield base, ledger


def two_runners(system: System) -> None:
    """Two runners ready: a test that kills one needs the other (a test before it may
    have killed one already)."""
    if len(system.processes["runner"]) < 2:
        system.launch("runner")
    system.wait_all_ready(system.processes["runner"])


async def create(api: Api, definition: dict[str, Any]) -> tuple[str, str]:
    flow = await api.create_flow({"name": "steps", "status": "live", **definition})
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def record_of(api: Api, request_id: str, outcomes: tuple[str, ...]) -> dict[str, Any]:
    async def detail() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] in outcomes else None

    return await eventually(detail, timeout_s=15)


async def test_respond_answers_before_a_slow_step_and_the_run_goes_on(
    api: Api, sink: tuple[str, Ledger]
) -> None:
    """The flow's timeout (1.5 s) is shorter than its slow step (2.5 s): the caller is
    answered within it, by the respond step, and the run then finishes past it."""
    base, ledger = sink
    flow_id, token = await create(
        api,
        {
            "webhook": {"timeout_s": 1.5},
            "steps": [
                {
                    "ref_id": "ack",
                    "type": "respond",
                    "status_code": 202,
                    "body": '{"order": {{ web1.order }}}',
                    "headers": {"X-Order": "{{ web1.order }}"},
                },
                {
                    "ref_id": "call",
                    "type": "http",
                    "method": "POST",
                    "url": base + "/slow",
                    "body": "{{ web1 }}",
                    "timeout_s": 5,
                },
            ],
        },
    )
    status, headers, raw = await api.send(flow_id, token, json={"order": 7})
    assert (status, orjson.loads(raw), headers["X-Order"]) == (202, {"order": 7}, "7")
    assert ledger == []  # answered before the slow step's answer
    record = await record_of(api, headers["X-Request-Id"], ("succeeded", "failed", "timeout"))
    assert record["outcome"] == "succeeded", record
    assert [entry["path"] for entry in ledger] == ["/slow"]
    response = record["response"]
    assert (response["status_code"], response["body"], response["headers"]) == (
        202,
        '{"order": 7}',
        {"X-Order": "7"},
    )
    assert response["answered_at"] < record["finished_at"]
    assert [(step["ref_id"], step["error"]) for step in record["steps"]] == [
        ("ack", None),
        ("call", None),
    ]


async def test_a_step_failing_after_respond_fails_the_run(api: Api) -> None:
    flow_id, token = await create(
        api,
        {
            "steps": [
                {"ref_id": "ack", "type": "respond", "body": "thanks"},
                {"ref_id": "boom", "type": "fail", "message": "after the answer"},
            ]
        },
    )
    status, headers, raw = await api.send(flow_id, token, json={})
    assert (status, raw, headers["Content-Type"]) == (200, b"thanks", "text/plain; charset=utf-8")
    record = await record_of(api, headers["X-Request-Id"], ("succeeded", "failed"))
    assert record["outcome"] == "failed"
    assert record["error"] == "step 'boom' failed: after the answer"
    assert record["response"]["status_code"] == 200
    assert record["response"]["body"] == "thanks"
    assert "answered_at" in record["response"]


async def get_status(api: Api, flow_id: str, request_id: str, token: str) -> tuple[int, Any]:
    async with api.session.get(
        f"{api.system.url('ingress')}/v1/flow-webhook/{flow_id}/runs/{request_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as answer:
        return answer.status, orjson.loads(await answer.read())


async def metric(api: Api, ops_url: str, name: str) -> float:
    async with api.session.get(f"{ops_url}/metrics") as answer:
        text = await answer.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def http_step(ref_id: str, url: str) -> dict[str, Any]:
    return {"ref_id": ref_id, "type": "http", "method": "POST", "url": url, "body": "{{ web1 }}"}


async def test_a_sync_flow_answers_then_waits_then_goes_on(
    api: Api, sink: tuple[str, Ledger]
) -> None:
    base, ledger = sink
    flow_id, token = await create(
        api,
        {
            "steps": [
                {"ref_id": "ack", "type": "respond", "status_code": 202, "body": "later"},
                {"ref_id": "wait", "type": "delay", "seconds": 1},
                http_step("after", base + "/after-sync"),
            ]
        },
    )
    status, headers, raw = await api.send(flow_id, token, json={"n": 1})
    assert (status, raw) == (202, b"later")
    record = await record_of(api, headers["X-Request-Id"], ("succeeded", "failed"))
    assert record["outcome"] == "succeeded", record
    assert [entry["path"] for entry in ledger] == ["/after-sync"]
    assert (record["response"]["status_code"], record["response"]["body"]) == (202, "later")
    assert [step["ref_id"] for step in record["steps"]] == ["ack", "wait", "after"]


async def test_past_the_waiting_bound_a_run_fails_naming_it(system: System) -> None:
    """Its own workspace: `MAX_WAITING` runs wait, the next one fails (and the waiting
    ones show their resume time)."""
    token = system.create_token("globex", "automation")
    async with aiohttp.ClientSession() as session:
        api = Api(system, session, token)
        flow_id, webhook = await create(
            api,
            {
                "webhook": {"async": True},
                # Long: they still wait when the next is stored (the module's system is
                # stopped before they would resume).
                "steps": [{"ref_id": "wait", "type": "delay", "seconds": 600}],
            },
        )
        ids = []
        for _ in range(MAX_WAITING + 1):
            status, headers, _ = await api.send(flow_id, webhook, json={})
            assert status == 200  # scheduled
            ids.append(headers["X-Request-Id"])
            # One after the other: which one is refused is then known.
            await record_of(api, ids[-1], ("waiting", "failed"))
        records = [await record_of(api, i, ("waiting", "failed")) for i in ids]
        assert [r["outcome"] for r in records] == ["waiting"] * MAX_WAITING + ["failed"]
        assert all(r["resume_at"] > r["received_at"] for r in records[:MAX_WAITING])
        assert records[-1]["error"] == (
            f"the workspace has {MAX_WAITING} runs waiting in delay steps, its bound"
            " (FLOWHOOKS_RUNNER_DELAY_MAX_WAITING_RUNS)"
        )


async def test_a_delay_survives_its_runner_killed_and_resumes_once(
    api: Api, system: System, sink: tuple[str, Ledger]
) -> None:
    """An async run calls the sink, waits 2 s, calls it again. While it waits, the runner
    that ran and stored it is SIGKILLed (another runner is up): the run is `waiting` with
    its resume time in the debugger and the status URL, then resumes once on the other
    runner; the sink's ledger has each call once."""
    base, ledger = sink
    flow_id, token = await create(
        api,
        {
            "webhook": {"async": True},
            "steps": [
                http_step("before", base + "/before"),
                {"ref_id": "wait", "type": "delay", "seconds": 2},
                http_step("after", base + "/after"),
            ],
        },
    )
    two_runners(system)
    runners = list(system.processes["runner"])
    stored_before = [await metric(api, runner.ops_url, STORED) for runner in runners]
    status, headers, _ = await api.send(flow_id, token, json={"n": 2})
    assert status == 200  # scheduled
    request_id = headers["X-Request-Id"]
    waiting = await record_of(api, request_id, ("waiting",))
    status, body = await get_status(api, flow_id, request_id, token)
    assert (status, body["message"]) == (202, "waiting")
    assert body["data"]["resume_at"] == waiting["resume_at"].replace("Z", "+00:00")
    # The runner that ran the first part and stored the run (its metrics say which).
    stored = [
        runner
        for runner, before in zip(runners, stored_before, strict=True)
        if await metric(api, runner.ops_url, STORED) > before
    ]
    assert len(stored) == 1
    system.stop(stored[0], signal.SIGKILL)
    record = await record_of(api, request_id, ("succeeded", "failed"))
    assert record["outcome"] == "succeeded", record
    assert record.get("repeated") is None
    assert "resume_at" not in record
    assert [(entry["path"], entry["key"]) for entry in ledger] == [
        ("/before", f"{request_id}:before"),
        ("/after", f"{request_id}:after"),
    ]
    assert [step["ref_id"] for step in record["steps"]] == ["before", "wait", "after"]
    assert record["steps"][1]["output"] == {"resume_at": waiting["resume_at"]}


async def test_the_rest_after_respond_survives_its_runner_killed(
    api: Api, system: System, sink: tuple[str, Ledger]
) -> None:
    """The caller got its 2xx from the respond step; the runner running the slow step
    after it is SIGKILLed mid-call: the rest of the run completes on the other runner,
    each of its calls completed once (the ledger), those before the respond never
    again, and the record ends `succeeded` with the answer given. The flow's timeout
    (1.5 s) is shorter than the slow step: the sync deadline no longer applies."""
    base, ledger = sink
    two_runners(system)
    flow_id, token = await create(
        api,
        {
            "webhook": {"timeout_s": 1.5},
            "steps": [
                http_step("before", base + "/before-answer"),
                {"ref_id": "ack", "type": "respond", "status_code": 201, "body": "taken"},
                {**http_step("slow", base + "/slow"), "timeout_s": 5},
                http_step("after", base + "/after-slow"),
            ],
        },
    )
    status, headers, raw = await api.send(flow_id, token, json={"n": 3})
    assert (status, raw) == (201, b"taken")
    request_id = headers["X-Request-Id"]

    async def running_the_slow_step() -> Any:
        if "/slow" not in ledger.arrived:
            return None
        runners = list(system.processes["runner"])
        busy = [r for r in runners if await metric(api, r.ops_url, IN_POOL) > 0]
        return busy[0] if len(busy) == 1 else None

    system.stop(await eventually(running_the_slow_step, timeout_s=10), signal.SIGKILL)
    record = await record_of(api, request_id, ("succeeded", "failed", "expired", "timeout"))
    assert record["outcome"] == "succeeded", record
    assert record["repeated"]  # the rest ran again from the respond step: that is said
    assert "resume_at" not in record  # `waiting` only until the rest resumed
    response = record["response"]
    assert (response["status_code"], response["body"]) == (201, "taken")
    assert response["answered_at"] < record["finished_at"]
    assert [step["ref_id"] for step in record["steps"]] == ["before", "ack", "slow", "after"]
    assert ledger.arrived == ["/before-answer", "/slow", "/slow", "/after-slow"]
    assert [(entry["path"], entry["key"]) for entry in ledger if entry["completed"]] == [
        ("/before-answer", f"{request_id}:before"),
        ("/slow", f"{request_id}:slow"),
        ("/after-slow", f"{request_id}:after"),
    ]
