"""The aiohttp pieces every service shares: typed app keys, the one middleware that
gives every answer an `X-Request-Id` and maps every error to the contract's envelope,
`/healthz`, `/readyz`, `/metrics`, bounded body reading, and `run_service` (uvloop,
graceful SIGTERM).

Two listeners per process: the service's own port (its API; also `/healthz` and
`/readyz`, which load balancers ask there) and the ops port (`/metrics`, `/healthz`,
`/readyz`), which deployments keep off the public network: metrics name flows, routes
and error rates that are nobody's business outside the cluster."""

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from shared import db, heap
from shared.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
)
from shared.messaging.connection import Broker
from shared.request_ids import new_request_id
from shared.settings import ServiceSettings
from shared.slow_senders import GuardedSite, Guards

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


@dataclass
class Ops:
    """Per-app metrics registry and readiness checks (no module-level globals)."""

    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.http_requests = Counter(
            "flowhooks_http_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "flowhooks_http_request_seconds",
            "HTTP request handling time",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # Each (route, status)'s children, bound on first use: a label look-up costs a
        # lock, a tuple and a dict probe per request otherwise. Routes and statuses are
        # closed sets, so these stay small.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def answered(self, route: str, status: int, seconds: float) -> None:
        """One request answered: counted by route and status, timed by route."""
        counted = self._counted.get((route, status))
        if counted is None:
            counted = self._counted[route, status] = self.http_requests.labels(route, str(status))
        counted.inc()
        timed = self._timed.get(route)
        if timed is None:
            timed = self._timed[route] = self.http_latency.labels(route)
        timed.observe(seconds)


OPS = web.AppKey("ops", Ops)
REQUEST_ID = web.RequestKey("request_id", str)
# Set by `ServiceSpec.create_app` from `http_body_timeout_s`; a bare app (tests) uses
# the default below.
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)
DEFAULT_BODY_TIMEOUT_S = 30.0


def watch_readiness(app: web.Application, broker: Broker, pool: asyncpg.Pool | None = None) -> None:
    """`/readyz` checks: the broker connection, and the database where there is one."""

    async def broker_ready() -> bool:
        return broker.is_connected

    app[OPS].readiness["broker"] = broker_ready
    if pool is not None:
        database = pool

        async def database_ready() -> bool:
            return bool(await database.fetchval("SELECT 1"))

        app[OPS].readiness["database"] = database_ready


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.envelope(), status=error.status_code, headers=error.headers())


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such resource")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method {exc.method} is not allowed here")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the request body is too large")
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaType(exc.text or "unsupported media type")
    if exc.status_code < 500:
        return BadRequest(exc.reason)
    return InternalError(exc.reason)


