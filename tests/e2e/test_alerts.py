"""Failure alerts (contract, "Debugger additions"): a signed notice (Standard Webhooks) to
the flow's alert URL when its failure rate crosses the threshold and when its runs are
dead-lettered, once per window, retried; the URL under the outgoing-request rules; the
API behind the manage scopes and the workspace. The receiver is this test's own HTTP
server on 127.0.0.3, the one network the debugger is allowed to reach here."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import orjson
import pytest

from harness.client import Api, eventually, ok_or_failing_flow
from harness.receiver import Receiver, webhook_receiver
from harness.system import System, running_system
from shared import standard_webhooks

pytestmark = pytest.mark.e2e

RECEIVER_HOST = "127.0.0.3"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_DEBUGGER_ALERT_ALLOW_NETWORKS=f'["{RECEIVER_HOST}/32"]',
        FLOWHOOKS_DEBUGGER_ALERT_EVAL_INTERVAL_S="0.2",
        FLOWHOOKS_DEBUGGER_ALERT_POLL_INTERVAL_S="0.1",
        FLOWHOOKS_DEBUGGER_ALERT_RETRY_DELAY_S="0.3",
    ) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver(RECEIVER_HOST) as running:
        yield running


async def alert_call(
    api: Api, method: str, flow_id: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    async with api.session.request(
        method,
        f"{api.system.url('debugger')}/v1/flows/{flow_id}/alert",
        json=body,
        headers={"Authorization": f"Bearer {token or api.token}"},
    ) as answer:
        raw = await answer.read()
        return answer.status, orjson.loads(raw) if raw else None


async def send_outcomes(api: Api, flow_id: str, token: str, *oks: bool) -> None:
    for ok in oks:
        status, _, _ = await api.send(flow_id, token, json={"ok": ok})
        assert status == (200 if ok else 500)


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The notice's payload, after the receiver's check of its signature."""
    standard_webhooks.verify(secret, headers, body)
    assert headers["Content-Type"] == "application/json"
    payload: dict[str, Any] = orjson.loads(body)
    return payload


async def test_failure_rate_alert_fires_once_per_window_signed(
    api: Api, receiver: Receiver
) -> None:
    flow_id, token = await ok_or_failing_flow(api, "alerting")
    config = {
        "url": f"{receiver.base}/ok/rate",
        "failure_rate": 0.5,
        "window_s": 600,
        "min_requests": 4,
    }
    status, alert = await alert_call(api, "PUT", flow_id, config)
    assert status == 201, alert
    secret = alert["secret"]
    assert secret.startswith("whsec_") and len(standard_webhooks.secret_key(secret)) == 32
    assert alert == {
        "flow_id": flow_id,
        **config,
        "secret": secret,
        "secret_hint": secret[:10] + "...",
        "created_at": alert["created_at"],
        "updated_at": alert["updated_at"],
        "last_fired_at": {"failure_rate": None, "dead_lettered": None},
        "notices": [],
    }

    # A rate of 1.0, but under min_requests: nothing; then 3 of 4: still under.
    await send_outcomes(api, flow_id, token, False, False, True)
    await asyncio.sleep(1.0)
    assert receiver.calls == {}
    # 2 failed of 4 finished: 0.5 crosses 0.5.
    await send_outcomes(api, flow_id, token, True)

    async def one_notice() -> list[tuple[dict[str, str], bytes]] | None:
        return receiver.delivered("/ok/rate") or None

    [(headers, body)] = await eventually(one_notice)
    payload = verified(secret, headers, body)
    assert payload == {
        "type": "flow.failure_rate",
        "timestamp": payload["timestamp"],
        "data": {
            "flow_id": flow_id,
            "failure_rate": 0.5,
            "threshold": 0.5,
            "window_s": 600,
            "min_requests": 4,
            "finished": 4,
            "failed": 2,
        },
    }
    assert headers["webhook-id"].startswith("msg_")

    # Still failing, within the window: no second notice.
    await send_outcomes(api, flow_id, token, False, False, False, False)
    await asyncio.sleep(1.5)
    assert len(receiver.calls["/ok/rate"]) == 1

    status, shown = await alert_call(api, "GET", flow_id)
    assert status == 200
    assert "secret" not in shown and shown["secret_hint"] == secret[:10] + "..."
    assert shown["last_fired_at"]["failure_rate"] is not None
    assert shown["last_fired_at"]["dead_lettered"] is None
    [notice] = shown["notices"]
    assert notice == {
        "id": headers["webhook-id"],
        "type": "flow.failure_rate",
        "created_at": notice["created_at"],
        "attempts": 1,
        "delivered_at": notice["delivered_at"],
        "given_up_at": None,
        "next_attempt_at": None,
        "last_status": 200,
        "last_error": None,
    }
    assert notice["delivered_at"] is not None


