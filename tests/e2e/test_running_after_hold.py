"""`run.started` after a hold (services/runner/started_hold.py), end to end: an async run
that ends within the hold is recorded from `queued` to its outcome with no run.started
sent at all; one still going after it (an http step waiting for the test) is recorded
`running`, and the status URL says so, until it ends. One system for the module, with a
hold of `HOLD_S`: long, so that the quick run ends well within it on a loaded machine."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

GATE_HOST = "127.0.0.2"
HOLD_S = 3.0
STARTED_ITEMS = 'flowhooks_broker_batch_items_total{hop="run.started"}'


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{GATE_HOST}/32"]',
        FLOWHOOKS_RUNNER_RECORD_STARTED_AFTER_S=str(HOLD_S),
    ) as running:
        yield running


@pytest.fixture
async def gate() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A URL that answers only once the test opens the gate: a run calling it is
    going for as long as the test wants, with no timing in the test."""
    opened = asyncio.Event()

    async def wait(request: web.Request) -> web.Response:
        await opened.wait()
        return web.json_response({"opened": True})

    app = web.Application()
    app.router.add_get("/gate", wait)
    async with serving(app, GATE_HOST) as base:
        yield f"{base}/gate", opened


async def create(api: Api, step: dict[str, Any]) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "held",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [step],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def record_of(api: Api, request_id: str, outcome: str) -> dict[str, Any]:
    async def detail() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] == outcome else None

    return await eventually(detail, timeout_s=30)


async def started_items(api: Api) -> float:
    """run.started items the runners sent (confirmed), all runners together."""
    total = 0.0
    for runner in api.system.processes["runner"]:
        async with api.session.get(f"{runner.ops_url}/metrics") as answer:
            text = await answer.text()
        total += sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(STARTED_ITEMS + " ")
        )
    return total


async def status_of(api: Api, flow_id: str, request_id: str, token: str) -> tuple[int, Any]:
    async with api.session.get(
        f"{api.system.url('ingress')}/v1/flow-webhook/{flow_id}/runs/{request_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as answer:
        return answer.status, await answer.json()


def outline(record: dict[str, Any]) -> dict[str, Any]:
    """What the record says of the run's state (times and ids aside)."""
    return {
        "outcome": record["outcome"],
        "mode": record["mode"],
        "input": record["input"],
        "status_code": record["response"]["status_code"] if record.get("response") else None,
        "steps": [
            (step["ref_id"], {k: v for k, v in step["output"].items() if k != "headers"})
            for step in record.get("steps") or []
        ],
    }


async def test_only_a_run_still_going_after_the_hold_is_recorded_running(
    api: Api, gate: tuple[str, asyncio.Event]
) -> None:
    gate_url, opened = gate
    quick_flow, quick_token = await create(
        api, {"ref_id": "n", "type": "template", "template": "{{ web1.n }}"}
    )
    slow_flow, slow_token = await create(api, {"ref_id": "wait", "type": "http", "url": gate_url})
    sent_before = await started_items(api)

    status, headers, _ = await api.send(quick_flow, quick_token, json={"n": 1})
    assert status == 200
    quick = await record_of(api, headers["X-Request-Id"], "succeeded")
    assert outline(quick) == {
        "outcome": "succeeded",
        "mode": "async",
        "input": {"n": 1},
        "status_code": 200,
        "steps": [("n", {"value": 1})],
    }

    # Started after the quick run ended: its generation's tick is no earlier than the
    # one the quick run's announcement would have gone in, so once it is `running`, an
    # announcement of the quick run would have been sent and counted too.
    status, headers, _ = await api.send(slow_flow, slow_token, json={"n": 2})
    assert status == 200
    slow_id = headers["X-Request-Id"]
    running = await record_of(api, slow_id, "running")
    assert outline(running) == {
        "outcome": "running",
        "mode": "async",
        "input": {"n": 2},
        "status_code": None,
        "steps": [],
    }
    status, body = await status_of(api, slow_flow, slow_id, slow_token)
    assert (status, body["message"], body["data"]["request_id"]) == (202, "running", slow_id)

    opened.set()
    done = await record_of(api, slow_id, "succeeded")
    assert outline(done) == {
        "outcome": "succeeded",
        "mode": "async",
        "input": {"n": 2},
        "status_code": 200,
        "steps": [("wait", {"status": 200, "body": {"opened": True}})],
    }
    # One run.started in all: the slow run's; the quick run sent none.
    assert await started_items(api) - sent_before == 1
