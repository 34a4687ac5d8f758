"""auth in-process against the real RabbitMQ and PostgreSQL: the token API, the flow
access copy fed by `flow.changed`, and the decision order of `authorize_webhook`."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cli.tokens import create_token
from services.auth.app import SERVICE
from services.auth.settings import AuthSettings
from shared.bearer import hash_token
from shared.errors import Unauthorized
from shared.messaging.connection import Broker
from shared.messaging.contracts import AUTHORIZE_WEBHOOK, FLOW_CHANGED, IDENTIFY_TOKEN
from shared.messaging.rpc import RpcClient
from shared.schemas.access import (
    AuthorizeWebhook,
    FlowChanged,
    FlowWebhookSettings,
    IdentifyToken,
    TokenIdentity,
    TokenKeyState,
    TokenRingState,
    WebhookAccess,
)

pytestmark = pytest.mark.integration


class Peer:
    """What another service sees of auth: its RPCs and its events."""

    def __init__(self, broker: Broker, rpc: RpcClient) -> None:
        self.broker = broker
        self.rpc = rpc

    async def authorize(self, flow_id: str, bearer: str) -> WebhookAccess:
        return await self.rpc.call(
            AUTHORIZE_WEBHOOK, AuthorizeWebhook(flow_id=flow_id, bearer_hash=hash_token(bearer))
        )

    async def identify(self, bearer: str) -> TokenIdentity:
        return await self.rpc.call(IDENTIFY_TOKEN, IdentifyToken(bearer_hash=hash_token(bearer)))

    async def publish_flow(
        self,
        flow_id: str,
        workspace_id: str,
        version: int,
        flow_token: str,
        status: str = "live",
        deleted: bool = False,
    ) -> None:
        settings = FlowWebhookSettings(
            flow_id=flow_id,
            workspace_id=workspace_id,
            version=version,
            status=status,  # type: ignore[arg-type]
        )
        await self.broker.publish_event(
            FLOW_CHANGED,
            FlowChanged(
                flow_id=flow_id,
                workspace_id=workspace_id,
                version=version,
                token_hash=hash_token(flow_token),
                settings=settings,
                deleted=deleted,
            ),
        )


@pytest.fixture
async def auth(amqp_url: str, database_url: str) -> AsyncIterator[TestClient]:
    settings = AuthSettings(amqp_url=amqp_url, database_url=database_url)
    async with TestClient(TestServer(SERVICE.create_app(settings))) as client:
        yield client


@pytest.fixture
async def peer(amqp_url: str) -> AsyncIterator[Peer]:
    broker = Broker(amqp_url, "test-peer")
    await broker.connect()
    rpc = RpcClient(broker, default_timeout_s=5)
    await rpc.start()
    yield Peer(broker, rpc)
    await broker.close()


async def _workspace_id(database_url: str, name: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SELECT id FROM auth.workspaces WHERE name = $1", name))
    finally:
        await conn.close()


async def test_token_api_create_list_revoke(
    auth: TestClient, peer: Peer, database_url: str
) -> None:
    _, admin = await create_token(database_url, "acme", ["automation"], "admin", None)
    headers = {"Authorization": f"Bearer {admin}"}

    answer = await auth.post(
        "/v1/access-tokens",
        headers=headers,
        json={"name": "ci", "scopes": ["automation.webhook_run"]},
    )
    assert answer.status == 201
    created = await answer.json()
    secret = created["token"]
    assert secret.startswith("fhp_") and len(secret) >= 50
    assert created["scopes"] == ["automation.webhook_run"]
    assert created["prefix"] == secret[:10]

    # Stored as a hash only.
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchrow(
            "SELECT * FROM auth.access_tokens WHERE id = $1", uuid.UUID(created["id"])
        )
    finally:
        await conn.close()
    assert stored["token_hash"] == hash_token(secret)
    assert secret not in str(dict(stored))

    listing = await (await auth.get("/v1/access-tokens", headers=headers)).json()
    assert [t["name"] for t in listing["items"]] == ["admin", "ci"]
    assert all("token" not in t for t in listing["items"])

    identity = await peer.identify(secret)
    assert identity.scopes == ["automation.webhook_run"]

    answer = await auth.delete(f"/v1/access-tokens/{created['id']}", headers=headers)
    assert answer.status == 204
    with pytest.raises(Unauthorized):
        await peer.identify(secret)


async def test_token_api_refusals(auth: TestClient, database_url: str) -> None:
    _, runner_only = await create_token(database_url, "acme", ["automation.webhook_run"], "r", None)
    _, manager = await create_token(database_url, "acme", ["automation.manage"], "m", None)
    _, other = await create_token(database_url, "globex", ["automation"], "o", None)

    answer = await auth.get("/v1/access-tokens")
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await answer.json())["error"] == "unauthorized"

    answer = await auth.get("/v1/access-tokens", headers={"Authorization": f"Bearer {runner_only}"})
    assert answer.status == 403

    # No escalation: automation.manage cannot mint automation.
    answer = await auth.post(
        "/v1/access-tokens",
        headers={"Authorization": f"Bearer {manager}"},
        json={"name": "x", "scopes": ["automation"]},
    )
    assert answer.status == 403

    answer = await auth.post(
        "/v1/access-tokens",
        headers={"Authorization": f"Bearer {manager}"},
        json={"name": "x", "scopes": ["root"]},
    )
    assert answer.status == 400
    assert (await answer.json())["data"] == {"field": "scopes"}

    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    answer = await auth.post(
        "/v1/access-tokens",
        headers={"Authorization": f"Bearer {manager}"},
        json={"name": "x", "scopes": ["automation.manage"], "expires_at": past},
    )
    assert answer.status == 400

    # Another workspace's token cannot be revoked (404, not 403: nothing revealed).
    listing = await (
        await auth.get("/v1/access-tokens", headers={"Authorization": f"Bearer {manager}"})
    ).json()
    answer = await auth.delete(
        f"/v1/access-tokens/{listing['items'][0]['id']}",
        headers={"Authorization": f"Bearer {other}"},
    )
    assert answer.status == 404


async def test_authorize_webhook_decisions(auth: TestClient, peer: Peer, database_url: str) -> None:
    _, acme_admin = await create_token(database_url, "acme", ["automation"], "a", None)
    _, acme_runner = await create_token(database_url, "acme", ["automation.webhook_run"], "r", None)
    _, acme_other_scope = await create_token(database_url, "acme", ["automation.manage"], "m", None)
    _, globex = await create_token(database_url, "globex", ["automation"], "g", None)
    acme_id = await _workspace_id(database_url, "acme")
    flow_id = str(uuid.uuid4())
    flow_token = "fhw_" + "x" * 60
    await peer.publish_flow(flow_id, acme_id, 1, flow_token)

    async def applied() -> WebhookAccess:
        for _ in range(100):
            access = await peer.authorize(flow_id, flow_token)
            if access.decision == "allowed":
                return access
            await asyncio.sleep(0.05)
        raise AssertionError("flow.changed was not applied")

    access = await applied()
    assert access.flow is not None and access.flow.workspace_id == acme_id

    assert (await peer.authorize(flow_id, acme_admin)).decision == "allowed"
    assert (await peer.authorize(flow_id, acme_runner)).decision == "allowed"
    assert (await peer.authorize(flow_id, acme_other_scope)).decision == "allowed"
    assert (await peer.authorize(flow_id, "nonsense")).decision == "unauthorized"
    assert (await peer.authorize(flow_id, globex)).decision == "not_found"
    assert (await peer.authorize("not-a-uuid", acme_admin)).decision == "not_found"
    # The token is judged before the flow: an unknown bearer on an unknown flow is 401.
    assert (await peer.authorize(str(uuid.uuid4()), "nonsense")).decision == "unauthorized"

    # An older version arriving late does not undo a newer one (rotation to token2).
    await peer.publish_flow(flow_id, acme_id, 3, "fhw_token2" + "y" * 50, status="paused")
    await peer.publish_flow(flow_id, acme_id, 2, flow_token)
    for _ in range(100):
        rotated = await peer.authorize(flow_id, "fhw_token2" + "y" * 50)
        if rotated.decision == "allowed":
            break
        await asyncio.sleep(0.05)
    assert rotated.flow is not None and rotated.flow.status == "paused"
    await asyncio.sleep(0.3)  # give the stale version 2 every chance to be (wrongly) applied
    assert (await peer.authorize(flow_id, flow_token)).decision == "unauthorized"

    await peer.publish_flow(flow_id, acme_id, 4, flow_token, deleted=True)
    for _ in range(100):
        if (await peer.authorize(flow_id, acme_admin)).decision == "not_found":
            break
        await asyncio.sleep(0.05)
    assert (await peer.authorize(flow_id, acme_admin)).decision == "not_found"
    assert (await peer.authorize(flow_id, flow_token)).decision == "unauthorized"


async def test_token_without_webhook_scope_is_forbidden(
    auth: TestClient, peer: Peer, database_url: str
) -> None:
    _, token = await create_token(database_url, "acme", ["automation.webhook_run"], "r", None)
    conn = await asyncpg.connect(database_url)
    try:
        # A scope set with no webhook scope (as a future scope would be).
        await conn.execute("UPDATE auth.access_tokens SET scopes = '{reports.read}'")
    finally:
        await conn.close()
    assert (await peer.authorize(str(uuid.uuid4()), token)).decision == "forbidden"


async def test_key_ring_rules(auth: TestClient, peer: Peer, database_url: str) -> None:
    """Hashes per key id, merged for the same version and replaced by a newer one; the
    ring of the highest generation decides which key ids count, and until when."""
    _, personal = await create_token(database_url, "acme", ["automation"], "a", None)
    workspace_id = await _workspace_id(database_url, "acme")
    flow_id = str(uuid.uuid4())
    soon = datetime.now(UTC) + timedelta(hours=1)

    async def publish(version: int, tokens: dict[str, str], ring: TokenRingState) -> None:
        settings = FlowWebhookSettings(
            flow_id=flow_id, workspace_id=workspace_id, version=version, status="live"
        )
        change = FlowChanged(
            flow_id=flow_id,
            workspace_id=workspace_id,
            version=version,
            token_hash=hash_token(next(iter(tokens.values()))),
            token_hashes={key: hash_token(token) for key, token in tokens.items()},
            ring=ring,
            settings=settings,
        )
        await peer.broker.publish_event(FLOW_CHANGED, change)

    async def settles(expected: dict[str, WebhookAccess]) -> None:
        deadline = time.monotonic() + 5
        while True:
            seen = {token: await peer.authorize(flow_id, token) for token in expected}
            if all(
                (seen[t].decision, seen[t].expires_at) == (e.decision, e.expires_at)
                for t, e in expected.items()
            ):
                return
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)

    def ring(generation: int, *keys: tuple[str, datetime | None]) -> TokenRingState:
        return TokenRingState(
            generation=generation,
            keys=[TokenKeyState(key_id=key, not_after=until) for key, until in keys],
        )

    allowed = WebhookAccess(decision="allowed")
    refused = WebhookAccess(decision="unauthorized")
    until_soon = WebhookAccess(decision="allowed", expires_at=soon)

    await publish(1, {"k1": "fhw_a1"}, ring(1, ("k1", None)))
    await settles({"fhw_a1": allowed, "fhw_b1": refused})
    # A runner with a new current key republishes the same version: both keys count,
    # the previous one until its end time (which bounds the ingress's cache too).
    await publish(1, {"k2": "fhw_b1", "k1": "fhw_a1"}, ring(2, ("k2", None), ("k1", soon)))
    await settles({"fhw_a1": until_soon, "fhw_b1": allowed})
    # An older ring (a runner not yet restarted) changes nothing.
    await publish(1, {"k1": "fhw_a1"}, ring(1, ("k1", None)))
    # Key k1 dropped: its token is refused although its hash is still stored.
    await publish(1, {"k2": "fhw_b1"}, ring(3, ("k2", None)))
    await settles({"fhw_a1": refused, "fhw_b1": allowed})
    # A new version (rotation) replaces the hashes.
    await publish(2, {"k2": "fhw_b2"}, ring(3, ("k2", None)))
    await settles({"fhw_b1": refused, "fhw_b2": allowed, personal: allowed})