async def test_notice_is_retried_after_two_500s_under_one_id(api: Api, receiver: Receiver) -> None:
    flow_id, token = await ok_or_failing_flow(api, "alerting")
    config = {
        "url": f"{receiver.base}/flaky/retry",
        "failure_rate": 1.0,
        "window_s": 600,
        "min_requests": 1,
    }
    status, alert = await alert_call(api, "PUT", flow_id, config)
    assert status == 201, alert
    await send_outcomes(api, flow_id, token, False)

    async def three_attempts() -> list[tuple[dict[str, str], bytes, int]] | None:
        calls = receiver.calls.get("/flaky/retry", [])
        return calls if len(calls) >= 3 else None

    calls = await eventually(three_attempts)
    assert [status for _, _, status in calls] == [500, 500, 200]
    # The same notice each time (one id, one body), each attempt signed.
    assert len({headers["webhook-id"] for headers, _, _ in calls}) == 1
    assert len({body for _, body, _ in calls}) == 1
    for headers, body, _ in calls:
        assert verified(alert["secret"], headers, body)["type"] == "flow.failure_rate"

    async def recorded() -> dict[str, Any] | None:
        _, shown = await alert_call(api, "GET", flow_id)
        notice: dict[str, Any] = shown["notices"][0]
        return notice if notice["delivered_at"] else None

    notice = await eventually(recorded)
    assert (notice["attempts"], notice["last_status"], notice["last_error"]) == (3, 200, None)
    await asyncio.sleep(0.5)
    assert len(receiver.calls["/flaky/retry"]) == 3  # delivered: never sent again


async def test_private_addresses_are_refused_on_save(api: Api, receiver: Receiver) -> None:
    flow_id, _ = await ok_or_failing_flow(api, "alerting")
    config = {"failure_rate": 0.2, "window_s": 300, "min_requests": 20}
    refused = "a private, loopback, link-local or reserved address; the operator has not allowed it"
    for url, address in [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is 127.0.0.1"),
        ("http://10.1.2.3/hook", "10.1.2.3 is 10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is 169.254.169.254"),
        ("http://[::ffff:127.0.0.1]:9/hook", "::ffff:7f00:1 is 127.0.0.1"),
    ]:
        status, body = await alert_call(api, "PUT", flow_id, {**config, "url": url})
        assert (status, body) == (
            400,
            {
                "status": 400,
                "error": "bad_request",
                "message": f"url: {address}, {refused}",
                "data": {"field": "url"},
            },
        ), url
    # A name is resolved and its addresses checked.
    status, body = await alert_call(api, "PUT", flow_id, {**config, "url": "http://localhost:9/"})
    assert status == 400
    assert body["message"].startswith("url: localhost is ") and body["message"].endswith(refused)
    status, body = await alert_call(api, "PUT", flow_id, {**config, "url": "ftp://example.com/x"})
    assert (status, body["message"]) == (
        400,
        "url: only http and https URLs are allowed, not ftp://example.com/x",
    )
    # Nothing was saved; the allowed network is accepted.
    status, body = await alert_call(api, "GET", flow_id)
    assert (status, body["message"]) == (404, "this flow has no alert")
    status, body = await alert_call(api, "PUT", flow_id, {**config, "url": receiver.base + "/ok/x"})
    assert status == 201, body


