"""Signed webhooks end to end (issue 12): every verification mode against the four
services, the raw body byte for byte in the debugger, secrets shown as hints only,
and templated response headers. Requests refused by their signature are recorded,
within each flow's budget of records (issue 22)."""

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import stripe
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

SECRETS_KEY = "e2e-webhook-secrets-key-0123456789abcdef"
STANDARD_OLD = "whsec_" + base64.b64encode(b"old-standard-key-0123456789abcd").decode()
STANDARD_NEW = "whsec_" + base64.b64encode(b"new-standard-key-0123456789abcd").decode()
OLD, NEW = {}, {}
for mode in ("stripe", "github", "shopify", "slack", "hmac"):
    OLD[mode], NEW[mode] = f"{mode}-old-secret-a1b2", f"{mode}-new-secret-c3d4"
OLD["standard-webhooks"], NEW["standard-webhooks"] = STANDARD_OLD, STANDARD_NEW
TIMESTAMPED = {"stripe", "slack", "standard-webhooks", "hmac"}
HMAC_FIELDS = {
    "header": "X-Acme-Signature",
    "algorithm": "sha512",
    "encoding": "base64",
    "prefix": "v9=",
    "timestamp_header": "X-Acme-Time",
    "content": "{timestamp}|{body}",
}
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="flowhooks"'}


# Failed checks of large bodies a flow may have: 10 at once, then one each 5 s (slow, so
# that the budget cannot refill between two steps of a test on a busy machine).
BAD_SIGNATURE_BURST, BAD_SIGNATURE_RATE_PER_S = 10, 0.2
# Refused requests a flow may have recorded: 5 at once, then one each 5 s (likewise slow).
REFUSED_RECORDS_BURST, REFUSED_RECORDS_PER_S = 5, 0.2
# Appended to the record's error of a request refused on its headers alone
# (services/ingress/refusals.py).
BODY_NOT_READ = " (refused on its headers: the body was not read)"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_WEBHOOK_SECRETS_KEY=SECRETS_KEY,
        FLOWHOOKS_INGRESS_BAD_SIGNATURE_RATE_PER_S=str(BAD_SIGNATURE_RATE_PER_S),
        FLOWHOOKS_INGRESS_REFUSED_RECORDS_PER_S=str(REFUSED_RECORDS_PER_S),
        FLOWHOOKS_INGRESS_REFUSED_RECORDS_BURST=str(REFUSED_RECORDS_BURST),
    ) as running:
        yield running


