"""One broker user per service (`flowhooks broker-setup`), against the real RabbitMQ:
each test sets up a vhost and four users of its own, then checks what the broker
allows each of them, and that auth drops a `flow.changed` the runner did not publish."""

import asyncio
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import pytest
import structlog
from aiohttp import web

from harness.infra import SERVERS
from services.auth.settings import AuthSettings
from shared.messaging import broker_setup, naming, topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_CHANGED, Command
from shared.messaging.dispatch import EventHandlers
from shared.messaging.permissions import access as declared
from shared.messaging.permissions import services
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowChanged, FlowWebhookSettings
from shared.service import Kernel

pytestmark = pytest.mark.integration

ADMIN = broker_setup.Rabbitmqctl()


@dataclass
class Users:
    vhost: str
    names: dict[str, str]  # service -> broker user
    passwords: dict[str, str]
    admin_url: str  # guest, for looking at queues

    def url(self, service: str) -> str:
        user, password = self.names[service], self.passwords[service]
        return f"amqp://{user}:{password}@127.0.0.1:5672/{self.vhost}"


class Definitions:
    """A `BrokerAdmin` that keeps what `broker_setup.apply` would import, for importing
    many setups in one `rabbitmqctl` call. Its users are new (random names): none
    exists yet, as `rabbitmqctl list_users` would say."""

    name = "collected"

    def __init__(self) -> None:
        self.document: dict[str, list[Any]] = {}

    async def existing_users(self) -> set[str]:
        return set()

    async def import_definitions(self, document: dict[str, Any]) -> None:
        for key, items in document.items():
            self.document.setdefault(key, []).extend(items)


