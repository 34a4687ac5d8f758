"""Providers that must be answered before they send (issue 22), end to end over HTTP:
each handshake mode's handshake answered at once by the ingress and recorded by the
debugger as `handshake` (the flow not run), one signed event per mode run, and an
unsigned or wrongly signed handshake refused 401 without echoing anything."""

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey
from slack_sdk.signature import SignatureVerifier

from harness.client import Api, eventually

# The shared system has a key for webhook secrets (tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

SECRET = "handshake-e2e-secret-0001"
VERIFY_TOKEN = "meta-verify-token-0001"
DISCORD_KEY = SigningKey(b"\x07" * 32)
CHALLENGE = "challenge-3eZbrw1aBm2rZgRNFdxV"


def _hmac(message: bytes, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


@dataclass
class Call:
    method: str = "POST"
    body: bytes = b""
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Mode:
    auth: dict[str, Any]
    handshake: Call
    # Status, content type (None: no body) and body of the answer.
    answer: tuple[int, str | None, bytes]
    event: Call
    # The handshake as a forger sends it (no or a wrong signature; a wrong verify token).
    forged: Call
    refusal: str


def slack_signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


def zoom_signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()))
    signature = "v0=" + _hmac(f"v0:{ts}:".encode() + body, secret).hex()
    return {"x-zm-request-timestamp": ts, "x-zm-signature": signature}


def twitch_signed(body: bytes, kind: str, secret: str = SECRET) -> dict[str, str]:
    message_id = "e76c6bd4-55c9-4987-8304-da1588d8988b"
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    signature = _hmac(message_id.encode() + timestamp.encode() + body, secret).hex()
    return {
        "Twitch-Eventsub-Message-Id": message_id,
        "Twitch-Eventsub-Message-Timestamp": timestamp,
        "Twitch-Eventsub-Message-Signature": "sha256=" + signature,
        "Twitch-Eventsub-Message-Type": kind,
    }


