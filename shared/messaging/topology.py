"""Queues and exchanges with their arguments, declared by every process at start.

Every process declares the whole durable topology (it is idempotent), so a message
published before its consumer ever started is queued, not dropped as unroutable, and
producer and consumer can never disagree on a queue's arguments. That takes a login
allowed to configure everything (the single development user). A service's own
least-privilege user (`flowhooks broker-setup`, `permissions.py`) may not: the operator
declared the topology with the users, and the service only checks that it is there.
"""

import re
from dataclasses import dataclass, field, replace
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from shared.messaging import naming


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[str, ...] = ()  # routing keys bound on the events exchange


# Events that must not be lost: quorum queues (replicated, fsynced) with a delivery
# limit so that a poison message cannot loop forever.
QUORUM = {"x-queue-type": "quorum", "x-delivery-limit": 10}

DEBUGGER_EVENTS = QueueSpec(
    naming.DEBUGGER_EVENTS_QUEUE,
    QUORUM,
    (
        naming.RUN_FINISHED,
        naming.REQUEST_REJECTED,
        naming.REQUEST_DEDUPLICATED,
        naming.REQUEST_HANDSHAKE,
        naming.REQUEST_FILTERED,
        naming.REQUEST_ROUTED,
        naming.REQUEST_QUEUED,
        naming.RUN_STARTED,
        naming.RUN_WAITING,
        naming.RUN_EXPIRED,
        naming.RUN_DEAD_LETTERED,
        # Which workspace owns each flow (the debugger keeps its own copy).
        naming.FLOW_CHANGED,
    ),
)
AUTH_FLOW_CHANGES = QueueSpec(naming.AUTH_FLOW_CHANGES_QUEUE, QUORUM, (naming.FLOW_CHANGED,))

# RPC queues: classic and durable. Requests carry a per-message expiration equal to the
# caller's timeout, so a call nobody picked up in time is dropped rather than run late.
AUTH_RPC = QueueSpec(naming.rpc_queue_name("auth"))
RUNNER_RPC = QueueSpec(naming.rpc_queue_name("runner"))
DEBUGGER_RPC = QueueSpec(naming.rpc_queue_name("debugger"))
# An expired sync run is dead-lettered to the debugger, which records it as `expired`.
SYNC_RUNS = QueueSpec(
    naming.SYNC_RUNS_QUEUE,
    {
        "x-dead-letter-exchange": naming.EVENTS_EXCHANGE,
        "x-dead-letter-routing-key": naming.RUN_EXPIRED,
    },
)
# Async runs: quorum (replicated, survives broker restarts); a run that keeps crashing
# its runner is delivered at most `x-delivery-limit` + 1 times, then dead-lettered
# (at least once) to the debugger, which records it as failed.
ASYNC_RUNS = QueueSpec(
    naming.ASYNC_RUNS_QUEUE,
    {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": naming.EVENTS_EXCHANGE,
        "x-dead-letter-routing-key": naming.RUN_DEAD_LETTERED,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    },
)

