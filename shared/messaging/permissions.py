"""Each service's RabbitMQ permissions, derived from what it does on the broker.

`ACCESS` says, per service, which queues it consumes, which per-process queues it
declares (and binds), which routing keys it publishes on the events exchange and which
queues it sends to through the default exchange; everything is spelled through
`naming`, `topology` and `contracts`, so a renamed queue renames its permission.
`permissions(service)` and `topic_permissions(service)` turn that into the regexes that
`flowhooks broker-setup` grants (see docs/operations.md, "Broker users and permissions").

What RabbitMQ checks (rabbit_channel): declaring a queue or exchange (not passively)
needs *configure* on it; `queue.bind` needs *write* on the queue, *read* on the exchange
and topic *read* on the binding key; `basic.publish` needs *write* on the exchange and
topic *write* on the routing key (topic exchanges only); consuming needs *read* on the
queue. Publishing through the default exchange is checked against `amq.default` only,
never against the target queue: whoever sends an RPC call may address any queue that
way, which is why consumers of sensitive events also check `user_id` (`trust.py`).
Regexes are searched, not matched, by RabbitMQ, so each is anchored.
"""

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.messaging import contracts, naming, topology

SERVICES = ("ingress", "auth", "runner", "debugger")
# RabbitMQ's resource name for the default ("") exchange in permission checks.
DEFAULT_EXCHANGE = "amq.default"
# The process part of per-process queue names (`Broker.instance`): no dots, so a pattern
# for one service's queues can never reach into another name.
INSTANCE_PATTERN = "[A-Za-z0-9_-]+"
NOTHING = "^$"  # what RabbitMQ also makes of an empty permission

_INSTANCE = "\x00"  # stands for the instance while a name is escaped


def _per_instance(name_of: Callable[[str], str]) -> str:
    """A regex body for every process's version of a name made from its instance."""
    return escape(name_of(_INSTANCE)).replace(_INSTANCE, INSTANCE_PATTERN)


@dataclass(frozen=True)
class ProcessQueue:
    """A queue each process of a service declares for itself (exclusive, auto-delete),
    named by `name_of(instance)` and bound to `bindings` on the events exchange, and to
    the keys `addressed` makes of its instance (events sent to that process alone)."""

    name_of: Callable[[str], str]
    bindings: tuple[str, ...] = ()
    addressed: tuple[Callable[[str], str], ...] = ()

    @property
    def pattern(self) -> str:
        """A regex body for every process's name of this queue."""
        return _per_instance(self.name_of)

    @property
    def bound(self) -> bool:
        return bool(self.bindings or self.addressed)


@dataclass(frozen=True)
class ServiceAccess:
    consumes: tuple[topology.QueueSpec, ...] = ()
    own_queues: tuple[ProcessQueue, ...] = ()
    publishes: tuple[str, ...] = ()  # routing keys on the events exchange
    # Routing keys made of another service's process instance (`runs.drained.<ingress>`).
    publishes_to_processes: tuple[Callable[[str], str], ...] = ()
    # Queues written through the default exchange (RPC calls, commands); `replies`: an
    # RPC server answering on its callers' reply queues, also through the default exchange.
    sends_to: tuple[topology.QueueSpec, ...] = ()
    replies: bool = False


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


@dataclass(frozen=True)
class TopicPermissions:
    exchange: str
    write: str
    read: str