def _hmac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def sign(mode: str, secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers each provider sends, computed with its documented algorithm."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    key = secret.encode()
    if mode == "stripe":
        return {"Stripe-Signature": f"t={ts},v1={_hmac(key, f'{ts}.'.encode() + body).hex()}"}
    if mode == "github":
        return {"X-Hub-Signature-256": "sha256=" + _hmac(key, body).hex()}
    if mode == "shopify":
        return {"X-Shopify-Hmac-Sha256": base64.b64encode(_hmac(key, body)).decode()}
    if mode == "slack":
        signature = _hmac(key, f"v0:{ts}:".encode() + body).hex()
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={signature}"}
    if mode == "standard-webhooks":
        raw_key = base64.b64decode(secret.removeprefix("whsec_"))
        signature = base64.b64encode(_hmac(raw_key, f"msg_1.{ts}.".encode() + body)).decode()
        return {
            "webhook-id": "msg_1",
            "webhook-timestamp": ts,
            "webhook-signature": f"v1,{signature}",
        }
    assert mode == "hmac"
    signature = base64.b64encode(_hmac(key, f"{ts}|".encode() + body, "sha512")).decode()
    return {"X-Acme-Signature": f"v9={signature}", "X-Acme-Time": ts}


def signed_flow(mode: str, *secrets: str, **webhook: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {"mode": mode, "secrets": list(secrets)}
    if mode == "hmac":
        auth.update(HMAC_FIELDS)
    return {
        "name": f"signed {mode}",
        "status": "live",
        "webhook": {
            "auth": auth,
            "response": {"status_code": 200, "body": '{"n": {{ web1.n }}}'},
            **webhook,
        },
        "steps": [],
    }


def envelope(status: int, error: str, message: str, data: Any = None) -> dict[str, Any]:
    return {"status": status, "error": error, "message": message, "data": data}


async def send_signed(
    api: Api, flow_id: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, bytes]:
    return await api.send(
        flow_id, None, data=body, headers={"Content-Type": "application/json", **headers}
    )


MISMATCH = {
    "stripe": "the Stripe-Signature does not match",
    "github": "the X-Hub-Signature-256 does not match",
    "shopify": "the X-Shopify-Hmac-Sha256 does not match",
    "slack": "the X-Slack-Signature does not match",
    "standard-webhooks": "the webhook-signature does not match",
    "hmac": "the X-Acme-Signature signature does not match",
}


@pytest.mark.parametrize("mode", sorted(MISMATCH))
async def test_signing_mode(api: Api, mode: str) -> None:
    flow = await api.create_flow(signed_flow(mode, OLD[mode]))
    flow_id = flow["id"]
    body = b'{"n": 7}'

    # Good signature: the flow runs.
    status, headers, answer = await send_signed(api, flow_id, body, sign(mode, OLD[mode], body))
    assert (status, answer) == (200, b'{"n": 7}'), answer
    assert headers["Content-Type"] == "application/json"

    def refused(reason: str) -> dict[str, Any]:
        return envelope(401, "unauthorized", f"invalid {mode} signature: {reason}")

    # Wrong secret.
    status, headers, answer = await send_signed(api, flow_id, body, sign(mode, NEW[mode], body))
    assert (status, orjson.loads(answer)) == (401, refused(MISMATCH[mode]))
    assert headers["WWW-Authenticate"] == UNAUTHORIZED_HEADERS["WWW-Authenticate"]
    # Tampered body (signed, then changed on the way).
    status, _, answer = await send_signed(api, flow_id, b'{"n": 8}', sign(mode, OLD[mode], body))
    assert (status, orjson.loads(answer)) == (401, refused(MISMATCH[mode]))
    # Stale timestamp (default tolerance 300 s).
    if mode in TIMESTAMPED:
        stale = sign(mode, OLD[mode], body, int(time.time()) - 301)
        status, _, answer = await send_signed(api, flow_id, body, stale)
        assert (status, orjson.loads(answer)) == (
            401,
            refused("a signature timestamp more than 300 s away from now"),
        )
    # No signature, no bearer.
    status, _, answer = await send_signed(api, flow_id, body, {})
    assert status == 401 and orjson.loads(answer)["error"] == "unauthorized"

    # Rotation: the held secret by its hint, and a second one.
    hint = flow["webhook"]["auth"]["secrets"]
    assert hint == ["\u2026" + OLD[mode][-4:]]
    rotated = await api.patch_flow(
        flow_id, {"webhook": {"auth": {**flow["webhook"]["auth"], "secrets": [*hint, NEW[mode]]}}}
    )
    assert rotated["webhook"]["auth"]["secrets"] == [*hint, "\u2026" + NEW[mode][-4:]]

    async def new_secret_accepted() -> bool | None:
        status, _, _ = await send_signed(api, flow_id, body, sign(mode, NEW[mode], body))
        return True if status == 200 else None

    await eventually(new_secret_accepted)
    status, _, answer = await send_signed(api, flow_id, body, sign(mode, OLD[mode], body))
    assert (status, answer) == (200, b'{"n": 7}')

    # The flow's bearer token is still accepted (bearer rules for callers that send one).
    token = (await api.webhook_info(flow_id))["token"]
    status, _, answer = await api.send(flow_id, token, json={"n": 9})
    assert (status, answer) == (200, b'{"n": 9}')


async def test_signed_by_the_providers_sdks(api: Api) -> None:
    """Headers made by the providers' own SDKs, over HTTP: `standardwebhooks` (as Svix
    and others sign) and `stripe`'s helper for signing test events."""
    body = b'{"n": 21}'
    now = datetime.now(UTC)
    standard = await api.create_flow(signed_flow("standard-webhooks", STANDARD_OLD))
    sdk_headers = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(STANDARD_OLD).sign(
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now, body
        ),
    }
    status, _, answer = await send_signed(api, standard["id"], body, sdk_headers)
    assert (status, answer) == (200, b'{"n": 21}')
    signed_by_stripe = await api.create_flow(signed_flow("stripe", OLD["stripe"]))
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), OLD["stripe"])
    status, _, answer = await send_signed(
        api, signed_by_stripe["id"], body, {"Stripe-Signature": header}
    )
    assert (status, answer) == (200, b'{"n": 21}')
    # Signed by the SDK with another secret: refused like any mismatch.
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), NEW["stripe"])
    status, _, answer = await send_signed(
        api, signed_by_stripe["id"], body, {"Stripe-Signature": header}
    )
    assert (status, orjson.loads(answer)["message"]) == (
        401,
        "invalid stripe signature: the Stripe-Signature does not match",
    )


