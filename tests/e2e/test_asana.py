"""The `asana` mode end to end over HTTP (issue 22: "Asana's secret is learned from the
first handshake only while the flow holds none; a later handshake cannot replace it"):
the first handshake arms the flow (echoed, recorded `handshake`, the secret kept by the
runner and shown only as its hint), a signed event runs, a second handshake is 401, and
after the operator clears the secret through the flows API a new handshake arms it
again. Asana signs `X-Hook-Signature: <hex HMAC-SHA256 of the body>` (no SDK of theirs
verifies it), with the secret of its handshake."""

import asyncio
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from harness.client import Api, eventually

# The shared system has a key for webhook secrets (tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

# What Asana sends: 32 hex characters.
FIRST = "4e6f3c2a1b0d9e8f7a6b5c4d3e2f1a0b"
SECOND = "9a8b7c6d5e4f30211203f4e5d6c7b8a9"
EVENTS = orjson.dumps(
    {
        "events": [
            {
                "action": "changed",
                "resource": {"gid": "1204", "resource_type": "task"},
                "change": {"field": "completed", "action": "changed"},
            }
        ]
    }
)
UNARMED = (
    "invalid asana signature: this asana flow holds no secret yet: only Asana's handshake"
    " (X-Hook-Secret) is accepted until one arms it"
)
HELD = (
    "invalid asana handshake: this flow already holds a secret (a later handshake cannot"
    " replace it; to re-arm the flow, save its webhook.auth.secrets as [] through the flows"
    " API, then create the webhook again)"
)