def escape(name: str) -> str:
    """A regex body matching `name` literally (like `re.escape`, but leaving `-` and `_`
    alone so that the regexes an operator reads stay readable)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", name)


def _reply_queue(service: str) -> ProcessQueue:
    return ProcessQueue(functools.partial(naming.reply_queue_name, service))


def _keys(*events: contracts.Event[Any]) -> tuple[str, ...]:
    return tuple(event.routing_key for event in events)


ACCESS: dict[str, ServiceAccess] = {
    "ingress": ServiceAccess(
        own_queues=(
            _reply_queue("ingress"),
            ProcessQueue(
                naming.cache_invalidation_queue_name,
                _keys(contracts.FLOW_ACCESS_CHANGED, contracts.ACCESS_TOKEN_REVOKED),
                # Its own async runs that finished (its per-workspace queued bounds).
                addressed=(naming.runs_drained_key,),
            ),
        ),
        publishes=_keys(
            contracts.REQUEST_REJECTED, contracts.REQUEST_DEDUPLICATED, contracts.REQUEST_QUEUED
        ),
        sends_to=(
            contracts.AUTHORIZE_WEBHOOK.queue,
            contracts.SYNC_RUNS.queue,
            contracts.ASYNC_RUNS.queue,
            contracts.CLAIM_DEDUP_KEY.queue,
            contracts.GET_RUN_STATUS.queue,
        ),
    ),
    "auth": ServiceAccess(
        consumes=(topology.AUTH_RPC, topology.AUTH_FLOW_CHANGES),
        own_queues=(_reply_queue("auth"),),
        publishes=_keys(contracts.FLOW_ACCESS_CHANGED, contracts.ACCESS_TOKEN_REVOKED),
        sends_to=(contracts.LIST_FLOW_ACCESS.queue,),
        replies=True,
    ),
    "runner": ServiceAccess(
        consumes=(
            topology.RUNNER_RPC,
            topology.SYNC_RUNS,
            topology.ASYNC_RUNS,
            contracts.CALLBACKS.queue,
        ),
        own_queues=(_reply_queue("runner"),),
        publishes=_keys(
            contracts.FLOW_CHANGED,
            contracts.RUN_FINISHED,
            contracts.RUN_STARTED,
            contracts.CALLBACK_ATTEMPTED,
        ),
        # To the ingress process that queued them: its async runs that finished.
        publishes_to_processes=(naming.runs_drained_key,),
        # Identifying API tokens; a batch it cannot run whole is split back onto its
        # queue; async runs parked while their workspace is at its share; callbacks
        # enqueued, and parked in the wait ladder between attempts.
        sends_to=(
            contracts.IDENTIFY_TOKEN.queue,
            topology.SYNC_RUNS,
            topology.ASYNC_RUNS,
            contracts.PARKED_RUNS.queue,
            contracts.CALLBACKS.queue,
            *topology.CALLBACK_WAITS,
        ),
        replies=True,
    ),
    "debugger": ServiceAccess(
        consumes=(topology.DEBUGGER_EVENTS, topology.DEBUGGER_RPC, topology.DEBUGGER_CALLBACKS),
        own_queues=(
            _reply_queue("debugger"),
            # The live tail binds (a subset of) what the durable intake receives.
            ProcessQueue(naming.tail_queue_name, topology.DEBUGGER_EVENTS.bindings),
        ),
        # Identifying API tokens; asking the runner who owns a flow it has not heard of
        # yet; replays (sync as a call of its own, async as a command).
        sends_to=(
            contracts.IDENTIFY_TOKEN.queue,
            contracts.GET_FLOW_OWNER.queue,
            contracts.START_RUN.queue,
            contracts.ASYNC_RUNS.queue,
        ),
        replies=True,
    ),
}


def any_of(patterns: Iterable[str]) -> str:
    """One anchored regex matching exactly the given regex bodies; `^$` for none."""
    unique = sorted(set(patterns))
    if not unique:
        return NOTHING
    return "^(" + "|".join(unique) + ")$"


def _exact(names: Iterable[str]) -> list[str]:
    return [escape(name) for name in names]


def permissions(service: str) -> Permissions:
    access = ACCESS[service]
    consumed = _exact(spec.name for spec in access.consumes)
    own = [queue.pattern for queue in access.own_queues]
    bound = [queue.pattern for queue in access.own_queues if queue.bound]
    write = list(bound)  # queue.bind needs write on the bound queue
    if access.sends_to or access.replies:
        write += _exact([DEFAULT_EXCHANGE])
    if access.publishes or access.publishes_to_processes:
        write += _exact([naming.EVENTS_EXCHANGE])
    read = consumed + own
    if bound:
        read += _exact([naming.EVENTS_EXCHANGE])  # queue.bind needs read on the exchange
    # Consumers declare their own durable queues (idempotently); the shared topology is
    # declared by broker-setup, so no service may configure (or delete) another's.
    return Permissions(configure=any_of(consumed + own), write=any_of(write), read=any_of(read))


def topic_permissions(service: str) -> TopicPermissions:
    """On the events exchange: write = the routing keys the service publishes, read = the
    keys its own queues bind. A user with no topic permission on an exchange may use any
    key there, so every service gets one, even if it is `^$`."""
    access = ACCESS[service]
    bound = _exact({key for queue in access.own_queues for key in queue.bindings})
    bound += [_per_instance(key) for queue in access.own_queues for key in queue.addressed]
    addressed = [_per_instance(key) for key in access.publishes_to_processes]
    return TopicPermissions(
        exchange=naming.EVENTS_EXCHANGE,
        write=any_of(_exact(access.publishes) + addressed),
        read=any_of(bound),
    )
