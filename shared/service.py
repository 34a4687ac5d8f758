"""The service kernel: what every flowhooks process does the same way, written once.

A service is declared as a `ServiceSpec`: its name, settings class (with its ports),
database schema (if it owns one), HTTP routes, what it does on the broker (`broker`, a
`ServiceAccess`: the RPCs it serves and calls, the queues it consumes and sends to, the
events it publishes; its broker user's permissions are derived from it), and a `wire`
function that builds the service's own objects and declares its entrypoints on the
`Kernel` it is given (an entrypoint `broker` does not name is refused at start):

- `kernel.serve(RPC, handler)`: an RPC method, `handler(request) -> response`;
- `kernel.on_command(COMMAND, handler)`: work from a durable queue, the body decoded to
  the command's schema, `handler(body, delivery)`;
- `kernel.on_events(queue, handlers)`: events dispatched by routing key (`EventHandlers`);
- `kernel.consume(queue, handler)`: raw messages that the handler settles itself
  (a batching consumer such as the debugger's ingest acks once per batch);
- `kernel.background(coroutine)`, `kernel.periodic(name, interval_s, job)` and
  `kernel.on_shutdown(hook)`;
- `kernel.provide(key, object)`: the object whose methods serve the HTTP routes declared
  under `key` (typed routes: `shared/http_api.py`);
- `await kernel.named_pool(name, max_size, ...)`: a database pool of its own for one
  kind of work (its size, its statement timeout), beside `kernel.pool`, so that one
  kind of load cannot take the connections another needs (the debugger's ingest, API
  and RPC); a service that asks for none has the one pool.

The kernel owns the rest: connecting (database with its migrations, broker, RPC client),
decoding, ack / requeue / dead-letter, in-flight tracking, readiness, and the shutdown
order: stop consuming, wait for the handlers in flight, cancel background tasks, run
the shutdown hooks (the last registered first), close the broker, close the database.

Settling a delivery of `on_command` and durable `on_events` consumers:
- the handler returned: ack;
- the body is unreadable (not the declared schema, or an event nobody handles):
  rejected without requeue, so it is dead-lettered where the queue has a dead-letter
  exchange and never blocks the queue;
- the handler raised (`Retry` for "the database or the broker is briefly away", or a
  bug): requeued after `RETRY_DELAY_S`; quorum queues' delivery limits end a loop.
"""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from prometheus_client import CollectorRegistry

from shared.db import create_pool, open_pool
from shared.http_api import TOKEN_CHECK, Route, RpcTokenCheck, add_routes
from shared.logging import configure_logging
from shared.messaging import encoding
from shared.messaging.connection import Broker
from shared.messaging.contracts import Body, Command, Request, Response, Rpc
from shared.messaging.dispatch import EventHandlers, UnknownEvent
from shared.messaging.permissions import ServiceAccess, permissions_of, topic_permissions_of
from shared.messaging.rpc import RpcClient, RpcServer
from shared.messaging.topology import QueueSpec
from shared.metrics import KernelMetrics
from shared.openapi import add_docs_routes
from shared.settings import DatabaseSettings, ServiceSettings
from shared.tracing import configure_tracing
from shared.web import BODY_TIMEOUT_S, OPS, base_app, run_service, watch_readiness

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")

RETRY_DELAY_S = 1.0
MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Undeclared(Exception):
    """`wire` declared an entrypoint that the service's `ServiceSpec.broker` does not
    name: its broker user would be refused it, so it is refused here first."""


class Retry(Exception):
    """Raised by a handler: this message cannot be handled now (the database or the
    broker is away); deliver it again after a pause."""


@dataclass(frozen=True)
class Delivery:
    """What a command handler may know of its message besides the body."""

    redelivered: bool
    reply_to: str | None
    routing_key: str
    message_type: str | None

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> "Delivery":
        return cls(
            redelivered=bool(message.redelivered),
            reply_to=message.reply_to,
            routing_key=message.routing_key or "",
            message_type=message.type,
        )


@dataclass(frozen=True)
class Database:
    """The PostgreSQL schema a service owns, and its migrations (applied at start)."""

    schema: str
    migrations: Path


