"""Issue 25's steps end to end: `respond` answers a sync caller early while the run goes
on (a slow `http` step after it does not hold the caller; a step failing after it makes
the run `failed` though the caller got 2xx); `delay` stores the run and resumes it, on
another runner after a SIGKILL, without sending a completed `http` step again (the sink's
ledger). One system for the module."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

SINK_HOST = "127.0.0.2"
SLOW_S = 2.5


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{SINK_HOST}/32"]',
    ) as running:
        yield running


@pytest.fixture
async def sink() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Records every request (path, Idempotency-Key, body, when); /slow answers after
    `SLOW_S`."""
    ledger: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        entry = {
            "path": request.path,
            "key": request.headers.get("Idempotency-Key"),
            "body": await request.read(),
        }
        if request.path == "/slow":
            await asyncio.sleep(SLOW_S)
        entry["at"] = time.monotonic()
        ledger.append(entry)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{name}", record)
    async with serving(app, SINK_HOST) as base:
        yield base, ledger


async def create(api: Api, definition: dict[str, Any]) -> tuple[str, str]:
    flow = await api.create_flow({"name": "steps", "status": "live", **definition})
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def record_of(api: Api, request_id: str, outcomes: tuple[str, ...]) -> dict[str, Any]:
    async def detail() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] in outcomes else None

    return await eventually(detail, timeout_s=15)


async def test_respond_answers_before_a_slow_step_and_the_run_goes_on(
    api: Api, sink: tuple[str, list[dict[str, Any]]]
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