async def test_get_shows_hints_only(api: Api) -> None:
    secret = "github-secret-that-never-shows-XYZW"
    flow = await api.create_flow(signed_flow("github", secret))
    assert flow["webhook"]["auth"] == {
        "mode": "github",
        "secrets": ["\u2026XYZW"],
        "tolerance_s": 300,
        "header": None,
        "algorithm": "sha256",
        "encoding": "hex",
        "prefix": "",
        "timestamp_header": None,
        "content": None,
    }
    for path in (f"/v1/flows/{flow['id']}", "/v1/flows", f"/v1/flows/{flow['id']}/webhook"):
        async with api.session.get(
            f"{api.system.url('runner')}{path}", headers={"Authorization": f"Bearer {api.token}"}
        ) as answer:
            text = await answer.text()
            assert answer.status == 200
            assert secret not in text and "fhs1." not in text and "sealed" not in text
    # A hint the flow does not hold is refused, naming the field.
    async with api.session.put(
        f"{api.system.url('runner')}/v1/flows/{flow['id']}",
        json=signed_flow("github", "\u2026NOPE"),
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 400
        assert await answer.json() == envelope(
            400,
            "bad_request",
            "webhook.auth.secrets[0]: '\u2026NOPE' names no secret this flow holds (or two of"
            " them); send the secret itself",
            {"field": "webhook.auth.secrets[0]"},
        )


async def test_unknown_flow_and_paused_flow_without_bearer(api: Api) -> None:
    body = b"{}"
    status, _, answer = await send_signed(
        api, "00000000-0000-0000-0000-000000000000", body, sign("github", OLD["github"], body)
    )
    assert (status, orjson.loads(answer)) == (
        401,
        envelope(
            401,
            "unauthorized",
            "missing Authorization header; send 'Authorization: Bearer <token>'",
        ),
    )
    flow = await api.create_flow(signed_flow("github", OLD["github"]))
    await api.patch_flow(flow["id"], {"status": "paused"})
    # The signature is judged before the flow's status shows.
    status, _, _ = await send_signed(api, flow["id"], body, sign("github", NEW["github"], body))
    assert status == 401

    async def paused_answer() -> tuple[int, Any] | None:
        # Auth has applied the pause (patch_flow waits for it); the ingress's cached
        # answer is evicted by auth's event a moment later: within the contract's 1 s.
        status, _, answer = await send_signed(
            api, flow["id"], body, sign("github", OLD["github"], body)
        )
        error = orjson.loads(answer)["error"]
        return (status, error) if error == "biz_logic" else None

    assert await eventually(paused_answer, timeout_s=1.0) == (200, "biz_logic")


async def test_non_utf8_body_verified_and_stored_byte_for_byte(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "binary upload",
            "status": "live",
            "webhook": {
                "auth": {"mode": "standard-webhooks", "secrets": [STANDARD_OLD]},
                "response": {"status_code": 200, "body": "{{ web1.file.data_base64 }}"},
            },
            "steps": [],
        }
    )
    payload = b"\xff\xfe\x00\x01 not UTF-8 \x80"
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n--b0undary--\r\n"
    )
    headers = {
        "Content-Type": "multipart/form-data; boundary=b0undary",
        **sign("standard-webhooks", STANDARD_OLD, body),
    }
    status, answer_headers, answer = await api.send(flow["id"], None, data=body, headers=headers)
    assert (status, answer) == (200, base64.b64encode(payload))
    request_id = answer_headers["X-Request-Id"]

    async def stored() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    record = await eventually(stored)
    assert record["raw_body_encoding"] == "base64"
    assert base64.b64decode(record["raw_body"]) == body
    # The signature headers are kept (an audit can check the signature again).
    assert record["headers"]["webhook-signature"] == headers["webhook-signature"]
    assert record["replay_of"] is None

    # A replay goes to the runner without the ingress: nothing is verified again, the
    # same bytes run, and it is marked as a replay.
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/requests/{request_id}/replay",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as replied:
        replay = await replied.json()
        assert replied.status == 200, replay
    assert (replay["replay_of"], replay["outcome"]) == (request_id, "succeeded")
    assert replay["response"]["body"] == base64.b64encode(payload).decode()

    async def replay_stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{replay['request_id']}")
        return found if status == 200 else None

    replayed = await eventually(replay_stored)
    assert replayed["replay_of"] == request_id
    assert replayed["raw_body_encoding"] == "base64"
    assert base64.b64decode(replayed["raw_body"]) == body