# Async runs parked by a runner because their workspace is at its share of the slots
# (services/runner/runs.py): so that one workspace's waiting runs do not hold the
# runner's prefetch window that other workspaces' runs are queued behind. One fixed TTL
# (arrival order is expiry order), then dead-lettered (at least once: a full async-runs
# queue leaves them here, retried) straight back into the async-runs queue. The parked
# copy is a new message (the delivery limit counts only real deliveries); nobody
# consumes this queue. The TTL bounds both what a parked run may lose once a slot
# frees and the churn: each parked message comes back once per TTL.
PARK_TTL_S = 1
ASYNC_RUNS_WAIT = QueueSpec(
    naming.ASYNC_RUNS_WAIT_QUEUE,
    {
        "x-queue-type": "quorum",
        "x-message-ttl": PARK_TTL_S * 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": naming.ASYNC_RUNS_QUEUE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    },
)

# Completion callbacks (services/runner/callbacks.py). The work queue: quorum, like the
# async runs whose outcome they carry; a callback whose handling keeps crashing its
# runner is dropped after the delivery limit (the kernel logs each failure).
CALLBACKS = QueueSpec(naming.CALLBACKS_QUEUE, {"x-queue-type": "quorum", "x-delivery-limit": 10})
# The wait ladder between attempts: one queue per step, each with one fixed TTL, so that
# its messages expire in the order they arrived (RabbitMQ expires only at a queue's head:
# per-message TTLs in one queue would hold a short wait behind a long one). An expired
# message is dead-lettered (at least once) straight back into the work queue; nobody
# consumes these queues. A wait longer than a step takes several (callbacks.py).
CALLBACK_LADDER_S = (1, 5, 30, 120, 600, 3600)
CALLBACK_WAITS = tuple(
    QueueSpec(
        naming.callback_wait_queue_name(step_s),
        {
            "x-queue-type": "quorum",
            "x-message-ttl": step_s * 1000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": naming.CALLBACKS_QUEUE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    for step_s in CALLBACK_LADDER_S
)
# The debugger's record of callback attempts (its own table, its own consumer).
DEBUGGER_CALLBACKS = QueueSpec(
    naming.DEBUGGER_CALLBACKS_QUEUE, QUORUM, (naming.CALLBACK_ATTEMPTED,)
)

DURABLE_QUEUES = (
    DEBUGGER_EVENTS,
    AUTH_FLOW_CHANGES,
    AUTH_RPC,
    RUNNER_RPC,
    DEBUGGER_RPC,
    SYNC_RUNS,
    ASYNC_RUNS,
    ASYNC_RUNS_WAIT,
    CALLBACKS,
    *CALLBACK_WAITS,
    DEBUGGER_CALLBACKS,
)


# Backstops on every durable queue: a length and a byte bound past which the broker
# refuses publishes (`reject-publish`: a nack, which every publisher already turns into
# 503 with Retry-After), so that no flood, whoever sends it, grows a queue until the
# broker's memory alarm blocks every publisher. Set as a RabbitMQ policy, not as queue
# arguments: RabbitMQ refuses to declare an existing queue again with other arguments,
# so arguments could reach an existing deployment (or another bound) only by deleting
# its queues; a policy applies to existing queues at once and can be changed while they
# run. Applied by `flowhooks broker-setup` (in its definitions) and by `flowhooks run`.
QUEUE_BOUNDS_POLICY = "flowhooks-queue-bounds"


@dataclass(frozen=True)
class QueueBounds:
    max_length: int  # messages ready in one queue
    max_bytes: int  # bytes of their bodies


# The defaults of FLOWHOOKS_QUEUE_MAX_LENGTH and FLOWHOOKS_QUEUE_MAX_BYTES (shared/settings.py).
DEFAULT_QUEUE_BOUNDS = QueueBounds(max_length=1_000_000, max_bytes=512 * 1024 * 1024)


def queue_bounds_policy(vhost: str, bounds: QueueBounds) -> dict[str, Any]:
    """The policy (as RabbitMQ definitions write it) that bounds every durable queue."""
    # Exactly the durable queues: per-process queues (RPC replies, an ingress's changes,
    # a debugger's tail) are consumed without acks and never fill.
    names = sorted(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", spec.name) for spec in DURABLE_QUEUES)
    return {
        "vhost": vhost,
        "name": QUEUE_BOUNDS_POLICY,
        "pattern": "^(" + "|".join(names) + ")$",
        "apply-to": "queues",
        "definition": {
            "max-length": bounds.max_length,
            "max-length-bytes": bounds.max_bytes,
            "overflow": "reject-publish",
        },
        "priority": 0,
    }


def replicated(spec: QueueSpec, replicas: int) -> QueueSpec:
    """`spec` as declared on a cluster (`FLOWHOOKS_BROKER_REPLICAS` > 1): a quorum queue with
    that many members. A classic queue lives on one node, so the RPC and sync-run queues
    would stop every webhook while that node is down; as quorum queues they move to a
    surviving member. Quorum queues take per-message expiry (the RPC and sync-run
    deadlines) and dead-letter it, as classic ones do. Every process must use the same
    value: RabbitMQ refuses a declaration whose group size differs."""
    if replicas <= 1:
        return spec
    arguments = {
        **spec.arguments,
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": replicas,
    }
    return replace(spec, arguments=arguments)


def durable_queues(replicas: int = 1) -> tuple[QueueSpec, ...]:
    return tuple(replicated(spec, replicas) for spec in DURABLE_QUEUES)


async def declare_topology(channel: AbstractChannel, replicas: int = 1) -> None:
    exchange = await channel.declare_exchange(
        naming.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    for spec in durable_queues(replicas):
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        for key in spec.bindings:
            await queue.bind(exchange, key)


class TopologyMissing(RuntimeError):
    pass


async def may_declare_topology(connection: aiormq.abc.AbstractConnection) -> bool:
    """Whether this login may declare the shared topology, tried on a throwaway channel
    (a refusal closes the channel it happens on): no service's own user may configure
    the events exchange, the single development user may."""
    channel = await connection.channel()
    try:
        await channel.exchange_declare(
            naming.EVENTS_EXCHANGE, exchange_type=aio_pika.ExchangeType.TOPIC.value, durable=True
        )
    except aiormq.exceptions.ChannelAccessRefused:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


async def verify_topology(connection: aiormq.abc.AbstractConnection) -> None:
    """Passive declarations (they need no permission): raises `TopologyMissing` unless the
    events exchange and every durable queue exist. Bindings cannot be checked this way."""
    channel = await connection.channel()
    try:
        await channel.exchange_declare(naming.EVENTS_EXCHANGE, passive=True)
        for spec in DURABLE_QUEUES:
            await channel.queue_declare(spec.name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise TopologyMissing(
            f"the broker topology is not declared ({exc}): run `flowhooks broker-setup`"
        ) from exc
    finally:
        if not channel.is_closed:
            await channel.close()