class UserSets:
    """Vhosts, each with the four service users `broker_setup.apply` sets up (and guest
    on it, to look at queues), made `batch` at a time: each `rabbitmqctl` call boots an
    Erlang VM (a second or more of CPU), and a set took three of them."""

    def __init__(self, batch: int) -> None:
        self.batch = max(batch, 1)
        self._ready: list[Users] = []

    def take(self) -> Users:
        if not self._ready:
            self._ready = self._create(self.batch)
        return self._ready.pop()

    def _create(self, count: int) -> list[Users]:
        collected = Definitions()
        made = []
        for _ in range(count):
            tag = uuid.uuid4().hex[:10]
            vhost = f"flowhooks-test-{tag}"
            names = broker_setup.user_names(f"fhtest-{tag}-")
            passwords = {service: secrets.token_urlsafe(16) for service in services()}
            generated = asyncio.run(broker_setup.apply(collected, vhost, names, passwords))
            assert generated == {}
            collected.document.setdefault("permissions", []).append(
                {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
            )
            admin_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
            made.append(Users(vhost, names, passwords, admin_url))
        try:
            asyncio.run(ADMIN.import_definitions(collected.document))
        except BaseException:
            self.give_back(made)
            raise
        return made

    @staticmethod
    def give_back(sets: list[Users]) -> None:
        """Deleted in the background, several per rabbitmqctl call (harness/infra.py)."""
        for made in sets:
            SERVERS.vhosts.give_back(made.vhost)
            SERVERS.broker_users.give_back(*made.names.values())

    def close(self) -> None:
        unused, self._ready = self._ready, []
        self.give_back(unused)


@pytest.fixture(scope="module")
def user_sets(request: pytest.FixtureRequest) -> Iterator[UserSets]:
    """As many sets at once as this module's selected tests take."""
    wanted = sum(
        1
        for item in request.session.items
        if item.path == request.path and "users" in getattr(item, "fixturenames", ())
    )
    sets = UserSets(wanted)
    try:
        yield sets
    finally:
        sets.close()


@pytest.fixture
def users(user_sets: UserSets) -> Iterator[Users]:
    """A vhost and four service users of the test's own."""
    taken = user_sets.take()
    try:
        yield taken
    finally:
        user_sets.give_back([taken])


@pytest.fixture
async def connections() -> AsyncIterator[list[aio_pika.abc.AbstractConnection]]:
    opened: list[aio_pika.abc.AbstractConnection] = []
    yield opened
    for connection in opened:
        await connection.close()


async def _channel(
    url: str, connections: list[aio_pika.abc.AbstractConnection]
) -> aio_pika.abc.AbstractChannel:
    """A plain (not robust) channel with confirms: a refusal closes it and raises."""
    connection = await aio_pika.connect(url)
    connections.append(connection)
    return await connection.channel(publisher_confirms=True)


async def _publish_event(channel: aio_pika.abc.AbstractChannel, key: str, **props: str) -> None:
    events = await channel.get_exchange(naming.EVENTS_EXCHANGE)
    await events.publish(aio_pika.Message(b"{}", **props), key)  # type: ignore[arg-type]


async def _queue_depth(users: Users, queue: str) -> int:
    connection = await aio_pika.connect(users.admin_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count
    finally:
        await connection.close()


async def test_each_service_user_can_do_its_own_work(users: Users) -> None:
    """Every service connects with its own user (only checking the topology, which
    broker-setup declared), declares and consumes its queues, binds its per-process
    queues, publishes its events and sends to the queues it calls."""
    for service in services():
        access = declared(service)
        broker = Broker(users.url(service), service)
        await broker.connect()
        try:
            assert broker.user == users.names[service]
            await RpcClient(broker, 5).start()

            async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                pass

            for spec in access.consumed:
                await broker.consume(spec, ignore, prefetch=1)
            for own in access.own_queues:
                if own.bound:
                    # Its events, and those addressed to this process alone.
                    addressed = tuple(key(broker.instance) for key in own.addressed)
                    await broker.consume(
                        own.name_of(broker.instance),
                        ignore,
                        prefetch=1,
                        no_ack=True,
                        bindings=own.bindings + addressed,
                    )
            for event in access.publishes:
                await broker.publish(
                    b"{}", routing_key=event.routing_key, to_events=True, mandatory=False
                )
            for key_of in access.publishes_to_processes:  # to some other service's process
                await broker.publish(
                    b"{}", routing_key=key_of("0f1e2d3c4b5a"), to_events=True, mandatory=False
                )
            for rpc in access.calls:
                await broker.publish(b"{}", routing_key=rpc.queue.name, persistent=False)
            for sent in access.sends:
                queue = sent.queue if isinstance(sent, Command) else sent
                await broker.publish(b"{}", routing_key=queue.name, persistent=False)
        finally:
            await broker.close()


@pytest.mark.parametrize(
    ("service", "refusal"),
    [
        # Allowed to publish on the events exchange, but not this routing key.
        ("ingress", r"access to topic 'flow\.changed' in exchange 'flowhooks\.events'"),
        ("auth", r"access to topic 'flow\.changed' in exchange 'flowhooks\.events'"),
        # Publishes no event at all.
        ("debugger", r"access to exchange 'flowhooks\.events'"),
    ],
)
async def test_only_the_runner_may_publish_flow_changed(
    users: Users, connections: list[aio_pika.abc.AbstractConnection], service: str, refusal: str
) -> None:
    channel = await _channel(users.url(service), connections)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=refusal):
        await _publish_event(channel, naming.FLOW_CHANGED)

    runner = await _channel(users.url("runner"), connections)
    await _publish_event(runner, naming.FLOW_CHANGED)
    assert await _queue_depth(users, naming.AUTH_FLOW_CHANGES_QUEUE) == 1


@pytest.mark.parametrize(
    ("service", "queue"),
    [
        ("ingress", naming.AUTH_FLOW_CHANGES_QUEUE),
        ("ingress", naming.ASYNC_RUNS_QUEUE),
        ("debugger", topology.AUTH_RPC.name),
        ("runner", naming.DEBUGGER_EVENTS_QUEUE),
        ("auth", naming.SYNC_RUNS_QUEUE),
    ],
)
async def test_a_service_cannot_read_or_delete_another_services_queue(
    users: Users, connections: list[aio_pika.abc.AbstractConnection], service: str, queue: str
) -> None:
    refused = f"access to queue '{re.escape(queue)}' in vhost '{users.vhost}' refused"

    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pass

    channel = await _channel(users.url(service), connections)
    passive = await channel.declare_queue(queue, passive=True)  # needs no permission
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=refused):
        await passive.consume(ignore)  # read

    channel = await _channel(users.url(service), connections)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=refused):
        await channel.queue_delete(queue)  # configure
    assert await _queue_depth(users, queue) == 0  # still there


async def test_a_user_id_other_than_the_login_is_refused(
    users: Users, connections: list[aio_pika.abc.AbstractConnection]
) -> None:
    ingress = await _channel(users.url("ingress"), connections)
    # request.rejected is the ingress's own event: only the claimed user_id is wrong.
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
        await _publish_event(ingress, naming.REQUEST_REJECTED, user_id=users.names["runner"])

    ingress = await _channel(users.url("ingress"), connections)
    await _publish_event(ingress, naming.REQUEST_REJECTED, user_id=users.names["ingress"])


