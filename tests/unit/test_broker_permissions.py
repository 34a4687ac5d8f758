"""The permission regexes, checked the way RabbitMQ applies them (`re:run`: searched,
so they must be anchored), and the committed definitions file."""

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from services import registry
from services.debugger.tail import TAILED
from shared.messaging import broker_setup, contracts, naming, topology
from shared.messaging.connection import UndeclaredEvent
from shared.messaging.dispatch import EventHandlers
from shared.messaging.permissions import (
    DEFAULT_EXCHANGE,
    Permissions,
    TopicPermissions,
    permissions,
    topic_permissions,
)
from shared.messaging.rpc import UndeclaredCall
from shared.schemas.access import FlowOwnerQuery
from shared.service import Kernel, Undeclared

REPO = Path(__file__).resolve().parents[2]
SERVICES = registry.NAMES
INSTANCE = "3f2a9c01b7de"  # like Broker.instance


def allowed(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None


def who(kind: str, name: str) -> set[str]:
    """The services whose `kind` permission covers `name`."""
    return {s for s in SERVICES if allowed(getattr(permissions(s), kind), name)}


def who_topic(kind: str, key: str) -> set[str]:
    return {s for s in SERVICES if allowed(getattr(topic_permissions(s), kind), key)}


@pytest.mark.parametrize(
    ("name", "configure", "read"),
    [
        # Durable queues: only their consumer declares and reads them.
        (topology.AUTH_RPC.name, {"auth"}, {"auth"}),
        (naming.AUTH_FLOW_CHANGES_QUEUE, {"auth"}, {"auth"}),
        (topology.RUNNER_RPC.name, {"runner"}, {"runner"}),
        (naming.SYNC_RUNS_QUEUE, {"runner"}, {"runner"}),
        (naming.ASYNC_RUNS_QUEUE, {"runner"}, {"runner"}),
        (naming.DEBUGGER_EVENTS_QUEUE, {"debugger"}, {"debugger"}),
        (naming.CALLBACKS_QUEUE, {"runner"}, {"runner"}),
        (naming.DEBUGGER_CALLBACKS_QUEUE, {"debugger"}, {"debugger"}),
        # The callback wait ladder: nobody consumes it (the broker dead-letters it back).
        (naming.callback_wait_queue_name(30), set(), set()),
        (naming.CALLBACKS_QUEUE + ".wait-1h", set(), set()),
        # Parked async runs: the same (the runner sends them through the default exchange).
        (naming.ASYNC_RUNS_WAIT_QUEUE, set(), set()),
        (topology.DEBUGGER_RPC.name, {"debugger"}, {"debugger"}),
        # Per-process queues, whatever the process id.
        (naming.reply_queue_name("ingress", INSTANCE), {"ingress"}, {"ingress"}),
        (naming.reply_queue_name("auth", INSTANCE), {"auth"}, {"auth"}),
        (naming.reply_queue_name("runner", "pod-7_x"), {"runner"}, {"runner"}),
        (naming.reply_queue_name("debugger", INSTANCE), {"debugger"}, {"debugger"}),
        (naming.cache_invalidation_queue_name(INSTANCE), {"ingress"}, {"ingress"}),
        (naming.tail_queue_name(INSTANCE), {"debugger"}, {"debugger"}),
        # Nobody may declare the events exchange (broker-setup does); binding reads it.
        (naming.EVENTS_EXCHANGE, set(), {"ingress", "debugger"}),
        # Near misses: the anchors and escaped dots hold.
        (naming.reply_queue_name("ingress", "a.b"), set(), set()),
        (naming.reply_queue_name("ingress", ""), set(), set()),
        ("x" + topology.AUTH_RPC.name, set(), set()),
        (topology.AUTH_RPC.name + ".x", set(), set()),
        ("flowhooksXrpcXauth", set(), set()),
        ("flowhooks.reply.auth2." + INSTANCE, set(), set()),
        ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", set(), set()),
        (DEFAULT_EXCHANGE, set(), set()),
    ],
)
def test_configure_and_read_cover_only_a_services_own_queues(
    name: str, configure: set[str], read: set[str]
) -> None:
    assert who("configure", name) == configure
    assert who("read", name) == read


@pytest.mark.parametrize(
    ("name", "write"),
    [
        # RPC calls, commands and replies all go through the default exchange.
        (DEFAULT_EXCHANGE, {"ingress", "auth", "runner", "debugger"}),
        (naming.EVENTS_EXCHANGE, {"ingress", "auth", "runner"}),
        # Binding a queue needs write on it: only the per-process queues that are bound.
        (naming.cache_invalidation_queue_name(INSTANCE), {"ingress"}),
        (naming.tail_queue_name(INSTANCE), {"debugger"}),
        (naming.reply_queue_name("ingress", INSTANCE), set()),
        (naming.AUTH_FLOW_CHANGES_QUEUE, set()),
        (naming.DEBUGGER_EVENTS_QUEUE, set()),
        ("amq.topic", set()),
    ],
)
def test_write(name: str, write: set[str]) -> None:
    assert who("write", name) == write


@pytest.mark.parametrize(
    ("key", "publishers"),
    [
        (naming.FLOW_CHANGED, {"runner"}),
        (naming.RUN_FINISHED, {"runner"}),
        (naming.RUN_STARTED, {"runner"}),
        (naming.RUN_WAITING, {"runner"}),
        (naming.CALLBACK_ATTEMPTED, {"runner"}),
        (naming.FLOW_ACCESS_CHANGED, {"auth"}),
        (naming.ACCESS_TOKEN_REVOKED, {"auth"}),
        (naming.REQUEST_REJECTED, {"ingress"}),
        (naming.REQUEST_DEDUPLICATED, {"ingress"}),
        (naming.REQUEST_QUEUED, {"ingress"}),
        # Addressed to one ingress process, whichever it is.
        (naming.runs_drained_key(INSTANCE), {"runner"}),
        (naming.runs_drained_key("pod-7_x"), {"runner"}),
        (naming.RUNS_DRAINED, set()),
        (naming.runs_drained_key("a.b"), set()),
        # Only the broker dead-letters these (no permission check then).
        (naming.RUN_EXPIRED, set()),
        (naming.RUN_DEAD_LETTERED, set()),
        ("flow.changed.x", set()),
        ("flowXchanged", set()),
        ("#", set()),
    ],
)
def test_topic_write_only_the_producer(key: str, publishers: set[str]) -> None:
    assert who_topic("write", key) == publishers


def test_topic_read_is_what_the_per_process_queues_bind() -> None:
    assert who_topic("read", naming.FLOW_ACCESS_CHANGED) == {"ingress"}
    assert who_topic("read", naming.ACCESS_TOKEN_REVOKED) == {"ingress"}
    # Each ingress binds its own `runs.drained.<instance>` (the pattern allows any one).
    assert who_topic("read", naming.runs_drained_key(INSTANCE)) == {"ingress"}
    assert who_topic("read", naming.RUNS_DRAINED) == set()
    for key in TAILED:  # the debugger's live tail
        assert who_topic("read", key) == {"debugger"}
    assert who_topic("read", "#") == set()
    assert {topic_permissions(s).exchange for s in SERVICES} == {naming.EVENTS_EXCHANGE}


def test_exact_regexes() -> None:
    """The full text for one service, so that a change to the derivation shows here."""
    assert permissions("runner") == Permissions(
        configure=r"^(flowhooks\.reply\.runner\.[A-Za-z0-9_-]+|flowhooks\.rpc\.runner"
        r"|flowhooks\.runner\.async-runs|flowhooks\.runner\.callbacks"
        r"|flowhooks\.runner\.sync-runs)$",
        write=r"^(amq\.default|flowhooks\.events)$",
        read=r"^(flowhooks\.reply\.runner\.[A-Za-z0-9_-]+|flowhooks\.rpc\.runner"
        r"|flowhooks\.runner\.async-runs|flowhooks\.runner\.callbacks"
        r"|flowhooks\.runner\.sync-runs)$",
    )
    assert topic_permissions("runner") == TopicPermissions(
        exchange="flowhooks.events",
        write=r"^(callback\.attempted|flow\.changed|run\.finished|run\.started|run\.waiting"
        r"|runs\.drained\.[A-Za-z0-9_-]+|source\.changed)$",
        read="^$",
    )


def test_every_durable_queue_has_exactly_one_consuming_service() -> None:
    for spec in topology.DURABLE_QUEUES:
        # The wait queues excepted: read by nobody, the broker expires them.
        waits = (*topology.CALLBACK_WAITS, topology.ASYNC_RUNS_WAIT)
        consumers = 0 if spec in waits else 1
        assert len(who("read", spec.name)) == consumers, spec.name


def test_committed_definitions_match_the_generator() -> None:
    committed = (REPO / "deploy" / "rabbitmq" / "definitions.json").read_text()
    assert committed == broker_setup.template(), (
        "regenerate: .venv/bin/flowhooks broker-setup --template > deploy/rabbitmq/definitions.json"
    )


def test_rendered_definitions_hash_given_passwords_and_generate_the_rest() -> None:
    users = broker_setup.user_names()
    document, generated = broker_setup.render("flowhooks", users, {"runner": "s3cret"})
    assert set(generated) == {"ingress", "auth", "debugger"}
    hashes = {u["name"]: u["password_hash"] for u in json.loads(document)["users"]}
    raw = base64.b64decode(hashes["flowhooks-runner"])
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"s3cret").digest()
    raw = base64.b64decode(hashes["flowhooks-auth"])
    assert raw[4:] == hashlib.sha256(raw[:4] + generated["auth"].encode()).digest()