async def test_validation_update_rotation_and_delete(api: Api, receiver: Receiver) -> None:
    flow_id, _ = await ok_or_failing_flow(api, "alerting")
    config = {
        "url": receiver.base + "/ok/v",
        "failure_rate": 0.2,
        "window_s": 300,
        "min_requests": 20,
    }
    for change, message in [
        ({"failure_rate": 0}, "failure_rate: Input should be greater than 0"),
        ({"failure_rate": 1.5}, "failure_rate: Input should be less than or equal to 1"),
        ({"window_s": 5}, "window_s: Input should be greater than or equal to 10"),
        ({"min_requests": 0}, "min_requests: Input should be greater than or equal to 1"),
    ]:
        status, body = await alert_call(api, "PUT", flow_id, {**config, **change})
        field_name = next(iter(change))
        assert (status, body) == (
            400,
            {
                "status": 400,
                "error": "bad_request",
                "message": message,
                "data": {"field": field_name},
            },
        )
    async with api.session.put(
        f"{api.system.url('debugger')}/v1/flows/{flow_id}/alert",
        data=b"{not json",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 400
        assert (await answer.json())["message"].startswith("the body is not valid JSON")

    status, created = await alert_call(api, "PUT", flow_id, config)
    assert status == 201
    # An update keeps the secret and does not show it.
    status, updated = await alert_call(api, "PUT", flow_id, {**config, "failure_rate": 0.3})
    assert status == 200
    assert "secret" not in updated
    assert (updated["failure_rate"], updated["secret_hint"]) == (0.3, created["secret_hint"])
    # A rotation shows the new one, once.
    status, rotated = await alert_call(api, "PUT", flow_id, {**config, "rotate_secret": True})
    assert status == 200
    assert rotated["secret"] != created["secret"] and rotated["secret"].startswith("whsec_")
    # A secret of the caller's own is taken and never echoed.
    own = standard_webhooks.new_secret(24)
    status, taken = await alert_call(api, "PUT", flow_id, {**config, "secret": own})
    assert status == 200 and "secret" not in taken and taken["secret_hint"] == own[:10] + "..."

    status, body = await alert_call(api, "DELETE", flow_id)
    assert (status, body) == (204, None)
    status, body = await alert_call(api, "GET", flow_id)
    assert (status, body) == (
        404,
        {"status": 404, "error": "not_found", "message": "this flow has no alert", "data": None},
    )
    status, body = await alert_call(api, "DELETE", flow_id)
    assert (status, body["message"]) == (404, "this flow has no alert")


async def test_scopes_and_workspaces(api: Api, receiver: Receiver) -> None:
    flow_id, _ = await ok_or_failing_flow(api, "alerting")
    config = {
        "url": receiver.base + "/ok/s",
        "failure_rate": 0.2,
        "window_s": 300,
        "min_requests": 20,
    }
    system = api.system
    forbidden = {
        "status": 403,
        "error": "forbidden",
        "message": "this token needs one of the scopes automation, automation.manage",
        "data": None,
    }
    not_found = {"status": 404, "error": "not_found", "message": "no such flow", "data": None}
    sender_only = system.create_token("acme", "automation.webhook_run")
    reader = system.create_token("acme", "debugger.read")
    other = system.create_token("globex", "automation")
    for method, body in [("PUT", config), ("GET", None), ("DELETE", None)]:
        for token in (sender_only, reader):
            assert await alert_call(api, method, flow_id, body, token) == (403, forbidden), method
        assert await alert_call(api, method, flow_id, body, other) == (404, not_found), method
        assert await alert_call(api, method, "not-a-uuid", body) == (404, not_found), method
        async with api.session.request(
            method, f"{system.url('debugger')}/v1/flows/{flow_id}/alert", json=body
        ) as answer:
            assert answer.status == 401
            assert (await answer.json())["error"] == "unauthorized"
    # Another workspace cannot see or touch an existing alert either.
    status, _ = await alert_call(api, "PUT", flow_id, config)
    assert status == 201
    assert await alert_call(api, "GET", flow_id, None, other) == (404, not_found)
    assert await alert_call(api, "DELETE", flow_id, None, other) == (404, not_found)
    status, _ = await alert_call(api, "GET", flow_id)
    assert status == 200


async def test_dead_lettered_runs_trigger_a_notice(api: Api, receiver: Receiver) -> None:
    """A run no runner completes (here: a consumer that always gives it back, as a runner
    crashing on it would) is dead-lettered by the broker after the queue's delivery
    limit; the debugger records it and tells the alert URL."""
    system = api.system
    flow_id, token = await ok_or_failing_flow(api, "alerting", mode_async=True)
    # The rate alone never crosses here (min_requests): only the dead letter notifies.
    config = {
        "url": receiver.base + "/ok/dead",
        "failure_rate": 1.0,
        "window_s": 600,
        "min_requests": 1000,
    }
    status, alert = await alert_call(api, "PUT", flow_id, config)
    assert status == 201, alert
    for runner in list(system.processes["runner"]):
        system.stop(runner)
    try:
        status, headers, _ = await api.send(flow_id, token, json={"ok": True})
        assert status == 200
        request_id = headers["X-Request-Id"]
        connection = await aio_pika.connect(system.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue("flowhooks.runner.async-runs", ensure=False)
            for _ in range(20):
                message = await queue.get(no_ack=False, fail=False, timeout=5)
                if message is None:
                    break
                await message.nack(requeue=True)

        async def one_notice() -> list[tuple[dict[str, str], bytes]] | None:
            return receiver.delivered("/ok/dead") or None

        [(notice_headers, body)] = await eventually(one_notice, timeout_s=15)
        payload = verified(alert["secret"], notice_headers, body)
        assert payload == {
            "type": "flow.dead_lettered",
            "timestamp": payload["timestamp"],
            "data": {
                "flow_id": flow_id,
                "window_s": 600,
                "dead_lettered": 1,
                "request_ids": [request_id],
            },
        }
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        assert (status, record["outcome"]) == (200, "failed")
        await asyncio.sleep(1.0)
        assert len(receiver.calls["/ok/dead"]) == 1
    finally:
        system.start("runner")