def signed(body: bytes, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


async def handshake(api: Api, flow_id: str, secret: str) -> tuple[int, CIMultiDict[str], bytes]:
    """As Asana sends it when a webhook is created: a POST, no body, the secret."""
    return await api.send(flow_id, None, data=b"", headers={"X-Hook-Secret": secret})


async def event(api: Api, flow_id: str, secret: str) -> tuple[int, CIMultiDict[str], bytes]:
    return await api.send(flow_id, None, data=EVENTS, headers=signed(EVENTS, secret))


async def record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        return found if status == 200 else None

    return await eventually(stored)


async def read_flow(api: Api, flow_id: str) -> dict[str, Any]:
    async with api.session.get(
        f"{api.system.url('runner')}/v1/flows/{flow_id}", headers=api._auth()
    ) as answer:
        assert answer.status == 200
        return dict(await answer.json())


async def armed_with(api: Api, flow_id: str, secret: str) -> dict[str, Any]:
    """The flow once it holds `secret` (GET: its hint only), and once auth has applied
    that version (the ingress's copy follows within the usual bound)."""
    flow = await read_flow(api, flow_id)
    assert flow["webhook"]["auth"]["secrets"] == ["\u2026" + secret[-4:]]
    await api.usable(flow_id, flow["version"])
    return flow


def refusal(body: bytes) -> dict[str, Any]:
    return dict(orjson.loads(body))


async def test_first_handshake_arms_a_second_is_refused_and_clearing_re_arms(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "asana tasks",
            "status": "live",
            "webhook": {
                "auth": {"mode": "asana"},
                "response": {"status_code": 200, "body": "{{ web1.events[0].action }}"},
            },
        }
    )
    flow_id = flow["id"]
    assert flow["webhook"]["auth"]["secrets"] == []

    # Unarmed, the URL takes nothing but the handshake: an event is 401, signed or not.
    status, _, body = await event(api, flow_id, FIRST)
    assert (status, refusal(body)["message"]) == (401, UNARMED)

    # The first handshake: 200 echoing the secret, only once the runner keeps it.
    status, headers, body = await handshake(api, flow_id, FIRST)
    assert (status, headers["X-Hook-Secret"], body) == (200, FIRST, b"")
    assert "Content-Type" not in headers  # nothing but the header
    stored = await record(api, headers["X-Request-Id"])
    assert stored["outcome"] == "handshake" and stored["steps"] == []
    # Recorded without the secret, asked or answered.
    assert stored["headers"]["x-hook-secret"] == "[redacted]"
    assert stored["response"]["headers"] == {"X-Hook-Secret": "[redacted]"}
    assert stored["response"]["status_code"] == 200
    assert FIRST not in orjson.dumps(stored).decode()
    armed = await armed_with(api, flow_id, FIRST)
    assert armed["version"] == flow["version"] + 1
    assert FIRST not in orjson.dumps(armed).decode()

    # An event signed with the learned secret runs the flow; a forged one does not.
    status, headers, body = await event(api, flow_id, FIRST)
    assert (status, body) == (200, b"changed"), body
    assert (await record(api, headers["X-Request-Id"]))["outcome"] == "succeeded"
    status, _, body = await event(api, flow_id, SECOND)
    assert (status, refusal(body)["message"]) == (
        401,
        "invalid asana signature: the X-Hook-Signature does not match",
    )

    # A second handshake (another webhook to this URL, or whoever found it): 401, nothing
    # echoed, the first secret kept; recorded as refused.
    status, headers, body = await handshake(api, flow_id, SECOND)
    assert (status, refusal(body)) == (
        401,
        {"status": 401, "error": "unauthorized", "message": HELD, "data": None},
    )
    assert "X-Hook-Secret" not in headers and SECOND.encode() not in body
    rejected = await record(api, headers["X-Request-Id"])
    assert rejected["outcome"] == "rejected"
    assert rejected["headers"]["x-hook-secret"] == "[redacted]"
    assert (await read_flow(api, flow_id))["version"] == armed["version"]
    status, _, body = await event(api, flow_id, FIRST)
    assert (status, body) == (200, b"changed")

    # A save that leaves the secrets out (a file applied again) keeps the learned one.
    renamed = await api.patch_flow(flow_id, {"webhook": {"auth": {"mode": "asana"}}})
    assert renamed["webhook"]["auth"]["secrets"] == ["\u2026" + FIRST[-4:]]

    # The operator re-arms: `secrets: []`. Events are refused again; the next handshake
    # arms the flow with its own secret.
    cleared = await api.patch_flow(flow_id, {"webhook": {"auth": {"mode": "asana", "secrets": []}}})
    assert cleared["webhook"]["auth"]["secrets"] == []
    status, _, body = await event(api, flow_id, FIRST)
    assert (status, refusal(body)["message"]) == (401, UNARMED)
    status, headers, body = await handshake(api, flow_id, SECOND)
    assert (status, headers["X-Hook-Secret"]) == (200, SECOND)
    await armed_with(api, flow_id, SECOND)
    status, _, body = await event(api, flow_id, SECOND)
    assert (status, body) == (200, b"changed")
    status, _, body = await event(api, flow_id, FIRST)
    assert status == 401


async def test_concurrent_handshakes_arm_once(api: Api) -> None:
    flow = await api.create_flow(
        {"name": "asana race", "status": "live", "webhook": {"auth": {"mode": "asana"}}}
    )
    secrets = [f"asana-race-secret-{n:04d}" for n in range(6)]
    answers = await asyncio.gather(*(handshake(api, flow["id"], s) for s in secrets))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 401, 401, 401, 401, 401], answers
    (winner,) = [s for s, (status, _, _) in zip(secrets, answers, strict=True) if status == 200]
    armed = await armed_with(api, flow["id"], winner)
    assert armed["version"] == flow["version"] + 1


async def test_a_paused_flow_is_not_armed(api: Api) -> None:
    """A paused flow answers with the contract's paused answer (no X-Hook-Secret, so
    Asana does not create the webhook) and keeps no secret."""
    flow = await api.create_flow(
        {"name": "asana paused", "status": "paused", "webhook": {"auth": {"mode": "asana"}}}
    )
    status, headers, body = await handshake(api, flow["id"], FIRST)
    assert (status, refusal(body)["error"]) == (200, "biz_logic")
    assert "X-Hook-Secret" not in headers
    assert (await read_flow(api, flow["id"]))["webhook"]["auth"]["secrets"] == []
