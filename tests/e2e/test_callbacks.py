"""Completion callbacks of async runs (contract, "Responses and timeouts":
`webhook.callback`): the result POSTed to the flow's URL, signed the Standard Webhooks
way (verified here by the receiver), retried through the broker's wait ladder under one
`webhook-id`, stopped by 410, given up after the deadline, every attempt visible in the
debugger; the URL under the outgoing-request rules; the secret never shown again.

The receiver is this test's own HTTP server on 127.0.0.5, the one network the runner's
callbacks may reach here. Retry waits are short (caps of 1.5 s, so a wait takes the
ladder's 1 s step or none) and the deadline is 8 s, so that giving up is seen."""

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest

from harness.client import Api, eventually
from harness.receiver import Call, Receiver, webhook_receiver
from harness.system import System, running_system
from shared import standard_webhooks

pytestmark = pytest.mark.e2e

RECEIVER_HOST = "127.0.0.5"
SECRETS_KEY = "e2e-webhook-secrets-key-callbacks-0123456789"
SECRET = "whsec_" + base64.b64encode(b"e2e-callback-secret-0123456789ab").decode()
HINT = "\u2026" + SECRET[-4:]
GIVE_UP_S = 8


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_WEBHOOK_SECRETS_KEY=SECRETS_KEY,
        FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS=f'["{RECEIVER_HOST}/32"]',
        FLOWHOOKS_RUNNER_CALLBACK_RETRY_DELAYS_S="[1.5]",
        FLOWHOOKS_RUNNER_CALLBACK_GIVE_UP_S=str(GIVE_UP_S),
        # These tests follow one callback's attempts through the ladder; the breaker
        # (which defers them once a receiver keeps failing) has its own tests
        # (test_isolation_outbound.py, tests/unit/test_delivery_guard.py).
        FLOWHOOKS_RUNNER_CALLBACK_BREAKER_FAILURES="1000",
    ) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver(RECEIVER_HOST) as running:
        yield running