@web.middleware
async def envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # Time-ordered (UUIDv7): the debugger finds a request's record by the time in its id.
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        response = error_response(_from_http_exception(exc))
    except (
        asyncpg.exceptions.CharacterNotInRepertoireError,
        asyncpg.exceptions.UntranslatableCharacterError,
    ):
        # U+0000 in a text the caller sent (a name, a path, a JSON string): PostgreSQL
        # cannot store it. The caller's input, so a 400 rather than a 500.
        response = error_response(BadRequest("the request holds U+0000, which cannot be stored"))
    except db.UNAVAILABLE as exc:
        # No writable database right now (down, or a failover in progress): the caller
        # may retry; a write that failed this way was not acknowledged to anyone.
        log.warning("database_unavailable", path=request.path, error=repr(exc))
        response = error_response(Unavailable("the database is unavailable; try again"))
    except asyncpg.exceptions.QueryCanceledError as exc:
        # Past its pool's statement_timeout (or cancelled by an operator): the database
        # is too busy for it now. A handler that knows the caller chose the cost (a
        # search) answers 400 itself.
        log.warning("statement_cancelled", path=request.path, error=repr(exc))
        response = error_response(Unavailable("the database did not answer in time; try again"))
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = error_response(InternalError("internal error"))
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:  # a stream (server-sent events) has sent its headers
        response.headers["X-Request-Id"] = request_id
    ops = request.app.get(OPS)
    if ops is not None:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        ops.answered(name, response.status, time.perf_counter() - started)
    return response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    checks: dict[str, bool] = {}
    for name, check in ops.readiness.items():
        try:
            checks[name] = await check()
        except Exception:
            checks[name] = False
    ready = all(checks.values())
    return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[OPS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def read_body(request: web.Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or `PayloadTooLarge` past `max_bytes` (before reading it when the
    length is announced) and `RequestTimeout` (408) when it does not arrive within
    `timeout_s`: aiohttp itself waits for a slow sender forever."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    content = request.content
    if content.is_eof():
        # All of it arrived with the headers (most webhooks: one segment): it is in the
        # buffer, so no wait to bound and no chunk loop.
        body = content.read_nowait()
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def read_api_body(request: web.Request) -> bytes:
    """An API request's body, bounded by the app's `client_max_size` and the service's
    `FLOWHOOKS_HTTP_BODY_TIMEOUT_S`."""
    return await read_body(
        request,
        max_bytes=request.client_max_size,
        timeout_s=request.app.get(BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S),
    )


def base_app(service: str, client_max_size: int = 1024**2) -> web.Application:
    """An app with the envelope middleware and the probes; `/metrics` is on the ops app."""
    app = web.Application(middlewares=[envelope_middleware], client_max_size=client_max_size)
    app[OPS] = Ops(service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def ops_app(app: web.Application) -> web.Application:
    """What the ops port serves for `app`: its metrics and the same probes (one `Ops`,
    so the readiness checks the service registers later count here too)."""
    ops = web.Application(middlewares=[envelope_middleware], client_max_size=1024)
    ops[OPS] = app[OPS]
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    ops.router.add_get("/metrics", metrics)
    return ops


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout_s: float,
    header_timeout_s: float,
    max_header_bytes: int,
    stop: asyncio.Event,
    ops_port: int | None = None,
) -> None:
    """Serve `app` on `port` and, when `ops_port` is given, its `ops_app` there."""

    def runner_for(served: web.Application, shutdown_s: float) -> web.AppRunner:
        return web.AppRunner(
            served,
            access_log=None,
            shutdown_timeout=shutdown_s,
            # Request line and each header are bounded; so is the number of headers.
            max_line_size=max_header_bytes,
            max_field_size=max_header_bytes,
            max_headers=100,
        )

    async def listen(runner: web.AppRunner, at: int, guards: Guards) -> None:
        site = GuardedSite(runner, host, at, header_timeout_s=header_timeout_s, guards=guards)
        await site.start()

    guards = Guards()
    runner = runner_for(app, shutdown_timeout_s)
    ops_runner: web.AppRunner | None = None
    await runner.setup()  # runs the cleanup contexts' start: connections, consumers
    try:
        if ops_port is not None:
            # Started after the service's setup: its readiness checks exist by then.
            ops = ops_app(app)
            ops_guards = Guards()
            ops_runner = runner_for(ops, 1.0)
            await ops_runner.setup()
            await listen(ops_runner, ops_port, ops_guards)
        await listen(runner, port, guards)
        heap.settle()  # start-up is over: what it made lives as long as the process
        log.info("listening", host=host, port=port, ops_port=ops_port)
        await stop.wait()
    finally:
        log.info("stopping")
        # Stops accepting, lets in-flight requests finish, then the cleanup contexts
        # close consumers and connections in reverse order. The ops port goes last, so
        # metrics stay readable while the service drains.
        await runner.cleanup()
        if ops_runner is not None:
            await ops_runner.cleanup()


def run_service(
    app: web.Application, settings: ServiceSettings, port: int, ops_port: int | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (see `serve`). The ops port
    is `ops_port` if given, else the service's own setting (`settings.ops_port`)."""
    ops_port = settings.ops_port if ops_port is None else ops_port
    if ops_port == port:
        raise ValueError(f"the ops port and the service port are both {port}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(
            app,
            settings.host,
            port,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            header_timeout_s=settings.http_header_timeout_s,
            max_header_bytes=settings.http_max_header_bytes,
            stop=stop,
            ops_port=ops_port,
        )

    uvloop.run(main())