def test_existing_users_without_a_given_password_are_left_out() -> None:
    users = broker_setup.user_names()
    chosen, generated = broker_setup.choose_passwords(
        users, {"auth": "given"}, existing={"flowhooks-runner", "flowhooks-auth"}
    )
    assert chosen.keys() == {"auth", "ingress", "debugger"}
    assert chosen["auth"] == "given"
    assert generated.keys() == {"ingress", "debugger"}
    document = broker_setup.definitions("flowhooks", users, {"auth": "h"})
    assert [u["name"] for u in document["users"]] == ["flowhooks-auth"]
    # Permissions are set for every user, listed or not.
    assert len(document["permissions"]) == len(document["topic_permissions"]) == 4


def test_the_queue_bounds_policy_covers_exactly_the_durable_queues() -> None:
    policy = topology.queue_bounds_policy("flowhooks", topology.QueueBounds(7, 4096))
    assert policy["definition"] == {
        "max-length": 7,
        "max-length-bytes": 4096,
        "overflow": "reject-publish",
    }
    assert policy["apply-to"] == "queues"
    for spec in topology.DURABLE_QUEUES:
        assert allowed(policy["pattern"], spec.name), spec.name
    for name in (
        naming.reply_queue_name("ingress", INSTANCE),
        naming.cache_invalidation_queue_name(INSTANCE),
        naming.tail_queue_name(INSTANCE),
        naming.ASYNC_RUNS_QUEUE + ".x",
        "x" + naming.ASYNC_RUNS_QUEUE,
    ):
        assert not allowed(policy["pattern"], name), name
    # In the definitions broker-setup imports, for the vhost it sets up.
    document = broker_setup.definitions("v", broker_setup.user_names(), {})
    assert [p["name"] for p in document["policies"]] == [topology.QUEUE_BOUNDS_POLICY]
    assert document["policies"][0]["vhost"] == "v"


