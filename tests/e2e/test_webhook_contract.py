"""Everything the contract says about `/v1/flow-webhook/{id}`, over real HTTP against
the four services as processes: body types, refusals, limits, the auth matrix, and
changes reaching two ingress replicas within one second."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

ECHO_FLOW: dict[str, Any] = {
    "name": "echo",
    "status": "live",
    "webhook": {"ref_id": "web1"},
    "steps": [{"ref_id": "echo", "type": "template", "template": "{{ web1 }}"}],
}


async def echo_flow(api: Api) -> tuple[str, str]:
    flow = await api.create_flow(ECHO_FLOW)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


def echoed(body: bytes) -> Any:
    envelope = orjson.loads(body)
    assert (envelope["status"], envelope["error"], envelope["message"]) == (200, None, "ok")
    return envelope["data"]["value"]


async def test_body_types(api: Api) -> None:
    flow_id, token = await echo_flow(api)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"json": {"company_id": 123456}}, {"company_id": 123456}),
        (
            {"data": b'{"a": [1, 2]}', "headers": {"Content-Type": "application/vnd.x+json"}},
            {"a": [1, 2]},
        ),
        (
            {
                "data": b'<order id="7"><item>a</item><item>b</item></order>',
                "headers": {"Content-Type": "application/xml; charset=utf-8"},
            },
            {"order": {"@id": "7", "item": ["a", "b"]}},
        ),
        ({"data": b"<a>1</a>", "headers": {"Content-Type": "text/xml"}}, {"a": "1"}),
        ({"data": {"a": "1", "b": "2"}}, {"a": "1", "b": "2"}),
        (
            {"data": b"x=1&x=2", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            {"x": ["1", "2"]},
        ),
        ({"data": b""}, {}),
        (
            {"data": b'{"no": "content type"}', "headers": {"Content-Type": ""}},
            {"no": "content type"},
        ),
    ]
    for kwargs, expected in cases:
        status, _, body = await api.send(flow_id, token, **kwargs)
        assert status == 200, (kwargs, body)
        assert echoed(body) == expected, kwargs

    form = aiohttp.FormData()
    form.add_field("a", "1")
    form.add_field("a", "2")
    form.add_field("doc", b"hello", filename="x.txt", content_type="text/plain")
    status, _, body = await api.send(flow_id, token, data=form)
    assert status == 200
    assert echoed(body) == {
        "a": ["1", "2"],
        "doc": {
            "filename": "x.txt",
            "content_type": "text/plain",
            "size": 5,
            "data_base64": "aGVsbG8=",
        },
    }


async def test_methods_and_request_metadata(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "meta",
            "webhook": {
                "ref_id": "web1",
                "response": {
                    "status_code": 200,
                    "body": (
                        "{{ request.method }} {{ request.query.page }}"
                        ' {{ request.headers["x-signature"] }}'
                        " {{ request.raw_body }} {{ request.id | length }} {{ web1 }}"
                        ' {{ "authorization" in request.headers }}'
                    ),
                },
            },
            "steps": [],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, _, body = await api.send(
        flow["id"], token, method="GET", params={"page": "2"}, headers={"X-Signature": "s1"}
    )
    assert status == 200
    assert body == b"GET 2 s1  32 {'page': '2'} False"
    for method in ("PUT", "PATCH"):
        status, _, body = await api.send(
            flow["id"],
            token,
            method=method,
            params={"page": "3"},
            headers={"X-Signature": "s2"},
            data=b'{"k": 1}',
        )
        assert (status, body) == (200, f"{method} 3 s2 {{\"k\": 1}} 32 {{'k': 1}} False".encode())
    status, _, body = await api.send(flow["id"], token, method="DELETE")
    assert status == 405
    assert orjson.loads(body)["error"] == "method_not_allowed"


async def test_bad_bodies_are_400_and_stored(api: Api) -> None:
    flow_id, token = await echo_flow(api)
    status, headers, body = await api.send(
        flow_id, token, data=b'{"a": 1,\n "b": }', headers={"Content-Type": "application/json"}
    )
    assert status == 400
    envelope = orjson.loads(body)
    assert envelope["error"] == "bad_request"
    assert envelope["data"] == {"line": 2, "column": 7}
    assert "line 2 column 7" in envelope["message"]
    request_id = headers["X-Request-Id"]

    async def stored() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    record = await eventually(stored)
    assert record["outcome"] == "rejected"
    assert record["raw_body"] == '{"a": 1,\n "b": }'
    assert record["response"]["status_code"] == 400

    for data, content_type in (
        (b"<a><b></a>", "application/xml"),
        (b"--XX\r\nbroken", "multipart/form-data; boundary=XX"),
        (b"not json at all", ""),
    ):
        status, _, body = await api.send(
            flow_id, token, data=data, headers={"Content-Type": content_type}
        )
        assert status == 400, (content_type, body)
        assert orjson.loads(body)["error"] == "bad_request"


async def test_hostile_bodies_are_refused_and_the_service_keeps_answering(api: Api) -> None:
    flow_id, token = await echo_flow(api)
    xxe = b'<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>'
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    laughs = f'<!DOCTYPE z [<!ENTITY l0 "lol">{entities}]><z>&l9;</z>'.encode()
    deep_json = b"[" * 100_000 + b"]" * 100_000
    for data, content_type in (
        (xxe, "application/xml"),
        (laughs, "text/xml"),
        (deep_json, "application/json"),
    ):
        status, _, body = await api.send(
            flow_id, token, data=data, headers={"Content-Type": content_type}
        )
        assert status == 400, body[:200]
        assert b"root:" not in body
    status, _, body = await api.send(flow_id, token, json={"still": "here"})
    assert (status, echoed(body)) == (200, {"still": "here"})


async def test_body_over_the_limit_is_413(api: Api) -> None:
    flow_id, token = await echo_flow(api)
    status, _, body = await api.send(
        flow_id, token, data=b"x" * (11 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert status == 413
    assert orjson.loads(body)["error"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    status, _, body = await api.send(flow_id, token, data=chunked())
    assert status == 413


async def test_auth_matrix(api: Api) -> None:
    flow_id, flow_token = await echo_flow(api)
    system = api.system
    expectations = {
        flow_token: 200,
        system.create_token("acme", "automation"): 200,
        system.create_token("acme", "automation.manage"): 200,
        system.create_token("acme", "automation.webhook_run"): 200,
        system.create_token("globex", "automation"): 404,
        "fhp_unknown": 401,
    }
    for token, expected in expectations.items():
        status, headers, _ = await api.send(flow_id, token, json={})
        assert status == expected, token
        assert "X-Request-Id" in headers
    for header in ("Basic dXNlcjpwYXNz", "Bearer", f"Token {flow_token}", "bearer  "):
        status, headers, _ = await api.send(
            flow_id, None, json={}, headers={"Authorization": header}
        )
        assert status == 401, header
        assert headers["WWW-Authenticate"].startswith("Bearer")
    for bad_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        status, _, _ = await api.send(bad_id, api.token, json={})
        assert status == 404
        # A flow's own token is worth nothing on another flow: an unknown bearer there.
        status, _, _ = await api.send(bad_id, flow_token, json={})
        assert status == 401


async def test_rate_limit_per_flow(api: Api) -> None:
    limited = api.system.start(
        "ingress",
        FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S="1",
        FLOWHOOKS_INGRESS_FLOW_RATE_BURST="2",
    )
    try:
        flow_id, token = await echo_flow(api)
        statuses = []
        for _ in range(3):
            async with api.session.post(
                f"{limited.url}/v1/flow-webhook/{flow_id}",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            ) as answer:
                statuses.append(answer.status)
                last_headers, last_body = answer.headers.copy(), await answer.json()
        assert statuses == [200, 200, 429]
        assert last_headers["Retry-After"] == "1"
        assert last_body["error"] == "rate_limited"
    finally:
        api.system.stop(limited)


def test_slow_sender_is_cut_off(system: System) -> None:
    guarded = system.start("ingress", FLOWHOOKS_HTTP_HEADER_TIMEOUT_S="1")
    try:
        with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
            started = time.monotonic()
            cut_off = False
            for byte in b"POST /v1/flow-webhook/x HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"y" * 50:
                try:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
                except OSError:
                    cut_off = True
                    break
                if time.monotonic() - started > 8:
                    break
            assert cut_off, "the slow sender was not cut off"
        # The service still answers others.
        import urllib.request

        with urllib.request.urlopen(f"{guarded.url}/healthz", timeout=5) as answer:  # noqa: S310
            assert answer.status == 200
    finally:
        system.stop(guarded)


async def test_changes_reach_two_ingress_replicas_within_one_second(api: Api) -> None:
    second = api.system.start("ingress")
    replicas = [api.system.url("ingress"), second.url]
    try:
        flow_id, flow_token = await echo_flow(api)
        personal = api.system.create_token("acme", "automation.webhook_run")

        async def status_on(url: str, token: str) -> int:
            async with api.session.post(
                f"{url}/v1/flow-webhook/{flow_id}",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            ) as answer:
                await answer.read()
                return answer.status

        async def within_one_second(token: str, expected: int) -> None:
            started = time.monotonic()
            pending = set(replicas)
            while pending and time.monotonic() - started < 1.0:
                for url in list(pending):
                    if await status_on(url, token) == expected:
                        pending.discard(url)
                await asyncio.sleep(0.02)
            assert not pending, f"still not {expected} after 1 s on {pending}"

        # Warm both replicas' caches.
        for url in replicas:
            assert await status_on(url, personal) == 200
            assert await status_on(url, flow_token) == 200

        # Revoke the personal token through the auth API.
        async with api.session.get(
            f"{api.system.url('auth')}/v1/access-tokens",
            headers={"Authorization": f"Bearer {api.token}"},
        ) as answer:
            tokens = (await answer.json())["items"]
        token_id = next(t["id"] for t in tokens if personal.startswith(t["prefix"]))
        async with api.session.delete(
            f"{api.system.url('auth')}/v1/access-tokens/{token_id}",
            headers={"Authorization": f"Bearer {api.token}"},
        ) as answer:
            assert answer.status == 204
        await within_one_second(personal, 401)

        # Rotate the flow's token: the old one stops, the new one works.
        async with api.session.post(
            f"{api.system.url('runner')}/v1/flows/{flow_id}/webhook/rotate-token",
            headers={"Authorization": f"Bearer {api.token}"},
        ) as answer:
            new_token = (await answer.json())["token"]
        await within_one_second(flow_token, 401)
        await within_one_second(new_token, 200)

        # Pause, then delete.
        await api.patch_flow(flow_id, {"status": "paused"})
        started = time.monotonic()
        for url in replicas:
            while True:
                async with api.session.post(
                    f"{url}/v1/flow-webhook/{flow_id}",
                    json={},
                    headers={"Authorization": f"Bearer {new_token}"},
                ) as answer:
                    if (await answer.json()).get("error") == "biz_logic":
                        break
                assert time.monotonic() - started < 1.0, f"pause not seen on {url} within 1 s"
                await asyncio.sleep(0.02)
        async with api.session.delete(
            f"{api.system.url('runner')}/v1/flows/{flow_id}",
            headers={"Authorization": f"Bearer {api.token}"},
        ) as answer:
            assert answer.status == 204
        await within_one_second(new_token, 401)
    finally:
        api.system.stop(second)


async def test_header_too_long_is_a_400_envelope(api: Api) -> None:
    flow_id, token = await echo_flow(api)
    status, _, body = await api.send(flow_id, token, json={}, headers={"X-Big": "a" * 9000})
    assert status == 400
    assert orjson.loads(body) == {
        "status": 400,
        "error": "bad_request",
        "data": None,
        "message": "the request could not be parsed (malformed, or a header too long)",
    }


async def test_slow_body_is_408(api: Api) -> None:
    slow = api.system.start("ingress", FLOWHOOKS_INGRESS_BODY_TIMEOUT_S="1")
    try:
        flow_id, token = await echo_flow(api)

        async def trickle() -> AsyncIterator[bytes]:
            yield b'{"a": '
            await asyncio.sleep(3)
            yield b"1}"

        async with api.session.post(
            f"{slow.url}/v1/flow-webhook/{flow_id}",
            data=trickle(),
            headers={"Authorization": f"Bearer {token}"},
        ) as answer:
            assert answer.status == 408
            assert (await answer.json())["error"] == "request_timeout"
    finally:
        api.system.stop(slow)
