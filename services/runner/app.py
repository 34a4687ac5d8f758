"""runner: the flows API, the run consumers (sync and async queues, flows run in the
worker pool) and the flow-access RPC, declared on the service kernel
(`shared/service.py`)."""

import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from services.runner import api_docs as docs
from services.runner.access import FlowAccess
from services.runner.callbacks import BUSY_DEFER_S, CallbackSender
from services.runner.dedup import DedupKeys
from services.runner.drain_reports import DrainReports
from services.runner.finished import FinishedRuns
from services.runner.flows_api import FlowsApi
from services.runner.metrics import RunnerMetrics
from services.runner.pool import WorkerPool
from services.runner.runs import FlowCache, RunService, async_window
from services.runner.settings import RunnerSettings
from services.runner.store import FlowStore
from services.runner.templates import TemplateEngine
from services.runner.worker_protocol import WorkerConfig
from shared.delivery_guard import DeliveryGuard
from shared.messaging import naming, topology
from shared.messaging.batching import BatchPublisher
from shared.messaging.contracts import (
    ASYNC_RUNS,
    CALLBACK_ATTEMPTED,
    CALLBACKS,
    CLAIM_DEDUP_KEY,
    FLOW_CHANGED,
    GET_FLOW_OWNER,
    IDENTIFY_TOKEN,
    LIST_FLOW_ACCESS,
    PARKED_RUNS,
    RUN_FINISHED,
    RUN_STARTED,
    SYNC_RUNS,
)
from shared.messaging.permissions import ServiceAccess
from shared.messaging.rpc import GroupedReplies
from shared.openapi import Operation
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.runs import RunFinished
from shared.secret_box import SecretBox
from shared.service import Database, Kernel, Route, ServiceSpec
from shared.web import Handler

FLOWS_API = web.AppKey("flows_api", FlowsApi)
DATABASE = Database("runner", Path(__file__).parent / "migrations")


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


