"""Deduplication (`webhook.dedup`), the timeout fallback (`webhook.on_timeout:
"accept"`) and the status URL (`GET /v1/flow-webhook/{flow_id}/runs/{request_id}`),
against the real services, with two ingress replicas."""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System

pytestmark = pytest.mark.e2e

ENDPOINT_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def system(shared_system: System) -> Iterator[System]:
    """The session's shared system (its runners may call ENDPOINT_HOST:
    tests/e2e/conftest.py), with a second ingress replica for this module."""
    own = shared_system.with_own_workspaces()
    second = own.start("ingress")
    try:
        yield own
    finally:
        assert own.stop(second) == 0


class Endpoint:
    """What a run calls: counts the calls (one per run) and sleeps `?sleep=` seconds;
    answers 503 while `failures` is above 0 (a receiver that is down)."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.url = ""


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def handle(request: web.Request) -> web.Response:
        state.calls += 1
        call = state.calls
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        if state.failures > 0:
            state.failures -= 1
            return web.json_response({"down": True}, status=503)
        return web.json_response({"call": call})

    app = web.Application()
    app.router.add_get("/work", handle)
    async with serving(app, ENDPOINT_HOST) as base:
        state.url = f"{base}/work"
        yield state


async def make_flow(api: Api, endpoint: Endpoint, sleep_s: float = 0, **webhook: Any) -> str:
    flow = await api.create_flow(
        {
            "name": "dedup",
            "status": "live",
            "webhook": {
                "ref_id": "web1",
                "response": {
                    "status_code": 201,
                    "body": '{"call": {{ work.body.call }}, "input": {{ web1 | tojson }}}',
                    "headers": {"X-Call": "{{ work.body.call }}"},
                },
                **webhook,
            },
            "steps": [{"ref_id": "work", "type": "http", "url": f"{endpoint.url}?sleep={sleep_s}"}],
        }
    )
    return str(flow["id"])


async def token_of(api: Api, flow_id: str) -> str:
    return str((await api.webhook_info(flow_id))["token"])


async def record(api: Api, request_id: str, final: bool = True) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status, stored = await api.debugger(f"/v1/requests/{request_id}")
        if status != 200 or (final and stored["outcome"] in ("queued", "running")):
            return None
        return dict(stored)

    return await eventually(probe, timeout_s=20)


async def get_status(
    api: Api, flow_id: str, request_id: str, token: str | None
) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with api.session.get(
        f"{api.system.url('ingress')}/v1/flow-webhook/{flow_id}/runs/{request_id}",
        headers=headers,
    ) as answer:
        return answer.status, answer.headers, orjson.loads(await answer.read())


async def test_sequential_duplicate_replays_the_first_answer(api: Api, endpoint: Endpoint) -> None:
    flow_id = await make_flow(api, endpoint, dedup={"key": "header:Idempotency-Key"})
    token = await token_of(api, flow_id)
    key = {"Idempotency-Key": "order-1"}
    status, headers, body = await api.send(flow_id, token, json={"n": 1}, headers=key)
    first = headers["X-Request-Id"]
    assert (status, orjson.loads(body)) == (201, {"call": 1, "input": {"n": 1}})
    assert headers["X-Call"] == "1" and "Idempotent-Replayed" not in headers
    # The second's body differs: the first's answer is replayed all the same.
    status, headers, body = await api.send(flow_id, token, json={"n": 2}, headers=key)
    second = headers["X-Request-Id"]
    assert (status, orjson.loads(body)) == (201, {"call": 1, "input": {"n": 1}})
    assert headers["Idempotent-Replayed"] == "true"
    assert headers["X-Call"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert second != first
    assert endpoint.calls == 1
    stored = await record(api, second)
    assert stored["outcome"] == "duplicate"
    assert stored["duplicate_of"] == first
    assert stored["input"] == {"n": 2}
    assert stored["response"] == {
        "status_code": 201,
        "content_type": "application/json",
        "body": '{"call": 1, "input": {"n": 1}}',
        "headers": {"X-Call": "1"},
    }
    assert stored["steps"] == []
    original = await record(api, first)
    assert (original["outcome"], original["duplicate_of"]) == ("succeeded", None)
    # A request without the key runs normally.
    status, _, body = await api.send(flow_id, token, json={"n": 3})
    assert (status, orjson.loads(body)) == (201, {"call": 2, "input": {"n": 3}})
    # Another key runs on its own.
    status, headers, body = await api.send(
        flow_id, token, json={"n": 4}, headers={"Idempotency-Key": "order-2"}
    )
    assert (status, orjson.loads(body)) == (201, {"call": 3, "input": {"n": 4}})
    assert "Idempotent-Replayed" not in headers


async def test_concurrent_duplicates_across_two_ingress_replicas_run_once(
    api: Api, endpoint: Endpoint
) -> None:
    flow_id = await make_flow(api, endpoint, sleep_s=0.5, dedup={"key": "json:/event/id"})
    token = await token_of(api, flow_id)
    replicas = [service.url for service in api.system.processes["ingress"]]
    assert len(replicas) == 2

    async def send(index: int) -> tuple[int, str, bytes, str | None]:
        async with api.session.post(
            f"{replicas[index % 2]}/v1/flow-webhook/{flow_id}",
            json={"event": {"id": "evt_42"}, "index": index},
            headers={"Authorization": f"Bearer {token}"},
        ) as answer:
            return (
                answer.status,
                answer.headers["X-Request-Id"],
                await answer.read(),
                answer.headers.get("Idempotent-Replayed"),
            )

    answers = await asyncio.gather(*(send(index) for index in range(20)))
    assert endpoint.calls == 1
    assert {status for status, _, _, _ in answers} == {201}
    bodies = {body for _, _, body, _ in answers}
    assert len(bodies) == 1
    assert orjson.loads(bodies.pop())["call"] == 1
    firsts = [request_id for _, request_id, _, replayed in answers if replayed is None]
    assert len(firsts) == 1
    records = [await record(api, request_id) for _, request_id, _, _ in answers]
    outcomes = sorted(stored["outcome"] for stored in records)
    assert outcomes == ["duplicate"] * 19 + ["succeeded"]
    assert {s["duplicate_of"] for s in records if s["outcome"] == "duplicate"} == {firsts[0]}


async def test_async_duplicate_gets_the_first_id(api: Api, endpoint: Endpoint) -> None:
    flow_id = await make_flow(
        api, endpoint, dedup={"key": "header:X-GitHub-Delivery"}, **{"async": True}
    )
    token = await token_of(api, flow_id)
    key = {"X-GitHub-Delivery": "d-1"}
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    first = headers["X-Request-Id"]
    assert (status, orjson.loads(body)) == (
        200,
        {"status": 200, "error": None, "message": "scheduled", "data": {"request_id": first}},
    )
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    assert (status, orjson.loads(body)) == (
        200,
        {"status": 200, "error": None, "message": "scheduled", "data": {"request_id": first}},
    )
    assert headers["Idempotent-Replayed"] == "true"
    stored = await record(api, headers["X-Request-Id"])
    assert (stored["outcome"], stored["duplicate_of"], stored["mode"]) == (
        "duplicate",
        first,
        "async",
    )
    assert (await record(api, first))["outcome"] == "succeeded"
    assert endpoint.calls == 1


async def test_a_key_runs_again_after_its_window(api: Api, endpoint: Endpoint) -> None:
    flow_id = await make_flow(api, endpoint, dedup={"key": "header:webhook-id", "window_s": 1})
    token = await token_of(api, flow_id)
    key = {"webhook-id": "msg_1"}
    status, _, body = await api.send(flow_id, token, json={}, headers=key)
    assert (status, orjson.loads(body)["call"]) == (201, 1)
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    assert (status, orjson.loads(body)["call"], headers["Idempotent-Replayed"]) == (201, 1, "true")
    await asyncio.sleep(1.2)
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    assert (status, orjson.loads(body)["call"]) == (201, 2)
    assert "Idempotent-Replayed" not in headers
    assert endpoint.calls == 2


async def test_on_timeout_accept_answers_202_and_the_status_url_gives_the_result(
    api: Api, endpoint: Endpoint
) -> None:
    flow_id = await make_flow(api, endpoint, sleep_s=2.0, timeout_s=0.5, on_timeout="accept")
    token = await token_of(api, flow_id)
    status, headers, body = await api.send(flow_id, token, json={"slow": True})
    request_id = headers["X-Request-Id"]
    url = f"/v1/flow-webhook/{flow_id}/runs/{request_id}"
    assert (status, orjson.loads(body)) == (
        202,
        {
            "status": 202,
            "error": None,
            "message": "accepted",
            "data": {"request_id": request_id, "status_url": url},
        },
    )
    status, _, answer = await get_status(api, flow_id, request_id, token)
    assert status == 202
    assert answer == {
        "status": 202,
        "error": None,
        "message": "running",
        "data": {"request_id": request_id, "status_url": url},
    }

    async def final() -> tuple[int, Any, Any] | None:
        got = await get_status(api, flow_id, request_id, token)
        return got if got[0] != 202 else None

    status, headers, answer = await eventually(final, timeout_s=20)
    assert (status, answer) == (201, {"call": 1, "input": {"slow": True}})
    assert headers["X-Call"] == "1"
    stored = await record(api, request_id)
    assert (stored["outcome"], stored["response"]["status_code"]) == ("succeeded", 201)
    # A personal token of the workspace may ask too; none at all may not.
    status, _, _ = await get_status(api, flow_id, request_id, api.token)
    assert status == 201
    status, headers, answer = await get_status(api, flow_id, request_id, None)
    assert (status, answer["error"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"] == 'Bearer realm="flowhooks"'


async def test_status_of_an_async_run_and_of_another_flows_request(
    api: Api, endpoint: Endpoint
) -> None:
    flow_id = await make_flow(api, endpoint, sleep_s=1.5, **{"async": True})
    token = await token_of(api, flow_id)
    status, headers, _ = await api.send(flow_id, token, json={"a": 1})
    request_id = headers["X-Request-Id"]
    assert status == 200
    await asyncio.sleep(0.5)
    status, _, answer = await get_status(api, flow_id, request_id, token)
    assert (status, answer["status"], answer["data"]["request_id"]) == (202, 202, request_id)
    assert answer["message"] in ("queued", "running")

    async def final() -> tuple[int, Any, Any] | None:
        got = await get_status(api, flow_id, request_id, token)
        return got if got[0] != 202 else None

    status, _, answer = await eventually(final, timeout_s=20)
    assert (status, answer) == (201, {"call": 1, "input": {"a": 1}})

    other_id = await make_flow(api, endpoint)
    other_token = await token_of(api, other_id)
    status, _, answer = await get_status(api, other_id, request_id, other_token)
    assert (status, answer["error"]) == (404, "not_found")
    # The first flow's token does not open the other flow.
    status, _, answer = await get_status(api, other_id, request_id, token)
    assert status == 401


async def failing_flow(api: Api, endpoint: Endpoint, sleep_s: float = 0) -> str:
    """A flow that fails (502 `flow_error`) when its receiver answers 5xx, as a flow that
    forwards to a receiver which is down does."""
    flow = await api.create_flow(
        {
            "name": "dedup-failing-receiver",
            "status": "live",
            "webhook": {
                "ref_id": "web1",
                "dedup": {"key": "header:Idempotency-Key"},
                "response": {"status_code": 201, "body": '{"call": {{ work.body.call }}}'},
            },
            "steps": [
                {
                    "ref_id": "work",
                    "type": "http",
                    "url": f"{endpoint.url}?sleep={sleep_s}",
                    "retries": 0,  # the receiver's 503 ends the run (not retried inside it)
                },
                {
                    "ref_id": "check",
                    "type": "condition",
                    "if": "{{ work.status >= 500 }}",
                    "then": [
                        {
                            "ref_id": "down",
                            "type": "fail",
                            "message": "the receiver answered {{ work.status }}",
                            "status_code": 502,
                        }
                    ],
                },
            ],
        }
    )
    return str(flow["id"])


async def test_a_failed_first_does_not_hold_its_key(api: Api, endpoint: Endpoint) -> None:
    """The provider's retry after a failure runs (its side effect happens); only then is
    the answer replayed."""
    flow_id = await failing_flow(api, endpoint)
    token = await token_of(api, flow_id)
    key = {"Idempotency-Key": "evt-down-1"}
    endpoint.failures = 1
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    first = headers["X-Request-Id"]
    assert (status, orjson.loads(body)["error"]) == (502, "flow_error")
    assert "the receiver answered 503" in orjson.loads(body)["message"]
    assert "Idempotent-Replayed" not in headers
    # The retry runs: the receiver is called again.
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    retry = headers["X-Request-Id"]
    assert (status, orjson.loads(body)) == (201, {"call": 2})
    assert "Idempotent-Replayed" not in headers
    assert endpoint.calls == 2
    # Now the success is what duplicates get.
    status, headers, body = await api.send(flow_id, token, json={}, headers=key)
    assert (status, orjson.loads(body), headers["Idempotent-Replayed"]) == (
        201,
        {"call": 2},
        "true",
    )
    assert endpoint.calls == 2
    assert (await record(api, first))["outcome"] == "failed"
    assert (await record(api, retry))["outcome"] == "succeeded"
    assert (await record(api, headers["X-Request-Id"]))["duplicate_of"] == retry


async def test_after_a_failure_concurrent_retries_run_once(api: Api, endpoint: Endpoint) -> None:
    """Duplicates waiting for a first that fails are told to send again (503, never the
    failure); of the retries that then arrive at once on both replicas, one runs."""
    flow_id = await failing_flow(api, endpoint, sleep_s=1.0)
    token = await token_of(api, flow_id)
    replicas = [service.url for service in api.system.processes["ingress"]]
    key = {"Idempotency-Key": "evt-down-2", "Authorization": f"Bearer {token}"}

    async def send(index: int) -> tuple[int, Any, Any]:
        async with api.session.post(
            f"{replicas[index % 2]}/v1/flow-webhook/{flow_id}", json={}, headers=key
        ) as answer:
            return answer.status, answer.headers, orjson.loads(await answer.read())

    endpoint.failures = 1
    first = asyncio.create_task(send(0))
    await asyncio.sleep(0.3)  # the first is running: these wait for it
    waiting = await asyncio.gather(*(send(index) for index in range(1, 4)))
    assert (await first)[0] == 502
    for status, headers, answer in waiting:
        assert (status, answer["error"]) == (503, "unavailable")
        assert "send this request again" in answer["message"]
        assert headers["Retry-After"] == "1" and "Idempotent-Replayed" not in headers
    assert endpoint.calls == 1
    retries = await asyncio.gather(*(send(index) for index in range(6)))
    assert [(status, answer) for status, _, answer in retries] == [(201, {"call": 2})] * 6
    assert sum("Idempotent-Replayed" not in headers for _, headers, _ in retries) == 1
    assert endpoint.calls == 2


async def claim_rpcs(session: aiohttp.ClientSession, ops_url: str) -> float:
    """`runner.claim_dedup_key` calls this ingress made (claims and waiting duplicates'
    reads alike)."""
    async with session.get(f"{ops_url}/metrics") as answer:
        text = await answer.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "flowhooks_rpc_duration_seconds_count"
                and sample.labels.get("method") == "runner.claim_dedup_key"
            ):
                return sample.value
    return 0.0


async def test_waiting_duplicates_make_one_poller(api: Api, endpoint: Endpoint) -> None:
    """200 duplicates waiting for one slow first on one ingress: one of them asks the
    runner, the others join it (before: each asked every 20-500 ms, 1,000 of them took
    B's p50 from 7 to 521 ms); another flow's requests meanwhile answer at once."""
    flow_id = await make_flow(api, endpoint, sleep_s=3.0, dedup={"key": "header:Idempotency-Key"})
    token = await token_of(api, flow_id)
    other = await api.create_flow(
        {"name": "B", "status": "live", "webhook": {"response": {"body": '{"b": 1}'}}}
    )
    other_token = await token_of(api, str(other["id"]))
    ingress = api.system.processes["ingress"][0]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "evt-200"}

    async def b_latencies(count: int) -> list[float]:
        took = []
        for _ in range(count):
            started = time.perf_counter()
            async with api.session.post(
                f"{ingress.url}/v1/flow-webhook/{other['id']}",
                json={},
                headers={"Authorization": f"Bearer {other_token}"},
            ) as answer:
                assert (answer.status, await answer.read()) == (200, b'{"b": 1}')
            took.append(time.perf_counter() - started)
        return took

    baseline = await b_latencies(10)
    before = await claim_rpcs(api.session, ingress.ops_url)
    # Its own connections: the shared session would queue past 100 at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as burst:

        async def send(index: int) -> tuple[int, str | None, bytes]:
            async with burst.post(
                f"{ingress.url}/v1/flow-webhook/{flow_id}", json={"i": index}, headers=headers
            ) as answer:
                return answer.status, answer.headers.get("Idempotent-Replayed"), await answer.read()

        first = asyncio.create_task(send(0))
        await asyncio.sleep(0.3)
        one_waiter = asyncio.create_task(send(1))
        await asyncio.sleep(0.3)  # it waits: the 198 others join its poller
        rest = [asyncio.create_task(send(index)) for index in range(2, 200)]
        during = await b_latencies(10)
        answers = await asyncio.gather(first, one_waiter, *rest)
    after = await claim_rpcs(api.session, ingress.ops_url)
    assert endpoint.calls == 1
    assert answers[0][:2] == (201, None)
    assert {(status, replayed) for status, replayed, _ in answers[1:]} == {(201, "true")}
    assert {body for _, _, body in answers} == {answers[0][2]}
    # The first's claim, the first duplicate's, and one poller's reads (at most two a
    # second over the 3 s): each waiter asking for itself would be 400 and more.
    calls = after - before
    assert calls < 40, calls
    # B is answered within the contract's bound meanwhile (measured, printed).
    assert max(during) < 2.0, during
    p50_before, p50_during = statistics.median(baseline), statistics.median(during)
    print(
        f"claim RPCs for 200 duplicates: {calls:.0f}; B p50 {p50_before * 1000:.1f} ms"
        f" before, {p50_during * 1000:.1f} ms while they waited"
    )
