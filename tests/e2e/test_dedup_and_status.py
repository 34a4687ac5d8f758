"""Deduplication (`webhook.dedup`), the timeout fallback (`webhook.on_timeout:
"accept"`) and the status URL (`GET /v1/flow-webhook/{flow_id}/runs/{request_id}`),
against the real services, with two ingress replicas."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.e2e.client import Api, eventually
from tests.e2e.receiver import serving
from tests.e2e.system import System, running_system

pytestmark = pytest.mark.e2e

ENDPOINT_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32"]') as running:
        running.start("ingress")  # a second replica
        yield running


class Endpoint:
    """What a run calls: counts the calls (one per run) and sleeps `?sleep=` seconds."""

    def __init__(self) -> None:
        self.calls = 0
        self.url = ""


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def handle(request: web.Request) -> web.Response:
        state.calls += 1
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.json_response({"call": state.calls})

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
