"""Provider-default dedup keys (issue 22) against the real services: a flow in a
provider mode that sets no `webhook.dedup` deduplicates on the provider's delivery id;
`"dedup": null` turns that off, is kept on save and shown by GET."""

import hashlib
import hmac
import time
import uuid
from typing import Any

import orjson
import pytest

from harness.client import Api, eventually

# The shared system has a key for webhook secrets (tests/e2e/conftest.py).
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

GITHUB_SECRET = "github-dedup-secret-a1b2"
STRIPE_SECRET = "whsec_stripe-dedup-secret-c3d4"
# The first request's own id in its answer: a replayed answer shows the first's.
RESPONSE = {"status_code": 201, "body": '{"request": "{{ request.id }}", "n": {{ web1.n }}}'}


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    signature = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": f"sha256={signature}",
    }


def stripe_headers(body: bytes) -> dict[str, str]:
    now = int(time.time())
    signed = hmac.new(STRIPE_SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "Stripe-Signature": f"t={now},v1={signed.hexdigest()}",
    }


def github_flow(**webhook: Any) -> dict[str, Any]:
    return {
        "name": "github, provider dedup",
        "status": "live",
        "webhook": {
            "auth": {"mode": "github", "secrets": [GITHUB_SECRET]},
            "response": RESPONSE,
            **webhook,
        },
        "steps": [],
    }


async def push(api: Api, flow_id: str, n: int, delivery: str) -> tuple[int, Any, Any]:
    body = orjson.dumps({"n": n})
    status, headers, answer = await api.send(
        flow_id, None, data=body, headers=github_headers(body, delivery)
    )
    return status, headers, orjson.loads(answer)


