"""Flows that branch, loop, call an HTTP endpoint (served by this test on loopback,
allowed by the operator's allow list) and fail on purpose; outgoing requests to
private and metadata addresses refused; hostile templates fail the run, not the runner."""

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.receiver import serving

# The shared system (tests/e2e/conftest.py): its runners' `http` steps may reach
# 127.0.0.2, where the test's own HTTP endpoint listens, and no other address.
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

ENDPOINT_HOST = "127.0.0.2"


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A CRM stand-in: records what it receives; /flaky fails twice, then answers;
    /busy answers 503 with `Retry-After: 1` once, then 200, and records when each request
    came (monotonic, in `received`); /closed always answers 503 with `Retry-After: 30`;
    /broken always answers 500."""
    received: list[dict[str, Any]] = []
    flaky_calls = {"n": 0}

    async def contacts(request: web.Request) -> web.Response:
        received.append({"body": await request.json(), "auth": request.headers.get("X-Api-Key")})
        return web.json_response({"id": len(received), "ok": True}, status=201)

    async def flaky(request: web.Request) -> web.Response:
        flaky_calls["n"] += 1
        if flaky_calls["n"] <= 2:
            return web.Response(status=503)
        return web.json_response({"after": flaky_calls["n"]})

    async def busy(request: web.Request) -> web.Response:
        received.append({"busy_at": time.monotonic()})
        if len(received) == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.json_response({"after": len(received)})

    async def closed(request: web.Request) -> web.Response:
        received.append({"closed_at": time.monotonic()})
        return web.Response(status=503, headers={"Retry-After": "30"})

    async def broken(request: web.Request) -> web.Response:
        received.append({"broken": True})
        return web.json_response({"error": "down"}, status=500)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_post("/contacts", contacts)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/busy", busy)
    app.router.add_get("/closed", closed)
    app.router.add_get("/broken", broken)
    async with serving(app, ENDPOINT_HOST) as base:
        yield base, received


async def send(api: Api, definition: dict[str, Any], body: Any) -> tuple[int, Any]:
    status, answer, _ = await send_with_id(api, definition, body)
    return status, answer


async def send_with_id(api: Api, definition: dict[str, Any], body: Any) -> tuple[int, Any, str]:
    flow = await api.create_flow({"name": "steps", "status": "live", **definition})
    token = (await api.webhook_info(flow["id"]))["token"]
    status, headers, raw = await api.send(flow["id"], token, json=body)
    answer = orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    return status, answer, headers["X-Request-Id"]


async def test_branch_loop_and_call_an_api(
    api: Api, endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    base, received = endpoint
    definition = {
        "webhook": {
            "ref_id": "web1",
            "response": {
                "status_code": 200,
                "body": (
                    '{"synced": {{ sync.value | length }}, "vip": {{ vip.value | tojson }},'
                    ' "first_id": {{ sync.value[0].body.id }}}'
                ),
            },
        },
        "steps": [
            {
                "ref_id": "vip",
                "type": "condition",
                "if": "{{ web1.total > 100 }}",
                "then": [{"ref_id": "tier", "type": "template", "template": "gold"}],
                "else": [{"ref_id": "tier2", "type": "template", "template": "basic"}],
            },
            {
                "ref_id": "sync",
                "type": "loop",
                "over": "{{ web1.users }}",
                "steps": [
                    {
                        "ref_id": "push",
                        "type": "http",
                        "method": "POST",
                        "url": base + "/contacts",
                        "headers": {"X-Api-Key": "secret-key-123"},
                        "body": '{"name": "{{ loop.item.name }}", "n": {{ loop.index }},'
                        ' "tier": "{{ tier.value }}"}',
                    },
                ],
            },
        ],
    }
    status, answer, request_id = await send_with_id(
        api, definition, {"total": 250, "users": [{"name": "ada"}, {"name": "bob"}]}
    )
    assert status == 200, answer
    assert answer == {"synced": 2, "vip": True, "first_id": 1}
    assert received == [
        {"body": {"name": "ada", "n": 0, "tier": "gold"}, "auth": "secret-key-123"},
        {"body": {"name": "bob", "n": 1, "tier": "gold"}, "auth": "secret-key-123"},
    ]

    # The trace shows each call, with the API key redacted (and nowhere in the record).
    async def stored() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    record = await eventually(stored)
    push_steps = [s for s in record["steps"] if s["ref_id"] == "push"]
    assert len(push_steps) == 2
    assert push_steps[0]["input"]["headers.X-Api-Key"] == "[redacted]"
    assert push_steps[0]["output"]["status"] == 201
    assert "secret-key-123" not in orjson.dumps(record).decode()


async def test_retries_then_succeeds(api: Api, endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    base, _ = endpoint
    status, answer = await send(
        api,
        {
            "steps": [
                {
                    "ref_id": "call",
                    "type": "http",
                    "url": base + "/flaky",
                    "retries": 3,
                    "retry_backoff_s": 0.01,
                }
            ]
        },
        {},
    )
    assert status == 200, answer
    assert answer["data"]["status"] == 200
    assert answer["data"]["body"] == {"after": 3}


async def test_a_retry_waits_for_retry_after(
    api: Api, endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    """503 with `Retry-After: 1`: the retry comes at least 1 s later (the policy alone
    would wait 0.01 s), and the run succeeds."""
    base, received = endpoint
    step = {"ref_id": "call", "type": "http", "url": base + "/busy", "retries": 2}
    status, answer = await send(api, {"steps": [{**step, "retry_backoff_s": 0.01}]}, {})
    assert status == 200, answer
    assert answer["data"]["body"] == {"after": 2}
    assert len(received) == 2
    assert received[1]["busy_at"] - received[0]["busy_at"] >= 1.0


async def test_a_retry_after_past_the_flows_timeout_fails_the_step_at_once(
    api: Api, endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    """`Retry-After: 30` in a flow of 5 s: no retry, the step fails at once with a
    message naming Retry-After and the time left (not a 504 at the timeout)."""
    base, received = endpoint
    started = time.monotonic()
    status, answer = await send(
        api,
        {
            "webhook": {"timeout_s": 5},
            "steps": [{"ref_id": "call", "type": "http", "url": base + "/closed", "retries": 3}],
        },
        {},
    )
    assert (status, answer["error"]) == (500, "flow_error"), answer
    assert len(received) == 1
    assert time.monotonic() - started < 5
    assert re.fullmatch(
        r"step 'call' failed: steps\[0\]: GET http://127\.0\.0\.2:\d+/closed answered HTTP 503"
        r" with Retry-After of 30 s: waiting 30 s would pass the run's timeout"
        r" \([0-5]\.\d s left\), so it is not retried \(after attempt 1 of 4\)",
        answer["message"],
    ), answer


async def test_on_error_answers_with_the_flows_response_and_the_run_stays_failed(
    api: Api, endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    """The backend answers 500, a `fail` step fails the run on it; the flow's on_error
    step runs and its response answers the caller 200; the debugger keeps the run as
    `failed` with the step's error, and the on_error step in its trace."""
    base, received = endpoint
    definition = {
        "webhook": {
            "response": {
                "status_code": 200,
                "body": '{% if error %}{"recovered": true, "step": "{{ error.step }}"}'
                '{% else %}{"recovered": false}{% endif %}',
            }
        },
        "steps": [
            {"ref_id": "call", "type": "http", "url": base + "/broken", "retries": 0},
            {
                "ref_id": "check",
                "type": "condition",
                "if": "{{ call.status >= 500 }}",
                "then": [{"ref_id": "down", "type": "fail", "message": "HTTP {{ call.status }}"}],
            },
        ],
        "on_error": [
            {"ref_id": "note", "type": "template", "template": "{{ error.message }}"},
        ],
    }
    shown = await api.create_flow({"name": "shown", **definition})
    assert shown["on_error"] == definition["on_error"]  # stored and shown as saved
    assert "on_error" not in await api.create_flow({"name": "none", "steps": []})
    status, answer, request_id = await send_with_id(api, definition, {})
    assert (status, answer) == (200, {"recovered": True, "step": "down"})
    assert received == [{"broken": True}]

    async def detail() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    record = await eventually(detail)
    assert record["outcome"] == "failed"
    assert record["error"] == "step 'down' failed: HTTP 500"
    assert record["response"]["status_code"] == 200
    assert record["response"]["body"] == '{"recovered": true, "step": "down"}'
    assert [(step["ref_id"], step["error"]) for step in record["steps"]] == [
        ("call", None),
        ("check", "HTTP 500"),
        ("down", "HTTP 500"),
        ("note", None),
    ], record["steps"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://[::ffff:127.0.0.1]:9/", "127.0.0.1"),
        ("http://localhost:9/", "localhost is 127.0.0.1"),
    ],
)
async def test_private_destinations_refused(api: Api, url: str, why: str) -> None:
    status, answer = await send(
        api, {"steps": [{"ref_id": "call", "type": "http", "url": url, "retries": 0}]}, {}
    )
    assert status == 500
    assert answer["error"] == "flow_error"
    assert why in answer["message"]
    assert "the operator has not allowed it" in answer["message"]


async def test_redirect_to_metadata_refused(
    api: Api, endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = endpoint
    status, answer = await send(
        api,
        {"steps": [{"ref_id": "call", "type": "http", "url": base + "/redirect", "retries": 0}]},
        {},
    )
    assert status == 500
    assert "169.254.169.254" in answer["message"]


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ request.__class__ }}",
        "{{ '{0.__class__}'.format(web1) }}",
        "{{ 'a' * 50000000 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ],
)
async def test_template_injection_fails_the_run_not_the_runner(api: Api, hostile: str) -> None:
    started = time.monotonic()
    status, answer = await send(
        api, {"steps": [{"ref_id": "evil", "type": "template", "template": hostile}]}, {"x": 1}
    )
    assert status == 500, answer
    assert answer["error"] == "flow_error"
    assert time.monotonic() - started < 30  # the contract's default sync timeout
    # The runner still serves.
    status, answer = await send(
        api,
        {"steps": [{"ref_id": "ok", "type": "template", "template": "{{ web1.x + 1 }}"}]},
        {"x": 1},
    )
    assert (status, answer["data"]) == (200, {"value": 2})
