"""The four services, each connected as its own least-privilege broker user
(`flowhooks broker-setup`): everything the system does still works, which proves the
permissions (shared/messaging/permissions.py) cover what the services really do."""

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from harness.client import Api, eventually
from harness.infra import SERVERS, fresh_database, fresh_vhost
from harness.system import System
from services.registry import NAMES as SERVICES
from shared.messaging import broker_setup

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with fresh_vhost() as guest_url, fresh_database() as database_url:
        vhost = guest_url.rsplit("/", 1)[1]
        names = broker_setup.user_names(f"fhtest-{vhost[-10:]}-")
        passwords = {service: secrets.token_urlsafe(16) for service in SERVICES}
        running = System(guest_url, database_url)
        try:
            asyncio.run(broker_setup.apply(broker_setup.Rabbitmqctl(), vhost, names, passwords))
            # All four at once, the ingress first (the runner is given its URL).
            launched = [
                running.launch(
                    name,
                    FLOWHOOKS_AMQP_URL=(
                        f"amqp://{names[name]}:{passwords[name]}@127.0.0.1:5672/{vhost}"
                    ),
                    FLOWHOOKS_TRUSTED_RUNNER_USER=names["runner"],
                )
                for name in ("ingress", "auth", "runner", "debugger")
            ]
            running.wait_all_ready(launched, timeout_s=60)
            yield running
        finally:
            logs = running.logs()
            codes = running.stop_all()
            SERVERS.broker_users.give_back(*names.values())  # in the background
            assert "ACCESS_REFUSED" not in logs, logs
            assert "forged_event_dropped" not in logs, logs
            bad = {name: code for name, code in codes.items() if code != 0}
            assert not bad, f"services did not stop cleanly: {bad}\n{logs}"


async def test_sync_and_async_webhooks_and_the_debugger(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "users",
            "status": "live",
            "webhook": {"ref_id": "web1", "response": {"status_code": 200, "body": "ok"}},
            "steps": [],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, _, body = await api.send(flow["id"], token, json={"n": 1})
    assert (status, body) == (200, b"ok")
    status, _, _ = await api.send(flow["id"], "wrong-token", json={"n": 1})
    assert status == 401

    async_flow = await api.create_flow(
        {
            "name": "later",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [],
        }
    )
    async_token = (await api.webhook_info(async_flow["id"]))["token"]
    status, _, _ = await api.send(async_flow["id"], async_token, json={"n": 2})
    assert status == 200

    async def recorded(flow_id: str) -> list[dict[str, object]] | None:
        status, page = await api.debugger(f"/v1/flows/{flow_id}/requests")
        items = page.get("items", []) if status == 200 else []
        return items if items and items[0]["outcome"] == "succeeded" else None

    stored = await eventually(lambda: recorded(flow["id"]))
    await eventually(lambda: recorded(async_flow["id"]))

    # A replay: the debugger's own call to the runner.
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/requests/{stored[0]['id']}/replay",
        headers=api._auth(),
    ) as answer:
        assert answer.status == 200, await answer.text()