async def get_flow(api: Api, flow_id: str) -> dict[str, Any]:
    async with api.session.get(
        f"{api.system.url('runner')}/v1/flows/{flow_id}",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 200
        return dict(await answer.json())


async def record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        return dict(found) if status == 200 else None

    return await eventually(stored, timeout_s=20)


async def test_github_redelivery_is_a_duplicate_by_default(api: Api) -> None:
    flow = await api.create_flow(github_flow())
    assert "dedup" not in flow["webhook"]
    delivery = str(uuid.uuid4())

    status, headers, first = await push(api, flow["id"], 1, delivery)
    first_id = headers["X-Request-Id"]
    assert (status, first) == (201, {"request": first_id, "n": 1})
    assert "Idempotent-Replayed" not in headers
    # GitHub's "Redeliver": the same X-GitHub-Delivery (here with another body, to
    # show that the first's answer is what comes back).
    status, headers, second = await push(api, flow["id"], 2, delivery)
    assert (status, second) == (201, {"request": first_id, "n": 1})
    assert headers["Idempotent-Replayed"] == "true"
    assert headers["Content-Type"] == "application/json"
    stored = await record(api, headers["X-Request-Id"])
    assert (stored["outcome"], stored["duplicate_of"]) == ("duplicate", first_id)
    assert stored["input"] == {"n": 2}
    # Another delivery runs.
    status, headers, third = await push(api, flow["id"], 3, str(uuid.uuid4()))
    assert (status, third) == (201, {"request": headers["X-Request-Id"], "n": 3})
    # A delivery without the header has no key: it runs normally.
    body = b'{"n": 4}'
    no_id = {k: v for k, v in github_headers(body, "x").items() if k != "X-GitHub-Delivery"}
    for _ in range(2):
        status, headers, answer = await api.send(flow["id"], None, data=body, headers=no_id)
        assert (status, orjson.loads(answer)) == (201, {"request": headers["X-Request-Id"], "n": 4})


async def test_dedup_null_turns_the_default_off_and_get_shows_it(api: Api) -> None:
    flow = await api.create_flow(github_flow(dedup=None))
    assert "dedup" in flow["webhook"] and flow["webhook"]["dedup"] is None
    assert (await get_flow(api, flow["id"]))["webhook"]["dedup"] is None
    delivery = str(uuid.uuid4())
    answers = [await push(api, flow["id"], n, delivery) for n in (1, 2)]
    for (status, headers, answer), n in zip(answers, (1, 2), strict=True):
        assert (status, answer) == (201, {"request": headers["X-Request-Id"], "n": n})
        assert "Idempotent-Replayed" not in headers
    assert answers[0][1]["X-Request-Id"] != answers[1][1]["X-Request-Id"]

    # A change that does not name `dedup` keeps the null (PATCH merges into what is
    # stored).
    patched = await api.patch_flow(flow["id"], {"webhook": {"timeout_s": 20}})
    assert patched["webhook"]["dedup"] is None
    status, headers, answer = await push(api, flow["id"], 3, delivery)
    assert (status, answer) == (201, {"request": headers["X-Request-Id"], "n": 3})

    # Saved again without `dedup`: the default is back.
    async with api.session.put(
        f"{api.system.url('runner')}/v1/flows/{flow['id']}",
        json=github_flow(),
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        saved = await answer.json()
        assert answer.status == 200, saved
    assert "dedup" not in saved["webhook"]
    await api.usable(flow["id"], saved["version"])
    again = str(uuid.uuid4())
    status, headers, first = await push(api, flow["id"], 5, again)
    first_id = headers["X-Request-Id"]
    assert (status, first) == (201, {"request": first_id, "n": 5})
    status, headers, second = await push(api, flow["id"], 6, again)
    assert (status, second, headers["Idempotent-Replayed"]) == (
        201,
        {"request": first_id, "n": 5},
        "true",
    )


async def test_a_flows_own_dedup_wins_over_the_default(api: Api) -> None:
    flow = await api.create_flow(github_flow(dedup={"key": "json:/n"}))
    # The same delivery id with another `n` is no duplicate of it...
    delivery = str(uuid.uuid4())
    status, headers, answer = await push(api, flow["id"], 1, delivery)
    first_id = headers["X-Request-Id"]
    status, headers, answer = await push(api, flow["id"], 2, delivery)
    assert (status, answer) == (201, {"request": headers["X-Request-Id"], "n": 2})
    # ...and another delivery with the same `n` is.
    status, headers, answer = await push(api, flow["id"], 1, str(uuid.uuid4()))
    assert (status, answer) == (201, {"request": first_id, "n": 1})
    assert headers["Idempotent-Replayed"] == "true"


async def test_async_stripe_event_retried_gets_the_first_id(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "stripe, provider dedup",
            "status": "live",
            "webhook": {"auth": {"mode": "stripe", "secrets": [STRIPE_SECRET]}, "async": True},
            "steps": [],
        }
    )
    event = orjson.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "invoice.paid"})
    answers = []
    for _ in range(2):  # Stripe retries an event under its same `id` (json:/id)
        status, _, answer = await api.send(
            flow["id"], None, data=event, headers=stripe_headers(event)
        )
        answers.append((status, orjson.loads(answer)))
    first_id = answers[0][1]["data"]["request_id"]
    scheduled = {
        "status": 200,
        "error": None,
        "message": "scheduled",
        "data": {"request_id": first_id},
    }
    assert answers == [(200, scheduled), (200, scheduled)]


async def test_a_combined_key_tells_events_of_one_instant_apart(api: Api) -> None:
    """The key Zoom's default uses (`json:/event + json:/event_ts`), set by hand."""
    flow = await api.create_flow(
        {
            "name": "combined key",
            "status": "live",
            "webhook": {
                "response": {"status_code": 200, "body": "{{ request.id }}"},
                "dedup": {"key": "json:/event + json:/event_ts"},
            },
            "steps": [],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    started = {"event": "meeting.started", "event_ts": 1626230691572}

    async def send(event: dict[str, Any]) -> tuple[str, str]:
        status, headers, answer = await api.send(flow["id"], token, json=event)
        assert status == 200
        return answer.decode(), headers.get("Idempotent-Replayed", "")

    first, replayed = await send(started)
    assert replayed == ""
    assert await send({**started, "payload": {"retry": 1}}) == (first, "true")
    ended, replayed = await send({**started, "event": "meeting.ended"})
    assert (ended != first, replayed) == (True, "")
    # Without one of its parts a request has no key: it runs.
    alone, replayed = await send({"event": "meeting.started"})
    assert (alone not in (first, ended), replayed) == (True, "")