async def test_utf8_raw_body_reaches_the_flow_unchanged(api: Api) -> None:
    flow = await api.create_flow(
        signed_flow(
            "shopify",
            OLD["shopify"],
            response={
                "status_code": 200,
                "body": "{{ request.raw_body }}",
                "content_type": "text/plain",
            },
        )
    )
    body = '{"name": "Zoë", "emoji": "✓"}'.encode()
    status, _, answer = await send_signed(
        api, flow["id"], body, sign("shopify", OLD["shopify"], body)
    )
    assert (status, answer) == (200, body)


def headers_flow(**response: Any) -> dict[str, Any]:
    return {
        "name": "response headers",
        "status": "live",
        "webhook": {"response": {"status_code": 200, "body": "ok", **response}},
        "steps": [],
    }


async def test_templated_response_headers_and_redirect(api: Api) -> None:
    flow = await api.create_flow(
        headers_flow(headers={"X-Order-Id": "order-{{ web1.id }}", "Cache-Control": "no-store"})
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, headers, answer = await api.send(flow["id"], token, json={"id": 42})
    assert (status, answer) == (200, b"ok")
    assert headers["X-Order-Id"] == "order-42"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("text/plain")
    assert len(headers["X-Request-Id"]) > 0

    redirect = await api.create_flow(
        headers_flow(
            status_code=303,
            body="",
            headers={"Location": "https://example.com/thanks/{{ web1.id }}"},
        )
    )
    token = (await api.webhook_info(redirect["id"]))["token"]
    status, headers, _ = await api.send(
        redirect["id"], token, json={"id": 7}, allow_redirects=False
    )
    assert (status, headers["Location"]) == (303, "https://example.com/thanks/7")

    # A rendered line break would split the answer: the run fails instead.
    broken = await api.create_flow(headers_flow(headers={"X-Echo": "{{ web1.text }}"}))
    token = (await api.webhook_info(broken["id"]))["token"]
    status, _, answer = await api.send(broken["id"], token, json={"text": "a\r\nSet-Cookie: x=1"})
    assert (status, orjson.loads(answer)) == (
        500,
        envelope(
            500,
            "flow_error",
            "the webhook response failed: webhook.response.headers.X-Echo rendered to a line"
            " break or control character",
        ),
    )


@pytest.mark.parametrize(
    "name",
    [
        "Set-Cookie",
        "Connection",
        "Transfer-Encoding",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authenticate",
        "Content-Length",
        "X-Request-Id",
    ],
)
async def test_refused_response_headers(api: Api, name: str) -> None:
    async with api.session.post(
        f"{api.system.url('runner')}/v1/flows",
        json=headers_flow(headers={name: "x"}),
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 400
        field = f"webhook.response.headers.{name}"
        assert await answer.json() == envelope(
            400,
            "bad_request",
            f"{field}: the header {name} cannot be set by a flow (hop-by-hop, a cookie, or set"
            " by the ingress itself)",
            {"field": field},
        )


async def test_large_signed_body_checked_off_the_event_loop(api: Api) -> None:
    # Over FLOWHOOKS_INGRESS_PARSE_INLINE_MAX_BYTES (64 KiB): hashed on a worker thread.
    flow = await api.create_flow(signed_flow("github", OLD["github"], NEW["github"]))
    body = b'{"n": 5, "pad": "' + b"x" * 300_000 + b'"}'
    status, _, answer = await send_signed(
        api, flow["id"], body, sign("github", NEW["github"], body)
    )
    assert (status, answer) == (200, b'{"n": 5}')
    status, _, answer = await send_signed(
        api, flow["id"], body + b" ", sign("github", NEW["github"], body)
    )
    assert (status, orjson.loads(answer)["message"]) == (
        401,
        "invalid github signature: the X-Hub-Signature-256 does not match",
    )


@pytest.mark.parametrize("timestamp", ["\u00b9\u00b2\u00b3", "\u0661\u0662\u0663"])
async def test_non_ascii_digit_timestamps_are_refused_with_401(api: Api, timestamp: str) -> None:
    """Superscript or Arabic-Indic digits passed `str.isdigit` and made `int()` raise: an
    unauthenticated 500 with a traceback. Now a malformed timestamp like any other."""
    body = b'{"n": 1}'
    refused = "a missing or malformed signature timestamp"
    for mode, headers in (
        ("stripe", {"Stripe-Signature": f"t={timestamp},v1={'00' * 32}"}),
        ("slack", {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": "v0=00"}),
    ):
        flow = await api.create_flow(signed_flow(mode, OLD[mode]))
        status, answer_headers, answer = await send_signed(api, flow["id"], body, headers)
        assert (status, orjson.loads(answer)) == (
            401,
            envelope(401, "unauthorized", f"invalid {mode} signature: {refused}"),
        )
        assert answer_headers["WWW-Authenticate"] == UNAUTHORIZED_HEADERS["WWW-Authenticate"]


async def headers_only(
    api: Api, flow_id: str, headers: dict[str, str], length: int = 10 * 1024 * 1024
) -> tuple[str, dict[str, str]]:
    """Announces a body of `length` bytes, sends none of it, and reads the answer: one
    that comes was given without reading the body (the ingress waits up to 30 s for a
    body it reads)."""
    host, port = api.system.url("ingress").removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [
        f"POST /v1/flow-webhook/{flow_id} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        status = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
        answer_headers = {}
        while (line := (await asyncio.wait_for(reader.readline(), 10)).decode().strip()) != "":
            name, _, value = line.partition(":")
            answer_headers[name.strip().lower()] = value.strip()
    finally:
        writer.close()
    return status, answer_headers


async def test_bad_signature_flood_is_refused_before_the_body_is_read(api: Api) -> None:
    """Forged large bodies spend the flow's budget of failed checks; past it a large body
    gets 429 with Retry-After before a byte of it is read. The real sender's small
    deliveries still go through (and small forgeries are still checked: 401)."""
    flow = await api.create_flow(signed_flow("github", OLD["github"]))
    flow_id = flow["id"]
    large = b'{"n": 3, "pad": "' + b"x" * 200_000 + b'"}'  # over 64 KiB
    forged = {"X-Hub-Signature-256": "sha256=" + "00" * 32}
    started, read = time.monotonic(), 0
    for _ in range(40):
        status, headers, answer = await send_signed(api, flow_id, large, forged)
        if status != 401:
            break
        read += 1
    assert (status, orjson.loads(answer)["error"]) == (429, "rate_limited")
    assert "failed signature verification" in orjson.loads(answer)["message"]
    assert int(headers["Retry-After"]) >= 1
    refills = int((time.monotonic() - started) * BAD_SIGNATURE_RATE_PER_S) + 1
    assert BAD_SIGNATURE_BURST <= read <= BAD_SIGNATURE_BURST + refills
    # Spent: a 10 MB forged body is answered without being read.
    status_line, answer_headers = await headers_only(api, flow_id, forged)
    assert status_line == "HTTP/1.1 429 Too Many Requests"
    assert int(answer_headers["retry-after"]) >= 1
    # So is one whose headers alone show it is not signed (any time, budget or not).
    status_line, _ = await headers_only(api, flow_id, {})
    assert status_line == "HTTP/1.1 401 Unauthorized"
    # Small bodies are still read and checked.
    small = b'{"n": 4}'
    status, _, answer = await send_signed(api, flow_id, small, sign("github", OLD["github"], small))
    assert (status, answer) == (200, b'{"n": 4}')
    status, _, answer = await send_signed(api, flow_id, small, forged)
    assert (status, orjson.loads(answer)["error"]) == (401, "unauthorized")
    # Another flow's budget is its own.
    other = await api.create_flow(signed_flow("github", OLD["github"]))
    signature = sign("github", OLD["github"], large)
    status, _, answer = await send_signed(api, other["id"], large, signature)
    assert (status, answer) == (200, b'{"n": 3}')


async def stored_record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return dict(record) if status == 200 else None

    return await eventually(stored)


async def test_refused_signatures_are_recorded(api: Api) -> None:
    """A forged delivery is answered 401 and recorded as `rejected` with the 401 it was
    answered and its body; one refused on its headers alone with an empty body, marked
    as not read (a large one too: it was never read)."""
    flow = await api.create_flow(signed_flow("github", OLD["github"]))
    flow_id = flow["id"]
    body = b'{"n": 11}'
    message = "invalid github signature: the X-Hub-Signature-256 does not match"
    status, headers, answer = await send_signed(
        api, flow_id, body, sign("github", NEW["github"], body)
    )
    assert (status, orjson.loads(answer)) == (401, envelope(401, "unauthorized", message))
    record = await stored_record(api, headers["X-Request-Id"])
    assert (record["outcome"], record["error"], record["raw_body"]) == (
        "rejected",
        message,
        body.decode(),
    )
    assert record["response"]["status_code"] == 401
    assert orjson.loads(record["response"]["body"]) == envelope(401, "unauthorized", message)
    assert record["input"] is None and record["steps"] == []  # never parsed nor run
    assert (
        record["headers"]["x-hub-signature-256"]
        == sign("github", NEW["github"], body)["X-Hub-Signature-256"]
    )

    # No signature header: refused before the body is read.
    missing = "invalid github signature: no X-Hub-Signature-256 header of the form sha256=<hex>"
    status, headers, answer = await send_signed(api, flow_id, body, {})
    assert (status, orjson.loads(answer)) == (401, envelope(401, "unauthorized", missing))
    record = await stored_record(api, headers["X-Request-Id"])
    assert (record["outcome"], record["error"], record["raw_body"]) == (
        "rejected",
        missing + BODY_NOT_READ,
        "",
    )
    assert record["response"]["status_code"] == 401
    assert orjson.loads(record["response"]["body"]) == envelope(401, "unauthorized", missing)

    # A 10 MB body announced and never sent: answered, and recorded, without it.
    status_line, answer_headers = await headers_only(api, flow_id, {})
    assert status_line == "HTTP/1.1 401 Unauthorized"
    record = await stored_record(api, answer_headers["x-request-id"])
    assert (record["outcome"], record["error"], record["raw_body"]) == (
        "rejected",
        missing + BODY_NOT_READ,
        "",
    )

    # A paused flow's requests are never stored, refused ones neither.
    await api.patch_flow(flow_id, {"status": "paused"})
    status, headers, _ = await send_signed(api, flow_id, body, {})
    assert status == 401
    paused_id = headers["X-Request-Id"]
    await api.patch_flow(flow_id, {"status": "live"})
    status, headers, _ = await send_signed(api, flow_id, body, {})
    assert status == 401
    await stored_record(api, headers["X-Request-Id"])  # recorded after the paused one would be
    status, _ = await api.debugger(f"/v1/requests/{paused_id}")
    assert status == 404


async def ingress_refusal_records(api: Api) -> dict[str, float]:
    """`flowhooks_webhook_refusal_records_total` by result, summed over the ingresses."""
    counts = {"recorded": 0.0, "skipped": 0.0}
    async with aiohttp.ClientSession() as session:
        for process in api.system.processes["ingress"]:
            async with session.get(f"{process.ops_url}/metrics") as answer:
                assert answer.status == 200
                text = await answer.text()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "flowhooks_webhook_refusal_records_total":
                        counts[sample.labels["result"]] += sample.value
    return counts


async def test_refused_signature_records_are_bounded(api: Api) -> None:
    """A flood of forgeries is refused each time, but the flow has at most its burst
    (and what refilled meanwhile) recorded; the rest is only counted."""
    flow = await api.create_flow(signed_flow("github", OLD["github"]))
    flow_id = flow["id"]
    body = b'{"n": 12}'
    forged = {"X-Hub-Signature-256": "sha256=" + "00" * 32}
    before = await ingress_refusal_records(api)
    started, sent = time.monotonic(), 30
    answers = await asyncio.gather(*(send_signed(api, flow_id, body, forged) for _ in range(sent)))
    assert [status for status, _, _ in answers] == [401] * sent
    refills = int((time.monotonic() - started) * REFUSED_RECORDS_PER_S) + 1
    after = await ingress_refusal_records(api)
    recorded = int(after["recorded"] - before["recorded"])
    assert REFUSED_RECORDS_BURST <= recorded <= REFUSED_RECORDS_BURST + refills
    assert after["skipped"] - before["skipped"] == sent - recorded

    async def stored_count() -> int | None:
        status, stats = await api.debugger(f"/v1/flows/{flow_id}/stats")
        assert status == 200
        count = int(stats["by_outcome"].get("rejected", 0))
        return count if count >= recorded else None

    assert await eventually(stored_count) == recorded
    # Nothing more arrives later (the rest was never published).
    await asyncio.sleep(1.0)
    status, listed = await api.debugger(f"/v1/flows/{flow_id}/requests?limit=500")
    assert status == 200
    assert [item["outcome"] for item in listed["items"]] == ["rejected"] * recorded
    assert {item["status_code"] for item in listed["items"]} == {401}