def _kernel(service: str) -> Kernel[Any]:
    spec = registry.spec(service)
    settings = spec.settings(runner_token_key="k" * 43) if service == "runner" else spec.settings()
    return Kernel(service, settings, web.Application(), spec.broker)


async def test_the_kernel_refuses_what_the_spec_does_not_declare() -> None:
    """The permissions are derived from each `ServiceSpec`'s declaration, so `wire`
    cannot serve, consume or publish beyond it: the kernel refuses at once."""
    auth = _kernel("auth")

    async def ignore(*_: object) -> Any:
        return None

    with pytest.raises(Undeclared, match=re.escape(contracts.GET_FLOW_OWNER.method)):
        auth.serve(contracts.GET_FLOW_OWNER, ignore)
    with pytest.raises(Undeclared, match=re.escape(topology.ASYNC_RUNS.name)):
        auth.on_command(contracts.ASYNC_RUNS, ignore, prefetch=1)
    with pytest.raises(Undeclared, match=re.escape(topology.DEBUGGER_EVENTS.name)):
        auth.consume(topology.DEBUGGER_EVENTS, ignore, prefetch=1)
    with pytest.raises(Undeclared, match="tail"):
        auth.consume(naming.tail_queue_name(INSTANCE), ignore, prefetch=1)
    with pytest.raises(UndeclaredEvent, match=re.escape(naming.FLOW_CHANGED)):
        await auth.broker.publish(b"{}", routing_key=naming.FLOW_CHANGED, to_events=True)
    with pytest.raises(UndeclaredCall, match=re.escape(contracts.GET_FLOW_OWNER.method)):
        await auth.rpc.call(contracts.GET_FLOW_OWNER, FlowOwnerQuery(flow_id="f"))
    # What it declares is accepted (nothing connects before `start_consuming`).
    auth.serve(contracts.IDENTIFY_TOKEN, ignore)
    auth.on_events(topology.AUTH_FLOW_CHANGES, EventHandlers(), prefetch=1)
    ingress = _kernel("ingress")
    cache_changes = EventHandlers()
    cache_changes.on(contracts.FLOW_ACCESS_CHANGED, ignore)
    ingress.on_events(naming.cache_invalidation_queue_name(INSTANCE), cache_changes, prefetch=1)
    # A per-process queue bound to a key its user may not read.
    bound_wrong = EventHandlers()
    bound_wrong.on(contracts.FLOW_CHANGED, ignore)
    with pytest.raises(Undeclared, match=re.escape(f"binding {naming.FLOW_CHANGED}")):
        ingress.on_events(naming.cache_invalidation_queue_name(INSTANCE), bound_wrong, prefetch=1)
