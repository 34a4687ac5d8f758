"""`runner.learn_webhook_secret` over the real RabbitMQ and PostgreSQL: the runner's
handler served as the runner serves it, called as the ingress calls it. An asana flow
learns the secret of its first handshake only while it holds none: of many concurrent
handshakes exactly one wins (one conditional update), the flow's version goes up once
and `flow.changed` carries the new secret, sealed; the others are told `held`."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.ingress.learned_secrets import SecretLearner
from services.runner.access import FlowAccess
from services.runner.app import DATABASE
from services.runner.learned_secrets import SecretLearning
from services.runner.store import FlowRow, FlowStore
from services.runner.token_keys import TokenKey, TokenKeyRing
from shared.db import open_pool
from shared.errors import BadRequest, NotFound, Unauthorized, Unavailable
from shared.messaging import encoding, naming
from shared.messaging.connection import Broker
from shared.messaging.contracts import LEARN_WEBHOOK_SECRET
from shared.messaging.rpc import RpcClient, RpcServer
from shared.schemas.access import FlowChanged, FlowWebhookSettings, SigningSettings
from shared.schemas.learned_secrets import LearnWebhookSecret
from shared.secret_box import SecretBox

pytestmark = pytest.mark.integration

BOX = SecretBox("integration-webhook-secrets-key-0123456789")
WORKSPACE = str(uuid.uuid4())


@dataclass
class Runner:
    """The runner's side (store, access, the served RPC) and an ingress's client."""

    store: FlowStore
    ingress: SecretLearner
    rpc: RpcClient
    changes: list[FlowChanged]

    async def flow(self, auth: dict[str, Any], workspace_id: str = WORKSPACE) -> FlowRow:
        async with self.store.pool.acquire() as conn:
            return await self.store.insert(
                conn,
                workspace_id,
                "asana",
                "live",
                {"webhook": {"ref_id": "web1", "auth": auth}, "steps": []},
                "nonce",
                "k",
            )

    async def changed(self, count: int) -> list[FlowChanged]:
        for _ in range(200):
            if len(self.changes) >= count:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # and no more than that
        return list(self.changes)


def settings(flow: FlowRow) -> FlowWebhookSettings:
    """The flow as the ingress has it from auth (unarmed)."""
    return FlowWebhookSettings(
        flow_id=flow.id,
        workspace_id=flow.workspace_id,
        version=flow.version,
        status="live",
        signing=SigningSettings(mode="asana", secrets=[]),
    )


@pytest.fixture
async def runner(amqp_url: str, database_url: str) -> AsyncIterator[Runner]:
    pool = await open_pool(database_url, 20, DATABASE.schema, DATABASE.migrations)
    server_broker = Broker(amqp_url, "runner")
    client_broker = Broker(amqp_url, "ingress")
    await server_broker.connect()
    await client_broker.connect()
    try:
        store = FlowStore(pool)
        access = await FlowAccess.open(store, server_broker, TokenKeyRing((TokenKey.of("k"),)))
        server = RpcServer(server_broker)
        server.register(LEARN_WEBHOOK_SECRET, SecretLearning(store, access, BOX).learn)
        await server_broker.consume(LEARN_WEBHOOK_SECRET.queue, server.on_call, prefetch=50)
        changes: list[FlowChanged] = []

        async def on_change(message: AbstractIncomingMessage) -> None:
            changes.append(FlowChanged.model_validate_json(encoding.body(message)))

        await client_broker.consume(
            f"test-flow-changes-{client_broker.instance}",
            on_change,
            prefetch=100,
            no_ack=True,
            bindings=(naming.FLOW_CHANGED,),
        )
        rpc = RpcClient(client_broker, default_timeout_s=5)
        await rpc.start()
        yield Runner(store, SecretLearner(rpc, BOX), rpc, changes)
    finally:
        await client_broker.close()
        await server_broker.close()
        await pool.close()


async def test_of_concurrent_handshakes_exactly_one_arms_the_flow(runner: Runner) -> None:
    flow = await runner.flow({"mode": "asana", "secrets": []})
    secrets = [f"asana-handshake-secret-{n:04d}" for n in range(12)]
    outcomes = await asyncio.gather(
        *(runner.ingress.learn(settings(flow), secret) for secret in secrets),
        return_exceptions=True,
    )
    won = [secret for secret, outcome in zip(secrets, outcomes, strict=True) if outcome == 2]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Unauthorized)]
    assert len(won) == 1 and len(refused) == 11, outcomes
    assert "this flow already holds a secret" in refused[0].message
    stored = await runner.store.get(flow.id)
    assert stored is not None and stored.version == 2
    (held,) = stored.definition["webhook"]["auth"]["secrets"]
    # Sealed again by the runner (its ring's current key), hinted like any secret.
    assert BOX.open(held["sealed"], WORKSPACE) == won[0]
    assert held["hint"] == "\u2026" + won[0][-4:]
    assert stored.public()["webhook"]["auth"]["secrets"] == [held["hint"]]
    # One flow.changed, for the new version, carrying the secret sealed, never in clear.
    (change,) = await runner.changed(1)
    assert change.version == 2 and change.settings.signing is not None
    assert change.settings.signing.secrets == [held["sealed"]]
    assert won[0] not in change.model_dump_json()


async def test_a_flow_that_holds_a_secret_keeps_it(runner: Runner) -> None:
    flow = await runner.flow({"mode": "asana", "secrets": []})
    assert await runner.ingress.learn(settings(flow), "first-asana-secret-0001") == 2
    with pytest.raises(Unauthorized, match="this flow already holds a secret"):
        await runner.ingress.learn(settings(flow), "second-asana-secret-0002")
    stored = await runner.store.get(flow.id)
    assert stored is not None and stored.version == 2
    (held,) = stored.definition["webhook"]["auth"]["secrets"]
    assert BOX.open(held["sealed"], WORKSPACE) == "first-asana-secret-0001"
    # The conditional update itself: a flow holding a secret is not matched.
    async with runner.store.pool.acquire() as conn:
        other = {"sealed": BOX.seal("x" * 10, WORKSPACE), "hint": "\u2026xxxx"}
        assert await runner.store.learn_secret(conn, flow.id, WORKSPACE, "asana", other) is None


async def test_what_is_not_learned(runner: Runner) -> None:
    asana = await runner.flow({"mode": "asana", "secrets": []})
    github = await runner.flow(
        {"mode": "github", "secrets": []}  # stored so only to see the mode refused
    )
    # Another workspace's flow, or none: not found.
    with pytest.raises(NotFound, match="no such flow"):
        await runner.ingress.learn(
            settings(asana).model_copy(update={"workspace_id": str(uuid.uuid4())}),
            "asana-secret-00001",
        )
    with pytest.raises(NotFound):
        await runner.ingress.learn(
            settings(asana).model_copy(update={"flow_id": str(uuid.uuid4())}), "asana-secret-1"
        )
    # A flow whose mode changed since the ingress read it.
    with pytest.raises(Unauthorized, match="the flow's mode has changed; it learns no secret"):
        await runner.ingress.learn(settings(github), "asana-secret-00001")
    # A secret the flows API would refuse: 400 naming the header.
    with pytest.raises(BadRequest) as refused:
        await runner.ingress.learn(settings(asana), "short")
    assert refused.value.message == "X-Hook-Secret: a secret has 8 to 512 characters"
    # Sealed by another ring than the runner's: 503, nothing kept.
    stranger = SecretLearner(runner.rpc, SecretBox("another-ring-entirely-0123456789abcdef"))
    with pytest.raises(Unavailable, match="rings differ"):
        await stranger.learn(settings(asana), "asana-secret-00001")
    stored = await runner.store.get(asana.id)
    assert stored is not None and stored.version == 1
    assert stored.definition["webhook"]["auth"]["secrets"] == []
    assert await runner.changed(0) == []


async def test_a_runner_that_does_not_answer_is_503(amqp_url: str) -> None:
    broker = Broker(amqp_url, "ingress")
    await broker.connect()
    rpc = RpcClient(broker, default_timeout_s=0.5)
    await rpc.start()
    # The runner's RPC queue exists (the topology), but no runner consumes it.
    flow = FlowWebhookSettings(
        flow_id=str(uuid.uuid4()),
        workspace_id=WORKSPACE,
        version=1,
        status="live",
        signing=SigningSettings(mode="asana", secrets=[]),
    )
    try:
        with pytest.raises(
            Unavailable, match="the runner did not answer in time: the asana secret is not kept"
        ):
            await SecretLearner(rpc, BOX).learn(flow, "asana-secret-00001")
    finally:
        await broker.close()


def test_the_request_carries_the_secret_sealed_only() -> None:
    request = LearnWebhookSecret(
        flow_id="f", workspace_id=WORKSPACE, sealed_secret=BOX.seal("asana-secret-01", WORKSPACE)
    )
    assert "asana-secret-01" not in orjson.dumps(request.model_dump()).decode()