async def callback_flow(api: Api, url: str) -> tuple[str, str]:
    """An async flow whose answer is `{"got": <input.n>}` with 201, its callback at `url`."""
    async with api.session.post(
        f"{api.system.url('runner')}/v1/flows",
        json={
            "name": "calling back",
            "status": "live",
            "webhook": {
                "ref_id": "web1",
                "async": True,
                "response": {
                    "status_code": 201,
                    "content_type": "application/json",
                    "body": '{"got": {{ web1.n }}}',
                },
                "callback": {"url": url, "secret": SECRET},
            },
            "steps": [],
        },
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        raw = await answer.read()
        assert answer.status == 201, raw
    # The secret is never shown again: its hint only.
    assert SECRET not in raw.decode() and SECRET[6:] not in raw.decode()
    flow = orjson.loads(raw)
    assert flow["webhook"]["callback"] == {"url": url, "secret": HINT}
    # The ingress refuses the new flow's token (401) until auth has applied it.
    await api.usable(flow["id"], flow["version"])
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send(api: Api, flow_id: str, token: str, n: int) -> str:
    status, headers, body = await api.send(flow_id, token, json={"n": n})
    assert status == 200, body
    assert orjson.loads(body)["message"] == "scheduled"
    return headers["X-Request-Id"]


async def calls_at(receiver: Receiver, path: str, count: int) -> list[Call]:
    async def enough() -> list[Call] | None:
        calls = receiver.calls.get(path, [])
        return list(calls) if len(calls) >= count else None

    return await eventually(enough, timeout_s=20)


async def callback_record(api: Api, request_id: str, state: str) -> dict[str, Any]:
    """The debugger's `callback` of the request, once it is in `state`."""

    async def in_state() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        callback = record.get("callback") if status == 200 else None
        return callback if callback is not None and callback["state"] == state else None

    found: dict[str, Any] = await eventually(in_state, timeout_s=25)
    return found


def verified(call: Call) -> dict[str, Any]:
    """The receiver's check: signature and timestamp (Standard Webhooks), then the JSON."""
    standard_webhooks.verify(SECRET, call.headers, call.body)
    assert call.headers["Content-Type"] == "application/json"
    payload: dict[str, Any] = orjson.loads(call.body)
    return payload


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def test_the_result_is_posted_signed_and_the_attempt_shown(
    api: Api, receiver: Receiver
) -> None:
    flow_id, token = await callback_flow(api, f"{receiver.base}/ok/one")
    request_id = await send(api, flow_id, token, 7)

    [call] = await calls_at(receiver, "/ok/one", 1)
    payload = verified(call)
    data = payload["data"]
    assert payload == {
        "type": "run.finished",
        "timestamp": data["finished_at"],
        "data": {
            "request_id": request_id,
            "flow_id": flow_id,
            "outcome": "succeeded",
            "status_code": 201,
            "content_type": "application/json",
            "headers": {},
            "body": '{"got": 7}',
            "error": None,
            "received_at": data["received_at"],
            "started_at": data["started_at"],
            "finished_at": data["finished_at"],
        },
    }
    assert call.headers["webhook-id"] == f"msg_{request_id}"
    assert call.headers["User-Agent"] == "flowhooks-callbacks"
    # A wrong secret does not verify: the signature is the secret's.
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(standard_webhooks.SignatureError):
        standard_webhooks.verify(other, call.headers, call.body)

    callback = await callback_record(api, request_id, "delivered")
    [attempt] = callback["attempts"]
    assert callback == {
        "webhook_id": f"msg_{request_id}",
        "state": "delivered",
        "attempts": [
            {
                "attempt": 1,
                "at": attempt["at"],
                "status_code": 200,
                "error": None,
                "next_attempt_at": None,
            }
        ],
    }
    await asyncio.sleep(1.0)
    assert len(receiver.calls["/ok/one"]) == 1  # delivered: nothing more


async def test_retried_after_two_500s_under_one_webhook_id(api: Api, receiver: Receiver) -> None:
    flow_id, token = await callback_flow(api, f"{receiver.base}/flaky/two")
    request_id = await send(api, flow_id, token, 2)

    calls = await calls_at(receiver, "/flaky/two", 3)
    assert [call.status for call in calls] == [500, 500, 200]
    assert {call.headers["webhook-id"] for call in calls} == {f"msg_{request_id}"}
    bodies = {call.body for call in calls}
    assert len(bodies) == 1  # the same payload every time, each signed afresh
    for call in calls:
        verified(call)

    callback = await callback_record(api, request_id, "delivered")
    attempts = callback["attempts"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (1, 500, "the receiver answered 500"),
        (2, 500, "the receiver answered 500"),
        (3, 200, None),
    ]
    assert attempts[2]["next_attempt_at"] is None
    for before, after in itertools.pairwise(attempts):
        planned = parse(before["next_attempt_at"])
        waited = (planned - parse(before["at"])).total_seconds()
        assert 0 <= waited < 1.5 + 0.5  # full jitter under the 1.5 s cap (+ the attempt)
        # Not before the plan, and within the ladder's precision (1 s) after it.
        assert -1.0 <= (parse(after["at"]) - planned).total_seconds() < 3.0


async def test_410_gone_stops_the_retries(api: Api, receiver: Receiver) -> None:
    flow_id, token = await callback_flow(api, f"{receiver.base}/gone/three")
    request_id = await send(api, flow_id, token, 3)

    callback = await callback_record(api, request_id, "failed")
    [attempt] = callback["attempts"]
    assert (attempt["attempt"], attempt["status_code"], attempt["next_attempt_at"]) == (
        1,
        410,
        None,
    )
    assert attempt["error"] == "the receiver answered 410 Gone: delivery stopped"
    await asyncio.sleep(2.0)
    assert len(receiver.calls["/gone/three"]) == 1


async def test_given_up_after_the_deadline_and_recorded(api: Api, receiver: Receiver) -> None:
    flow_id, token = await callback_flow(api, f"{receiver.base}/down/four")
    request_id = await send(api, flow_id, token, 4)

    callback = await callback_record(api, request_id, "failed")
    attempts = callback["attempts"]
    assert len(attempts) >= 2
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(a["status_code"] == 500 for a in attempts)
    assert all(a["next_attempt_at"] is not None for a in attempts[:-1])
    last = attempts[-1]
    assert last["next_attempt_at"] is None
    assert last["error"] == f"the receiver answered 500; gave up: no attempt after {GIVE_UP_S} s"
    span = (parse(last["at"]) - parse(attempts[0]["at"])).total_seconds()
    assert span <= GIVE_UP_S + 1
    await asyncio.sleep(2.0)
    calls = receiver.calls["/down/four"]
    assert len(calls) == len(attempts)
    assert {call.headers["webhook-id"] for call in calls} == {f"msg_{request_id}"}


async def save(api: Api, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with api.session.request(
        method,
        f"{api.system.url('runner')}{path}",
        json=body,
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        return answer.status, orjson.loads(await answer.read())


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/hook", "10.1.2.3 is 10.1.2.3"),
        ("http://127.0.0.1:9/hook", "127.0.0.1 is 127.0.0.1"),
        ("http://169.254.169.254/latest", "169.254.169.254 is 169.254.169.254"),
        ("http://localhost:9/hook", "localhost is "),
    ],
)
async def test_a_private_address_is_refused_on_save(api: Api, url: str, why: str) -> None:
    flow = {
        "name": "private",
        "webhook": {"async": True, "callback": {"url": url, "secret": SECRET}},
    }
    status, body = await save(api, "POST", "/v1/flows", flow)
    assert status == 400
    assert body["error"] == "bad_request" and body["status"] == 400
    assert body["data"] == {"field": "webhook.callback.url"}
    assert body["message"].startswith(f"webhook.callback.url: {why}"), body["message"]
    assert body["message"].endswith(
        "a private, loopback, link-local or reserved address; the operator has not allowed it"
    )


async def test_the_secret_is_a_hint_everywhere_and_kept_when_saved_back(
    api: Api, receiver: Receiver
) -> None:
    flow_id, token = await callback_flow(api, f"{receiver.base}/ok/five")
    status, shown = await save(api, "PATCH", f"/v1/flows/{flow_id}", {"name": "renamed"})
    assert status == 200 and shown["webhook"]["callback"]["secret"] == HINT
    # Saved back as read (the hint): the secret is kept and still signs.
    status, shown = await save(
        api, "PUT", f"/v1/flows/{flow_id}", {k: shown[k] for k in ("name", "status", "webhook")}
    )
    assert status == 200, shown
    async with api.session.get(
        f"{api.system.url('runner')}/v1/flows", headers={"Authorization": f"Bearer {api.token}"}
    ) as answer:
        listed = await answer.text()
    assert SECRET not in listed and HINT in listed
    # A hint this flow does not hold is refused.
    status, body = await save(
        api,
        "PATCH",
        f"/v1/flows/{flow_id}",
        {
            "webhook": {
                **shown["webhook"],
                "callback": {"url": receiver.base, "secret": "\u2026zzzz"},
            }
        },
    )
    assert status == 400 and body["data"] == {"field": "webhook.callback.secret"}

    request_id = await send(api, flow_id, token, 5)
    [call] = await calls_at(receiver, "/ok/five", 1)
    assert verified(call)["data"]["request_id"] == request_id