async def wire(kernel: Kernel[RunnerSettings]) -> None:
    settings = kernel.settings
    store = FlowStore(kernel.pool)
    templates = TemplateEngine(
        settings.runner_template_cache_size,
        settings.runner_render_timeout_s,
        settings.runner_max_output_chars,
    )
    access = await FlowAccess.open(store, kernel.broker, settings.token_ring())
    key = settings.webhook_secrets_key
    secret_box = SecretBox(key.get_secret_value()) if key is not None else None
    callback_policy = AddressPolicy(settings.runner_callback_allow_networks)
    kernel.provide(
        FLOWS_API,
        FlowsApi(
            store,
            access,
            kernel.rpc,
            templates,
            settings.runner_max_timeout_s,
            settings.runner_webhook_base_url,
            secret_box,
            callback_policy,
        ),
    )

    workers = WorkerPool(
        worker_config(settings),
        workers=settings.runner_workers or os.cpu_count() or 1,
        slots_per_worker=settings.runner_worker_slots,
        workspace_share=settings.runner_workspace_share,
        slice_s=settings.runner_run_slice_s,
        max_workers=settings.runner_max_workers,
        spare_workers=settings.runner_spare_workers,
        idle_s=settings.runner_worker_idle_s,
        log_level=settings.log_level,
    )
    await workers.start()
    kernel.on_shutdown(lambda: workers.close(settings.shutdown_timeout_s))
    finished: BatchPublisher[RunFinished] = BatchPublisher(
        kernel.broker, RUN_FINISHED, max_items=settings.runner_event_batch
    )
    replies = GroupedReplies(kernel.broker)
    finished_runs = FinishedRuns(kernel.pool, settings.runner_finished_keep_s)
    dedup_keys = DedupKeys(kernel.pool)
    # Completion callbacks of async runs: sent here, in the supervisor (callbacks.py).
    callback_http = OutboundHttp(callback_policy)
    kernel.on_shutdown(callback_http.close)
    callbacks = CallbackSender(
        kernel.broker,
        callback_http,
        secret_box,
        delays_s=settings.runner_callback_retry_delays_s,
        give_up_s=settings.runner_callback_give_up_s,
        timeout_s=settings.runner_callback_timeout_s,
        connect_timeout_s=settings.runner_callback_connect_timeout_s,
        first_byte_timeout_s=settings.runner_callback_first_byte_timeout_s,
        # Per destination and per workspace, so a tarpit delays only its owner.
        guard=DeliveryGuard(
            per_destination=settings.runner_callback_per_destination,
            slots=settings.runner_callback_slots,
            failures_to_open=settings.runner_callback_breaker_failures,
            cool_down_s=settings.runner_callback_breaker_cool_down_s,
            busy_retry_s=BUSY_DEFER_S,
        ),
    )
    # Hooks run last registered first: replies and events go out before workers stop.
    metrics = RunnerMetrics(kernel.metrics.registry)
    kernel.on_shutdown(finished_runs.drain)
    kernel.on_shutdown(replies.drain)
    kernel.on_shutdown(finished.drain)
    drain_reports = DrainReports(kernel.broker)
    async_prefetch = settings.runner_async_prefetch or async_window(
        workers.max_workers * workers.slots
    )
    kernel.periodic("drain_reports", settings.runner_drain_report_interval_s, drain_reports.flush)
    kernel.on_shutdown(drain_reports.flush)
    runs = RunService(
        kernel.broker,
        FlowCache(store),
        workers,
        finished,
        BatchPublisher(kernel.broker, RUN_STARTED) if settings.runner_record_started else None,
        replies,
        finished_runs,
        dedup_keys,
        accept_run_timeout_s=settings.runner_max_timeout_s,
        callbacks=callbacks,
        metrics=metrics,
        drain_reports=drain_reports,
        waiting_messages_per_workspace=settings.runner_async_waiting_messages,
        # At least three quarters of the window stay for runs that start at once.
        waiting_messages_max=max(1, async_prefetch // 4),
    )
    metrics.watch(workers, callbacks, runs)
    kernel.periodic("finished_runs_prune", 60.0, finished_runs.prune)
    kernel.periodic("dedup_keys_prune", 60.0, dedup_keys.prune)
    kernel.serve(CLAIM_DEDUP_KEY, dedup_keys.claim)
    kernel.serve(LIST_FLOW_ACCESS, access.list_flow_access)
    kernel.serve(GET_FLOW_OWNER, access.flow_owner)
    kernel.on_command(SYNC_RUNS, runs.on_sync_runs, prefetch=settings.runner_sync_prefetch)
    kernel.on_command(ASYNC_RUNS, runs.on_async_runs, prefetch=async_prefetch)
    kernel.on_command(CALLBACKS, callbacks.on_callback, prefetch=settings.runner_callback_prefetch)


def _flow_route(
    method: str, path: str, pick: Callable[[FlowsApi], Handler], doc: Operation
) -> Route[FlowsApi]:
    return Route(method, path, FLOWS_API, pick, doc)


SERVICE = ServiceSpec(
    name="runner",
    settings=RunnerSettings,
    wire=wire,
    database=DATABASE,
    broker=ServiceAccess(
        serves=(CLAIM_DEDUP_KEY, LIST_FLOW_ACCESS, GET_FLOW_OWNER),
        consumes=(SYNC_RUNS, ASYNC_RUNS, CALLBACKS),
        # Identifying API tokens.
        calls=(IDENTIFY_TOKEN,),
        # A batch it cannot run whole is split back onto its queue; async runs parked
        # while their workspace is at its share; callbacks enqueued, and parked in the
        # wait ladder between attempts.
        sends=(SYNC_RUNS, ASYNC_RUNS, PARKED_RUNS, CALLBACKS, *topology.CALLBACK_WAITS),
        publishes=(FLOW_CHANGED, RUN_FINISHED, RUN_STARTED, CALLBACK_ATTEMPTED),
        # To the ingress process that queued them: its async runs that finished.
        publishes_to_processes=(naming.runs_drained_key,),
    ),
    routes=(
        _flow_route("POST", "/v1/flows", lambda api: api.create, docs.CREATE),
        _flow_route("GET", "/v1/flows", lambda api: api.list, docs.LIST),
        _flow_route("GET", "/v1/flows/{flow_id}", lambda api: api.get, docs.GET),
        _flow_route("PUT", "/v1/flows/{flow_id}", lambda api: api.replace, docs.REPLACE),
        _flow_route("PATCH", "/v1/flows/{flow_id}", lambda api: api.patch, docs.PATCH),
        _flow_route("DELETE", "/v1/flows/{flow_id}", lambda api: api.delete, docs.DELETE),
        _flow_route("GET", "/v1/flows/{flow_id}/webhook", lambda api: api.webhook, docs.WEBHOOK),
        _flow_route(
            "POST",
            "/v1/flows/{flow_id}/webhook/rotate-token",
            lambda api: api.rotate_token,
            docs.ROTATE_TOKEN,
        ),
    ),
)