async def test_auth_drops_a_flow_changed_the_runner_did_not_publish(
    users: Users, connections: list[aio_pika.abc.AbstractConnection]
) -> None:
    """The ingress's user may not publish flow.changed, but it may declare a queue of its
    own pattern that dead-letters to the events exchange under any routing key (RabbitMQ
    checks only write on the exchange then), so a forged event does reach auth's queue.
    auth's consumer drops it: user_id, set by the broker-checked login, is not the
    runner's."""

    def change(flow_id: str, version: int) -> FlowChanged:
        settings = FlowWebhookSettings(
            flow_id=flow_id, workspace_id="w", version=version, status="live"
        )
        return FlowChanged(
            flow_id=flow_id, workspace_id="w", version=version, token_hash="h", settings=settings
        )

    forged, genuine = change("forged", 1000), change("genuine", 1)

    ingress = await _channel(users.url("ingress"), connections)
    trap = await ingress.declare_queue(
        naming.reply_queue_name("ingress", "forger"),
        exclusive=True,
        arguments={
            "x-dead-letter-exchange": naming.EVENTS_EXCHANGE,
            "x-dead-letter-routing-key": naming.FLOW_CHANGED,
            "x-message-ttl": 0,
        },
    )
    await ingress.default_exchange.publish(
        aio_pika.Message(forged.model_dump_json().encode(), user_id=users.names["ingress"]),
        trap.name,
    )
    runner = Broker(users.url("runner"), "runner")
    await runner.connect()
    try:
        await runner.publish_event(FLOW_CHANGED, genuine)
    finally:
        await runner.close()
    for _ in range(50):
        if await _queue_depth(users, naming.AUTH_FLOW_CHANGES_QUEUE) == 2:
            break
        await asyncio.sleep(0.1)
    assert await _queue_depth(users, naming.AUTH_FLOW_CHANGES_QUEUE) == 2

    # auth's consumer as auth wires it (services/auth/app.py), on the service kernel.
    settings = AuthSettings(amqp_url=users.url("auth"), trusted_runner_user=users.names["runner"])
    applied: list[str] = []

    async def apply(change: FlowChanged) -> None:
        applied.append(change.flow_id)

    handlers = EventHandlers()
    handlers.on(FLOW_CHANGED, apply, published_by=settings.runner_user)
    kernel = Kernel("auth", settings, web.Application())
    await kernel.broker.connect()
    try:
        with structlog.testing.capture_logs() as logs:
            kernel.on_events(topology.AUTH_FLOW_CHANGES, handlers, prefetch=8)
            await kernel.start_consuming()
            for _ in range(50):
                if await _queue_depth(users, naming.AUTH_FLOW_CHANGES_QUEUE) == 0 and applied:
                    break
                await asyncio.sleep(0.1)
    finally:
        await kernel.broker.close()

    assert applied == ["genuine"]
    dropped = [entry for entry in logs if entry["event"] == "forged_event_dropped"]
    assert len(dropped) == 1
    assert dropped[0]["routing_key"] == naming.FLOW_CHANGED
    assert dropped[0]["user_id"] == users.names["ingress"]
    assert dropped[0]["trusted_user"] == users.names["runner"]
    # Rejected without requeue: gone, not waiting to be delivered again.
    assert await _queue_depth(users, naming.AUTH_FLOW_CHANGES_QUEUE) == 0


async def test_setup_is_idempotent_and_keeps_or_changes_passwords(users: Users) -> None:
    async def login(service: str, password: str) -> bool:
        url = f"amqp://{users.names[service]}:{password}@127.0.0.1:5672/{users.vhost}"
        try:
            connection = await aio_pika.connect(url)
        except aio_pika.exceptions.ProbableAuthenticationError:
            return False
        await connection.close()
        return True

    # No passwords given: the existing users keep theirs, nothing is generated.
    assert await broker_setup.apply(ADMIN, users.vhost, users.names, {}) == {}
    assert await login("runner", users.passwords["runner"])
    # A given password replaces the old one.
    assert await broker_setup.apply(ADMIN, users.vhost, users.names, {"runner": "new-pw"}) == {}
    assert await login("runner", "new-pw")
    assert not await login("runner", users.passwords["runner"])


async def test_the_management_api_sets_up_the_same(users: Users) -> None:
    api = broker_setup.ManagementApi("http://guest:guest@127.0.0.1:15672")
    if not await api.reachable():
        pytest.skip("the management plugin is not enabled on the local broker")
    tag = uuid.uuid4().hex[:10]
    vhost, names = f"flowhooks-test-{tag}", broker_setup.user_names(f"fhtest-{tag}-")
    try:
        generated = await broker_setup.apply(api, vhost, names, {"runner": "runner-pw"})
        assert set(generated) == {"ingress", "auth", "debugger"}
        broker = Broker(f"amqp://{names['runner']}:runner-pw@127.0.0.1:5672/{vhost}", "runner")
        await broker.connect()
        try:
            await broker.publish(b"{}", routing_key=naming.FLOW_CHANGED, to_events=True)
        finally:
            await broker.close()
        ingress = f"amqp://{names['ingress']}:{generated['ingress']}@127.0.0.1:5672/{vhost}"
        connection = await aio_pika.connect(ingress)
        try:
            channel = await connection.channel(publisher_confirms=True)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await _publish_event(channel, naming.FLOW_CHANGED)
        finally:
            await connection.close()
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        for user in names.values():
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)
