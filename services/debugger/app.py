"""debugger: wires settings, the database, the broker, the batching intake and the
ops API."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from aiohttp import web

from services.debugger.ingest import BatchIngest
from services.debugger.records import Redaction
from services.debugger.requests_api import RequestsApi
from services.debugger.retention import Retention
from services.debugger.settings import DebuggerSettings
from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail
from shared.db import open_pool
from shared.messaging import topology
from shared.messaging.connection import Broker
from shared.messaging.rpc import RpcClient
from shared.messaging.runner_client import RunnerClient
from shared.web import base_app, route_to, watch_readiness

SCHEMA = "debugger"
MIGRATIONS = Path(__file__).parent / "migrations"

SETTINGS = web.AppKey("settings", DebuggerSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", Broker)
INGEST = web.AppKey("ingest", BatchIngest)
REQUESTS_API = web.AppKey("requests_api", RequestsApi)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await open_pool(settings.database_url, settings.database_pool_max, SCHEMA, MIGRATIONS)
    broker = Broker(settings.amqp_url, "debugger", settings.publish_timeout_s)
    await broker.connect()
    app[POOL], app[BROKER] = pool, broker
    store = RequestStore(pool)
    rpc = RpcClient(broker, settings.rpc_timeout_s)
    await rpc.start()
    redaction = Redaction(
        headers=frozenset(h.lower() for h in settings.debugger_redact_headers),
        max_raw_body_bytes=settings.debugger_max_raw_body_bytes,
        query=frozenset(q.lower() for q in settings.debugger_redact_query),
        max_input_bytes=settings.debugger_max_input_bytes,
        max_trace_bytes=settings.debugger_max_trace_bytes,
        max_step_value_bytes=settings.debugger_max_step_value_bytes,
        max_response_body_bytes=settings.debugger_max_response_body_bytes,
        max_error_bytes=settings.debugger_max_error_bytes,
    )
    app[REQUESTS_API] = RequestsApi(
        store,
        rpc,
        RunnerClient(broker, rpc),
        LiveTail(broker, redaction),
        settings.debugger_replay_timeout_s,
    )
    ingest = BatchIngest(
        store,
        redaction,
        settings.debugger_batch_size,
        settings.debugger_batch_linger_ms / 1000,
        retry_delay_s=settings.debugger_write_retry_delay_s,
        max_retry_delay_s=settings.debugger_write_max_retry_delay_s,
        unknown_retries=settings.debugger_write_unknown_retries,
    )
    app[INGEST] = ingest
    await broker.consume(
        topology.DEBUGGER_EVENTS,
        ingest.on_event,
        prefetch=max(settings.debugger_prefetch, settings.debugger_batch_size),
    )

    watch_readiness(app, broker, pool)
    retention = Retention(
        pool,
        max_age_s=settings.debugger_retention_max_age_s,
        max_per_flow=settings.debugger_retention_max_per_flow,
        batch=settings.debugger_retention_batch,
        interval_s=settings.debugger_retention_interval_s,
    )
    retention_task = asyncio.create_task(retention.run_forever())
    yield
    retention_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await retention_task
    await broker.stop_consuming()
    # Write and ack the batch in progress; what cannot be written in time stays unacked
    # and is delivered again once the connection is closed.
    await ingest.close(settings.shutdown_timeout_s)
    await broker.close()
    await pool.close()


def create_app(settings: DebuggerSettings) -> web.Application:
    app = base_app("debugger")
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/v1/flows/{flow_id}/requests", route_to(REQUESTS_API, lambda api: api.list))
    app.router.add_get("/v1/requests/{request_id}", route_to(REQUESTS_API, lambda api: api.get))
    app.router.add_post(
        "/v1/requests/{request_id}/replay", route_to(REQUESTS_API, lambda api: api.replay)
    )
    app.router.add_get(
        "/v1/flows/{flow_id}/requests/stream", route_to(REQUESTS_API, lambda api: api.stream)
    )
    app.router.add_get("/v1/flows/{flow_id}/stats", route_to(REQUESTS_API, lambda api: api.stats))
    return app
