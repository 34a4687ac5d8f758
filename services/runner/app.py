"""runner: wires settings, the database, the broker, the flows API, the run consumers
(sync RPC and async queue) and the flow-access RPC."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from aiohttp import web

from services.runner.access import FlowAccess
from services.runner.finished import FinishedRuns
from services.runner.flows_api import FlowsApi
from services.runner.pool import WorkerPool
from services.runner.runs import FlowCache, RunService
from services.runner.settings import RunnerSettings
from services.runner.store import FlowStore
from services.runner.templates import TemplateEngine
from services.runner.worker_protocol import WorkerConfig
from shared.db import open_pool
from shared.messaging import topology
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import LIST_FLOW_ACCESS, RUN_FINISHED, RUN_STARTED
from shared.messaging.rpc import GroupedReplies, RpcClient, RpcServer
from shared.schemas.runs import RunFinished
from shared.web import base_app, route_to, watch_readiness

SCHEMA = "runner"
MIGRATIONS = Path(__file__).parent / "migrations"

SETTINGS = web.AppKey("settings", RunnerSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", Broker)
FLOWS_API = web.AppKey("flows_api", FlowsApi)
WORKERS = web.AppKey("workers", WorkerPool)


def worker_config(settings: RunnerSettings) -> WorkerConfig:
    return WorkerConfig(
        render_timeout_s=settings.runner_render_timeout_s,
        max_output_chars=settings.runner_max_output_chars,
        template_cache_size=settings.runner_template_cache_size,
        http_allow_networks=settings.runner_http_allow_networks,
        http_max_response_bytes=settings.runner_http_max_response_bytes,
        loop_max_items=settings.runner_loop_max_items,
        max_loop_iterations=settings.runner_max_loop_iterations,
        max_value_bytes=settings.runner_max_value_bytes,
        max_trace_steps=settings.runner_max_trace_steps,
        max_trace_bytes=settings.runner_max_trace_bytes,
        max_response_bytes=settings.runner_max_response_bytes,
        memory_mb=settings.runner_worker_memory_mb,
        run_cpu_s=settings.runner_run_cpu_s,
    )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await open_pool(settings.database_url, settings.database_pool_max, SCHEMA, MIGRATIONS)
    broker = Broker(settings.amqp_url, "runner", settings.publish_timeout_s)
    await broker.connect()
    app[POOL], app[BROKER] = pool, broker

    store = FlowStore(pool)
    templates = TemplateEngine(
        settings.runner_template_cache_size,
        settings.runner_render_timeout_s,
        settings.runner_max_output_chars,
    )
    access = FlowAccess(store, broker, settings.runner_token_key.get_secret_value())
    rpc = RpcClient(broker, settings.rpc_timeout_s)
    await rpc.start()
    app[FLOWS_API] = FlowsApi(
        store,
        access,
        rpc,
        templates,
        settings.runner_max_timeout_s,
        settings.runner_webhook_base_url,
    )

    workers = WorkerPool(
        worker_config(settings),
        workers=settings.runner_workers or os.cpu_count() or 1,
        slots_per_worker=settings.runner_worker_slots,
        workspace_share=settings.runner_workspace_share,
        slice_s=settings.runner_run_slice_s,
        log_level=settings.log_level,
    )
    await workers.start()
    app[WORKERS] = workers
    finished: BatchPublisher[RunFinished] = BatchPublisher(
        broker,
        RUN_FINISHED,
        max_items=settings.runner_event_batch,
    )
    replies = GroupedReplies(broker)
    finished_runs = FinishedRuns(pool, settings.runner_finished_keep_s)
    runs = RunService(
        broker,
        FlowCache(store),
        workers,
        finished,
        BatchPublisher(broker, RUN_STARTED) if settings.runner_record_started else None,
        replies,
        finished_runs,
    )
    pruning = asyncio.create_task(finished_runs.prune_forever(60.0))
    control = RpcServer(broker, topology.RUNNER_RPC, prefetch=8)
    control.register(LIST_FLOW_ACCESS, access.list_flow_access)
    await control.start()
    await broker.consume(
        topology.SYNC_RUNS, runs.on_sync_runs, prefetch=settings.runner_sync_prefetch
    )
    await broker.consume(
        topology.ASYNC_RUNS, runs.on_async_runs, prefetch=settings.runner_async_prefetch
    )

    watch_readiness(app, broker, pool)
    yield
    await broker.stop_consuming()
    await runs.wait_idle(settings.shutdown_timeout_s)
    await control.wait_idle(settings.shutdown_timeout_s)
    await finished.drain()
    await replies.drain()
    await finished_runs.drain()
    pruning.cancel()
    await workers.close(settings.shutdown_timeout_s)
    await broker.close()
    await pool.close()


def create_app(settings: RunnerSettings) -> web.Application:
    app = base_app("runner")
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    api = FLOWS_API
    app.router.add_post("/v1/flows", route_to(api, lambda a: a.create))
    app.router.add_get("/v1/flows", route_to(api, lambda a: a.list))
    app.router.add_get("/v1/flows/{flow_id}", route_to(api, lambda a: a.get))
    app.router.add_put("/v1/flows/{flow_id}", route_to(api, lambda a: a.replace))
    app.router.add_patch("/v1/flows/{flow_id}", route_to(api, lambda a: a.patch))
    app.router.add_delete("/v1/flows/{flow_id}", route_to(api, lambda a: a.delete))
    app.router.add_get("/v1/flows/{flow_id}/webhook", route_to(api, lambda a: a.webhook))
    app.router.add_post(
        "/v1/flows/{flow_id}/webhook/rotate-token", route_to(api, lambda a: a.rotate_token)
    )
    return app