def discord_signed(body: bytes, key: SigningKey = DISCORD_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body).signature.hex()
    return {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": timestamp}


EVENT = b'{"n": 7}'
SLACK_HANDSHAKE = orjson.dumps({"token": "t", "challenge": CHALLENGE, "type": "url_verification"})
ZOOM_HANDSHAKE = orjson.dumps(
    {"payload": {"plainToken": CHALLENGE}, "event": "endpoint.url_validation"}
)
TWITCH_HANDSHAKE = orjson.dumps({"challenge": CHALLENGE, "subscription": {"id": "s"}})
JSON = "application/json"


def signed_modes() -> dict[str, Mode]:
    """Each mode's calls, signed now: a timestamped signature made at import would be
    older than the 300 s the modes allow by the time a late test file runs."""
    return {
        "slack": Mode(
            {"mode": "slack", "secrets": [SECRET]},
            Call(body=SLACK_HANDSHAKE, headers=slack_signed(SLACK_HANDSHAKE)),
            (200, JSON, orjson.dumps({"challenge": CHALLENGE})),
            Call(body=EVENT, headers=slack_signed(EVENT)),
            Call(body=SLACK_HANDSHAKE, headers=slack_signed(SLACK_HANDSHAKE, "forged-secret-0")),
            "invalid slack signature: the X-Slack-Signature does not match",
        ),
        "zoom": Mode(
            {"mode": "zoom", "secrets": [SECRET]},
            Call(body=ZOOM_HANDSHAKE, headers=zoom_signed(ZOOM_HANDSHAKE)),
            (
                200,
                JSON,
                orjson.dumps(
                    {"plainToken": CHALLENGE, "encryptedToken": _hmac(CHALLENGE.encode()).hex()}
                ),
            ),
            Call(body=EVENT, headers=zoom_signed(EVENT)),
            Call(body=ZOOM_HANDSHAKE),
            "invalid zoom signature: a missing or malformed signature timestamp",
        ),
        "microsoft-graph": Mode(
            {"mode": "microsoft-graph", "secrets": [SECRET]},
            Call(query={"validationToken": CHALLENGE}, headers={"Content-Type": "text/plain"}),
            (200, "text/plain", CHALLENGE.encode()),
            Call(body=orjson.dumps({"value": [{"clientState": SECRET, "n": 7}]})),
            Call(body=orjson.dumps({"value": [{"clientState": "forged-state"}]})),
            "invalid microsoft-graph signature: a notification's clientState does not match",
        ),
        "meta": Mode(
            {"mode": "meta", "secrets": [SECRET], "verify_token": VERIFY_TOKEN},
            Call(
                "GET",
                query={
                    "hub.mode": "subscribe",
                    "hub.verify_token": VERIFY_TOKEN,
                    "hub.challenge": CHALLENGE,
                },
            ),
            (200, "text/plain", CHALLENGE.encode()),
            Call(body=EVENT, headers={"X-Hub-Signature-256": "sha256=" + _hmac(EVENT).hex()}),
            Call(
                "GET",
                query={
                    "hub.mode": "subscribe",
                    "hub.verify_token": "guessed",
                    "hub.challenge": CHALLENGE,
                },
            ),
            "invalid meta handshake: the hub.verify_token is not the flow's",
        ),
        "twitter": Mode(
            {"mode": "twitter", "secrets": [SECRET]},
            Call("GET", query={"crc_token": CHALLENGE}),
            (
                200,
                JSON,
                orjson.dumps(
                    {
                        "response_token": "sha256="
                        + base64.b64encode(_hmac(CHALLENGE.encode())).decode()
                    }
                ),
            ),
            Call(
                body=EVENT,
                headers={
                    "x-twitter-webhooks-signature": "sha256="
                    + base64.b64encode(_hmac(EVENT)).decode()
                },
            ),
            Call("GET", query={"crc": CHALLENGE}),
            "invalid twitter signature: no x-twitter-webhooks-signature header of the form"
            " sha256=<base64>",
        ),
        "dropbox": Mode(
            {"mode": "dropbox", "secrets": [SECRET]},
            Call("GET", query={"challenge": CHALLENGE}),
            (200, "text/plain", CHALLENGE.encode()),
            Call(body=EVENT, headers={"X-Dropbox-Signature": _hmac(EVENT).hex()}),
            Call(
                body=EVENT, headers={"X-Dropbox-Signature": _hmac(EVENT, "forged-secret-0").hex()}
            ),
            "invalid dropbox signature: the X-Dropbox-Signature does not match",
        ),
        "okta": Mode(
            {"mode": "okta", "secrets": [SECRET], "header": "X-Okta-Secret"},
            Call("GET", headers={"X-Okta-Verification-Challenge": CHALLENGE}),
            (200, JSON, orjson.dumps({"verification": CHALLENGE})),
            Call(body=EVENT, headers={"X-Okta-Secret": SECRET}),
            Call(body=EVENT, headers={"X-Okta-Secret": "forged-secret"}),
            "invalid okta signature: the X-Okta-Secret header does not match",
        ),
        "twitch": Mode(
            {"mode": "twitch", "secrets": [SECRET]},
            Call(
                body=TWITCH_HANDSHAKE,
                headers=twitch_signed(TWITCH_HANDSHAKE, "webhook_callback_verification"),
            ),
            (200, "text/plain", CHALLENGE.encode()),
            Call(body=EVENT, headers=twitch_signed(EVENT, "notification")),
            Call(
                body=TWITCH_HANDSHAKE,
                headers=twitch_signed(
                    TWITCH_HANDSHAKE, "webhook_callback_verification", "forged-0"
                ),
            ),
            "invalid twitch signature: the Twitch-Eventsub-Message-Signature does not match",
        ),
        "discord": Mode(
            {"mode": "discord", "public_key": bytes(DISCORD_KEY.verify_key).hex()},
            Call(body=b'{"type": 1}', headers=discord_signed(b'{"type": 1}')),
            (200, JSON, b'{"type":1}'),
            Call(body=EVENT, headers=discord_signed(EVENT)),
            Call(
                body=b'{"type": 1}',
                headers=discord_signed(b'{"type": 1}', SigningKey(b"\x08" * 32)),
            ),
            "invalid discord signature: the X-Signature-Ed25519 does not match",
        ),
    }


MODES = sorted(signed_modes())


async def send(api: Api, flow_id: str, call: Call) -> tuple[int, Any, bytes]:
    return await api.send(
        flow_id,
        None,
        method=call.method,
        params=call.query,
        data=call.body if call.method != "GET" else None,
        headers={"Content-Type": JSON, **call.headers} if call.method != "GET" else call.headers,
    )


async def record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        return found if status == 200 else None

    return await eventually(stored)


@pytest.mark.parametrize("mode", MODES)
async def test_handshake_answered_recorded_and_events_run(api: Api, mode: str) -> None:
    spec = signed_modes()[mode]
    flow = await api.create_flow(
        {
            "name": f"handshake {mode}",
            "status": "live",
            "webhook": {"auth": spec.auth, "response": {"status_code": 200, "body": "ran"}},
            "steps": [],
        }
    )
    flow_id = flow["id"]

    # The handshake: answered by the ingress itself, exactly.
    status, headers, body = await send(api, flow_id, spec.handshake)
    expected_status, expected_type, expected_body = spec.answer
    assert (status, body) == (expected_status, expected_body), body
    assert headers["Content-Type"] == expected_type
    if mode == "dropbox":
        assert headers["X-Content-Type-Options"] == "nosniff"
    stored = await record(api, headers["X-Request-Id"])
    assert stored["outcome"] == "handshake"
    assert stored["steps"] == []  # the flow did not run
    assert stored["response"]["status_code"] == expected_status
    assert stored["response"]["body"] == expected_body.decode()
    assert stored["response"]["content_type"] == expected_type
    # Listed and counted as such.
    status, listed = await api.debugger(f"/v1/flows/{flow_id}/requests?outcome=handshake")
    assert status == 200 and [item["id"] for item in listed["items"]] == [stored["id"]]
    status, stats = await api.debugger(f"/v1/flows/{flow_id}/stats")
    assert status == 200 and stats["by_outcome"] == {"handshake": 1}

    # An event, signed as the provider signs it: the flow runs.
    status, headers, body = await send(api, flow_id, spec.event)
    assert (status, body) == (200, b"ran"), body
    assert (await record(api, headers["X-Request-Id"]))["outcome"] == "succeeded"

    # A forged handshake: 401, and nothing of it echoed.
    status, headers, body = await send(api, flow_id, spec.forged)
    assert (status, orjson.loads(body)) == (
        401,
        {"status": 401, "error": "unauthorized", "message": spec.refusal, "data": None},
    )
    assert CHALLENGE.encode() not in body


async def test_unsigned_signed_handshakes_are_refused(api: Api) -> None:
    """The handshakes the provider signs (slack, zoom, twitch, discord): without a
    signature 401, whatever the body asks to be echoed."""
    unsigned = {
        "slack": (SLACK_HANDSHAKE, {}, "a missing or malformed signature timestamp"),
        "twitch": (
            TWITCH_HANDSHAKE,
            {"Twitch-Eventsub-Message-Type": "webhook_callback_verification"},
            "no Twitch-Eventsub-Message-Id header",
        ),
        "discord": (b'{"type": 1}', {}, "a missing or malformed signature timestamp"),
    }
    for mode, (body, headers, reason) in unsigned.items():
        flow = await api.create_flow(
            {
                "name": f"unsigned {mode}",
                "status": "live",
                "webhook": {"auth": signed_modes()[mode].auth},
            }
        )
        status, _, answer = await send(api, flow["id"], Call(body=body, headers=headers))
        assert (status, orjson.loads(answer)["message"]) == (
            401,
            f"invalid {mode} signature: {reason}",
        )
        assert CHALLENGE.encode() not in answer


async def test_bad_handshake_input(api: Api) -> None:
    """Oversized challenges and malformed signature headers: 400/401 with a clear
    message; the refused handshake is recorded (`rejected`)."""
    dropbox = await api.create_flow(
        {
            "name": "dropbox bad",
            "status": "live",
            "webhook": {"auth": signed_modes()["dropbox"].auth},
        }
    )
    status, headers, body = await send(
        api, dropbox["id"], Call("GET", query={"challenge": "c" * 5000})
    )
    assert (status, orjson.loads(body)["message"]) == (
        400,
        "handshake: the challenge is longer than 4096 characters",
    )
    assert (await record(api, headers["X-Request-Id"]))["outcome"] == "rejected"
    discord = await api.create_flow(
        {
            "name": "discord bad",
            "status": "live",
            "webhook": {"auth": signed_modes()["discord"].auth},
        }
    )
    malformed = {"X-Signature-Ed25519": "zz" * 64, "X-Signature-Timestamp": str(int(time.time()))}
    status, _, body = await send(api, discord["id"], Call(body=b'{"type": 1}', headers=malformed))
    assert (status, orjson.loads(body)["message"]) == (
        401,
        "invalid discord signature: the X-Signature-Ed25519 header is not a 64-byte"
        " signature in hex",
    )
    # A twitch revocation, signed: 204, recorded as a handshake.
    twitch = await api.create_flow(
        {
            "name": "twitch revoked",
            "status": "live",
            "webhook": {"auth": signed_modes()["twitch"].auth},
        }
    )
    revoked = b'{"subscription": {"status": "authorization_revoked"}}'
    status, headers, body = await send(
        api, twitch["id"], Call(body=revoked, headers=twitch_signed(revoked, "revocation"))
    )
    assert (status, body) == (204, b"")
    assert (await record(api, headers["X-Request-Id"]))["outcome"] == "handshake"
    # The flow's GET shows hints only: the verify token too.
    meta = await api.create_flow(
        {"name": "meta hints", "status": "live", "webhook": {"auth": signed_modes()["meta"].auth}}
    )
    assert meta["webhook"]["auth"]["verify_token"] == "\u2026" + VERIFY_TOKEN[-4:]
    assert meta["webhook"]["auth"]["secrets"] == ["\u2026" + SECRET[-4:]]
