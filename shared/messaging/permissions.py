"""Each service's RabbitMQ permissions, derived from what it declares it does on the
broker.

Each `ServiceSpec` (shared/service.py) declares a `ServiceAccess`: the RPCs it serves and
calls, the durable queues it consumes and sends to, its per-process queues and the
events it publishes, every one spelled by the contracts and topology (`contracts`,
`topology`, `naming`), so a renamed queue renames its permission. The kernel refuses at
start an entrypoint (and the broker a publish on the events exchange) that the
declaration does not name, so the declaration cannot drift from `wire`.
`permissions(service)` and `topic_permissions(service)` turn the declarations of the
services of `services/registry.py` into the regexes that `flowhooks broker-setup`
grants (see docs/operations.md, "Broker users and permissions").

What RabbitMQ checks (rabbit_channel): declaring a queue or exchange (not passively)
needs *configure* on it; `queue.bind` needs *write* on the queue, *read* on the exchange
and topic *read* on the binding key; `basic.publish` needs *write* on the exchange and
topic *write* on the routing key (topic exchanges only); consuming needs *read* on the
queue. Publishing through the default exchange is checked against `amq.default` only,
never against the target queue: whoever sends an RPC call may address any queue that
way, which is why consumers of sensitive events also check `user_id` (`trust.py`).
Regexes are searched, not matched, by RabbitMQ, so each is anchored.
"""

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.messaging import naming, topology
from shared.messaging.contracts import Command, Event, Rpc

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


Queue = topology.QueueSpec | Command[Any]


def _queue(queue: Queue) -> topology.QueueSpec:
    return queue.queue if isinstance(queue, Command) else queue


@dataclass(frozen=True)
class ServiceAccess:
    """What one service does on the broker (besides its reply queue, which every
    service's RPC client has): declared once, in its `ServiceSpec`."""

    # RPCs it answers (their queues consumed, the answers sent to the callers' queues).
    serves: tuple[Rpc[Any, Any], ...] = ()
    # Durable queues it consumes: its commands' and its event queues.
    consumes: tuple[Queue, ...] = ()
    own_queues: tuple[ProcessQueue, ...] = ()
    # RPCs it calls, and queues it sends to through the default exchange (commands).
    calls: tuple[Rpc[Any, Any], ...] = ()
    sends: tuple[Queue, ...] = ()
    publishes: tuple[Event[Any], ...] = ()  # on the events exchange
    # Routing keys made of another service's process instance (`runs.drained.<ingress>`).
    publishes_to_processes: tuple[Callable[[str], str], ...] = ()

    @property
    def consumed(self) -> tuple[topology.QueueSpec, ...]:
        return tuple(rpc.queue for rpc in self.serves) + tuple(map(_queue, self.consumes))

    @property
    def uses_default_exchange(self) -> bool:
        return bool(self.serves or self.calls or self.sends)

    def with_reply_queue(self, service: str) -> "ServiceAccess":
        reply = ProcessQueue(functools.partial(naming.reply_queue_name, service))
        return dataclasses.replace(self, own_queues=(reply, *self.own_queues))


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


def services() -> tuple[str, ...]:
    """The services' names (`services/registry.py`), imported when asked: shared/ knows
    of the services only here, for their users' permissions."""
    from services import registry

    return registry.NAMES


@functools.cache
def access(service: str) -> ServiceAccess:
    """What `service` declares in its `ServiceSpec`, with its reply queue."""
    from services import registry

    return registry.spec(service).broker.with_reply_queue(service)


def any_of(patterns: Iterable[str]) -> str:
    """One anchored regex matching exactly the given regex bodies; `^$` for none."""
    unique = sorted(set(patterns))
    if not unique:
        return NOTHING
    return "^(" + "|".join(unique) + ")$"


def _exact(names: Iterable[str]) -> list[str]:
    return [escape(name) for name in names]


def permissions(service: str) -> Permissions:
    return permissions_of(access(service))


def topic_permissions(service: str) -> TopicPermissions:
    return topic_permissions_of(access(service))


def permissions_of(access: ServiceAccess) -> Permissions:
    consumed = _exact(spec.name for spec in access.consumed)
    own = [queue.pattern for queue in access.own_queues]
    bound = [queue.pattern for queue in access.own_queues if queue.bound]
    write = list(bound)  # queue.bind needs write on the bound queue
    if access.uses_default_exchange:
        write += _exact([DEFAULT_EXCHANGE])
    if access.publishes or access.publishes_to_processes:
        write += _exact([naming.EVENTS_EXCHANGE])
    read = consumed + own
    if bound:
        read += _exact([naming.EVENTS_EXCHANGE])  # queue.bind needs read on the exchange
    # Consumers declare their own durable queues (idempotently); the shared topology is
    # declared by broker-setup, so no service may configure (or delete) another's.
    return Permissions(configure=any_of(consumed + own), write=any_of(write), read=any_of(read))


def topic_permissions_of(access: ServiceAccess) -> TopicPermissions:
    """On the events exchange: write = the routing keys the service publishes, read = the
    keys its own queues bind. A user with no topic permission on an exchange may use any
    key there, so every service gets one, even if it is `^$`."""
    bound = _exact({key for queue in access.own_queues for key in queue.bindings})
    bound += [_per_instance(key) for queue in access.own_queues for key in queue.addressed]
    addressed = [_per_instance(key) for key in access.publishes_to_processes]
    return TopicPermissions(
        exchange=naming.EVENTS_EXCHANGE,
        write=any_of(_exact(event.routing_key for event in access.publishes) + addressed),
        read=any_of(bound),
    )
