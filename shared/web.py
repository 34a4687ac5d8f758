"""The aiohttp pieces every service shares: typed app keys, the one middleware that
gives every answer an `X-Request-Id` and maps every error to the contract's envelope,
`/healthz`, `/readyz`, `/metrics`, and `run_service` (uvloop, graceful SIGTERM)."""

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import orjson
import structlog
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from shared.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.messaging.connection import Broker
from shared.settings import ServiceSettings
from shared.slow_senders import GuardedSite, Guards

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


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


OPS = web.AppKey("ops", Ops)
REQUEST_ID = web.RequestKey("request_id", str)


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
    request_id = uuid.uuid4().hex
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
        ops.http_requests.labels(name, str(response.status)).inc()
        ops.http_latency.labels(name).observe(time.perf_counter() - started)
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


def route_to(key: web.AppKey[T], pick: Callable[[T], Handler]) -> Handler:
    """A handler that calls a method of an object created later, in a cleanup context:
    routes must be added before the app starts, its resources only exist after."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await pick(request.app[key])(request)

    return handler


def base_app(service: str, client_max_size: int = 1024**2) -> web.Application:
    """An app with the envelope middleware and the three ops routes."""
    app = web.Application(middlewares=[envelope_middleware], client_max_size=client_max_size)
    app[OPS] = Ops(service)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout_s: float,
    header_timeout_s: float,
    max_header_bytes: int,
    stop: asyncio.Event,
) -> None:
    guards = Guards()
    app.on_response_prepare.append(guards.on_response_prepare)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        # Request line and each header are bounded; so is the number of headers.
        max_line_size=max_header_bytes,
        max_field_size=max_header_bytes,
        max_headers=100,
    )
    await runner.setup()  # runs the cleanup contexts' start: connections, consumers
    site = GuardedSite(runner, host, port, header_timeout_s=header_timeout_s, guards=guards)
    await site.start()
    log.info("listening", host=host, port=port)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        # Stops accepting, lets in-flight requests finish, then the cleanup contexts
        # close consumers and connections in reverse order.
        await runner.cleanup()


def run_service(app: web.Application, settings: ServiceSettings, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully (see `serve`)."""

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
        )

    uvloop.run(main())