@dataclass
class _Entrypoint:
    queue: QueueSpec | str
    handler: MessageHandler
    prefetch: int
    no_ack: bool = False
    bindings: tuple[str, ...] = ()


class Kernel(Generic[S]):
    """One process's connections, entrypoints and lifecycle; given to `wire`."""

    def __init__(
        self,
        name: str,
        settings: S,
        app: web.Application,
        declared: ServiceAccess | None = None,
    ) -> None:
        """`declared`: what the service may do on the broker; None (a bare kernel in a
        test) checks nothing."""
        self.name = name
        self.settings = settings
        self.app = app
        self.broker = Broker(
            settings.broker_urls,
            name,
            settings.publish_timeout_s,
            settings.broker_replicas,
            settings.broker_compress_min_bytes,
        )
        self._declared = declared.with_reply_queue(name) if declared is not None else None
        if self._declared is not None:
            # The routing keys its user may publish on the events exchange; the broker
            # refuses the others before RabbitMQ would (which closes the channel).
            topic = topic_permissions_of(self._declared)
            self.broker.may_publish_event = re.compile(topic.write).search
        # On the app's own registry (`/metrics` of its ops port); `wire` adds the
        # service's own metrics to `self.metrics.registry`. A bare app (tests): unexported.
        ops = app.get(OPS)
        self.metrics = KernelMetrics(ops.registry if ops is not None else CollectorRegistry())
        self.metrics.watch_broker(
            lambda: self.broker.publish_failures,
            self._broker_connected,
            lambda: (self.broker.batch_messages, self.broker.batch_items),
        )
        self.rpc = RpcClient(self.broker, settings.rpc_timeout_s, self.metrics.rpc_duration)
        # Who holds a bearer token, for the routes' scopes: auth, over RPC (auth's own
        # `wire` provides its local check instead).
        app[TOKEN_CHECK] = RpcTokenCheck(self.rpc).identify
        if self._declared is not None:
            self.rpc.may_call = frozenset(rpc.method for rpc in self._declared.calls)
        self._pool: asyncpg.Pool | None = None
        self._named_pools: dict[str, asyncpg.Pool] = {}
        self._entrypoints: list[_Entrypoint] = []
        self._rpc_servers: dict[str, RpcServer] = {}
        self._background: list[asyncio.Task[None]] = []
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "this service declares no database"
        return self._pool

    async def named_pool(
        self, name: str, max_size: int, *, statement_timeout_ms: int | None = None
    ) -> asyncpg.Pool:
        """A pool of its own, for one kind of work (asked for by `wire`), so that load of
        another kind cannot take its connections; `statement_timeout_ms` as in
        `shared.db.create_pool` (0: none at all). Shown in `pg_stat_activity` as
        `flowhooks-<service>-<name>`; closed with `pool` at shutdown, after the shutdown
        hooks (which may still write)."""
        settings = self.settings
        assert isinstance(settings, DatabaseSettings), f"{self.name} declares no database"
        assert self._pool is not None, "this service declares no database"
        assert name not in self._named_pools, f"pool {name} asked for twice"
        pool = await create_pool(
            settings.database_url,
            max_size,
            statement_timeout_ms=statement_timeout_ms,
            application_name=f"flowhooks-{self.name}-{name}",
        )
        self._named_pools[name] = pool
        return pool

    # Declarations, made by `wire`.

    def provide(self, key: web.AppKey[T], value: T) -> T:
        """Make an object reachable by the HTTP routes declared under `key`."""
        self.app[key] = value
        return value

    def serve(
        self,
        rpc: Rpc[Request, Response],
        handler: Callable[[Request], Awaitable[Response]],
        *,
        prefetch: int = 8,
    ) -> None:
        if self._declared is not None:
            self._check(rpc in self._declared.serves, f"RPC {rpc.method}")
        server = self._rpc_servers.get(rpc.queue.name)
        if server is None:
            server = self._rpc_servers[rpc.queue.name] = RpcServer(self.broker)
            self._entrypoints.append(_Entrypoint(rpc.queue, server.on_call, prefetch))
        server.register(rpc, handler)

    def on_command(
        self,
        command: Command[Body],
        handler: Callable[[Body, Delivery], Awaitable[None]],
        *,
        prefetch: int,
    ) -> None:
        self._check_queue(command.queue)

        async def settle(message: AbstractIncomingMessage) -> None:
            try:
                body = command.decode(encoding.body(message))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                await _reject(message, repr(exc))
                return
            await _run_and_settle(message, handler(body, Delivery.of(message)))

        self._entrypoints.append(_Entrypoint(command.queue, settle, prefetch))

    def on_events(
        self,
        queue: QueueSpec | str,
        handlers: EventHandlers,
        *,
        prefetch: int,
        on_unreadable: Callable[[], None] | None = None,
    ) -> None:
        """A `QueueSpec` is a durable queue whose events are acked once handled; a
        name is this process's own queue (auto-ack, bound to the handled routing keys,
        gone with the connection), where an unreadable event calls `on_unreadable`."""
        self._check_queue(queue, handlers.routing_keys)
        if isinstance(queue, str):

            async def notice(message: AbstractIncomingMessage) -> None:
                try:
                    await handlers.dispatch(message)
                except (UnknownEvent, ValueError) as exc:
                    log.warning(
                        "unreadable_event", routing_key=message.routing_key, error=repr(exc)
                    )
                    if on_unreadable is not None:
                        on_unreadable()

            self._entrypoints.append(
                _Entrypoint(queue, notice, prefetch, no_ack=True, bindings=handlers.routing_keys)
            )
            return

        async def settle(message: AbstractIncomingMessage) -> None:
            try:
                body = handlers.decode(message)
            except (UnknownEvent, ValueError) as exc:
                await _reject(message, repr(exc))
                return
            await _run_and_settle(message, handlers.handle(message, body))

        self._entrypoints.append(_Entrypoint(queue, settle, prefetch))

    def consume(self, queue: QueueSpec | str, handler: MessageHandler, *, prefetch: int) -> None:
        """Raw deliveries; `handler` acks, rejects or nacks each one itself."""
        self._check_queue(queue)
        self._entrypoints.append(_Entrypoint(queue, handler, prefetch))

    def _check(self, declared: bool, what: str) -> None:
        if not declared:
            raise Undeclared(f"{self.name}: {what} is not in its ServiceSpec's `broker`")

    def _check_queue(self, queue: QueueSpec | str, bindings: Sequence[str] = ()) -> None:
        """A durable queue it declares it consumes, or one of its per-process queues
        bound only to keys it declares."""
        if self._declared is None:
            return
        if isinstance(queue, QueueSpec):
            self._check(queue in self._declared.consumed, f"queue {queue.name}")
            return
        own = permissions_of(self._declared).configure
        self._check(re.search(own, queue) is not None, f"queue {queue}")
        read = topic_permissions_of(self._declared).read
        for key in bindings:
            self._check(re.search(read, key) is not None, f"binding {key} of queue {queue}")

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """A task that lives as long as the service; cancelled at shutdown."""
        self._background.append(asyncio.create_task(coroutine))

    def periodic(self, name: str, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
        """`job` every `interval_s` for the service's life (the first after one interval);
        a failure is logged and the next run comes all the same."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await job()
                except Exception as exc:
                    log.warning("periodic_job_failed", job=name, error=repr(exc))

        self.background(loop())

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs after every handler in flight has finished, before the connections
        close; hooks run in reverse order of registration."""
        self._shutdown_hooks.append(hook)

    # Lifecycle, driven by the app's cleanup context.

    async def start(self, database: Database | None) -> None:
        if database is not None:
            settings = self.settings
            assert isinstance(settings, DatabaseSettings), f"{self.name} declares a database"
            self._pool = await open_pool(
                settings.database_url,
                settings.database_pool_max,
                database.schema,
                database.migrations,
            )
        await self.broker.connect()
        await self.rpc.start()
        watch_readiness(self.app, self.broker, self._pool)

    async def start_consuming(self) -> None:
        for entry in self._entrypoints:
            await self.broker.consume(
                entry.queue,
                self._tracked(entry.handler),
                prefetch=entry.prefetch,
                no_ack=entry.no_ack,
                bindings=entry.bindings,
            )
        # Queue depth: each service reads the durable queues it consumes (every replica
        # does; dashboards take the max per queue). Read once now, then periodically.
        durable = sorted(
            {e.queue.name for e in self._entrypoints if isinstance(e.queue, QueueSpec)}
        )
        if durable:
            self.background(self._read_queue_depths(durable))
            self.periodic(
                "queue_depths",
                self.settings.queue_depth_interval_s,
                lambda: self._read_queue_depths(durable),
            )

    async def _read_queue_depths(self, queues: list[str]) -> None:
        try:
            depths = await self.broker.queue_depths(queues)
        except Exception as exc:  # the broker is away: the gauges keep their last value
            log.warning("queue_depths_failed", error=repr(exc))
            return
        for queue, depth in depths.items():
            self.metrics.queue_messages.labels(queue).set(depth)

    def _broker_connected(self) -> bool:
        return self.broker.is_connected

    def _tracked(self, handler: MessageHandler) -> MessageHandler:
        async def tracked(message: AbstractIncomingMessage) -> None:
            self._in_flight += 1
            self._idle.clear()
            try:
                await handler(message)
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return tracked

    async def stop(self) -> None:
        timeout_s = self.settings.shutdown_timeout_s
        await self.broker.stop_consuming()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("handlers_still_running", count=self._in_flight)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for hook in reversed(self._shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown_hook_failed", hook=getattr(hook, "__qualname__", hook))
        await self.broker.close()
        for pool in self._named_pools.values():
            await pool.close()
        if self._pool is not None:
            await self._pool.close()


async def _reject(message: AbstractIncomingMessage, reason: str) -> None:
    log.error(
        "unreadable_message",
        routing_key=message.routing_key,
        message_type=message.type,
        error=reason[:500],
        body=message.body[:200],  # as received: perhaps what could not be inflated
    )
    await message.reject(requeue=False)


async def _run_and_settle(message: AbstractIncomingMessage, handling: Awaitable[None]) -> None:
    try:
        await handling
    except Retry as exc:
        log.warning("message_retried", routing_key=message.routing_key, reason=str(exc))
    except Exception:
        log.exception("message_handler_failed", routing_key=message.routing_key)
    else:
        await message.ack()
        return
    await asyncio.sleep(RETRY_DELAY_S)
    await message.nack(requeue=True)


KERNEL = web.AppKey("kernel", Kernel[Any])


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """Everything that makes one service different from another."""

    name: str
    settings: type[S]
    wire: Callable[[Kernel[S]], Awaitable[None]]
    routes: Sequence[Route[Any]] = ()
    database: Database | None = None
    # What it does on the broker: its user's permissions, and the entrypoints and event
    # publishes the kernel lets `wire` declare (shared/messaging/permissions.py).
    broker: ServiceAccess = field(default_factory=ServiceAccess)
    # Largest request body aiohttp reads for the service's routes.
    client_max_size: Callable[[S], int] = field(default=lambda _: 1024**2)

    def create_app(self, settings: S) -> web.Application:
        app = base_app(self.name, client_max_size=self.client_max_size(settings))
        app[BODY_TIMEOUT_S] = settings.http_body_timeout_s
        kernel = Kernel(self.name, settings, app, self.broker)
        app[KERNEL] = kernel

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await kernel.start(self.database)
            await self.wire(kernel)
            await kernel.start_consuming()
            yield
            # aiohttp has already stopped accepting and finished the requests in flight.
            await kernel.stop()

        app.cleanup_ctx.append(lifecycle)
        add_routes(app, self.routes)
        add_docs_routes(app, f"flowhooks {self.name}", self.routes)
        return app

    def main(self) -> None:
        """`python -m services.<name>`: settings from the environment, serve until
        SIGTERM."""
        settings = self.settings()
        configure_logging(self.name, settings.log_level)
        configure_tracing(self.name)
        run_service(self.create_app(settings), settings, settings.port)
