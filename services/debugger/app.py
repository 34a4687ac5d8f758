"""debugger: the batching intake of every request's events, retention and the ops API,
declared on the service kernel (`shared/service.py`)."""

from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web

from services.debugger import api_docs as docs
from services.debugger.alerts import BUSY_RETRY_S, AlertEvaluator, AlertSender, AlertStore
from services.debugger.alerts_api import AlertsApi
from services.debugger.callbacks import CallbackAttempts
from services.debugger.ingest import BatchIngest
from services.debugger.metrics import DebuggerMetrics
from services.debugger.records import Redaction
from services.debugger.replay_edit import Replayer
from services.debugger.replay_jobs import ReplayJobs, ReplayWorker
from services.debugger.replays import ReplayApi
from services.debugger.requests_api import RequestsApi, seconds_after
from services.debugger.retention import Retention
from services.debugger.run_status import RunStatuses
from services.debugger.settings import DebuggerSettings
from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail
from services.debugger.ui import LIST_FLOWS_DOC, PAGE_DOC, DebuggerUi
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.delivery_guard import DeliveryGuard
from shared.messaging import topology
from shared.messaging.contracts import CALLBACK_ATTEMPTED, GET_RUN_STATUS
from shared.messaging.dispatch import EventHandlers
from shared.messaging.runner_client import RunnerClient
from shared.outbound import AddressPolicy, OutboundHttp
from shared.service import Database, Kernel, Route, ServiceSpec

REQUESTS_API = web.AppKey("requests_api", RequestsApi)
REPLAY_API = web.AppKey("replay_api", ReplayApi)
ALERTS_API = web.AppKey("alerts_api", AlertsApi)
UI = web.AppKey("ui", DebuggerUi)
DATABASE = Database("debugger", Path(__file__).parent / "migrations")


@dataclass(frozen=True)
class Pools:
    ingest: asyncpg.Pool
    api: asyncpg.Pool
    rpc: asyncpg.Pool


async def database_pools(kernel: Kernel[DebuggerSettings]) -> Pools:
    settings = kernel.settings
    if settings.debugger_list_concurrency >= settings.debugger_api_pool_max:
        # Detail and ownership lookups must always find an API connection.
        raise ValueError(
            "FLOWHOOKS_DEBUGGER_LIST_CONCURRENCY must be below FLOWHOOKS_DEBUGGER_API_POOL_MAX"
        )
    timeout_ms = settings.debugger_api_statement_timeout_ms
    return Pools(
        # No statement timeout (0 overrides any database default): it must never drop
        # a row.
        ingest=await kernel.named_pool(
            "ingest", settings.debugger_ingest_pool_max, statement_timeout_ms=0
        ),
        api=await kernel.named_pool(
            "api", settings.debugger_api_pool_max, statement_timeout_ms=timeout_ms
        ),
        rpc=await kernel.named_pool(
            "rpc", settings.debugger_rpc_pool_max, statement_timeout_ms=timeout_ms
        ),
    )


def redaction(settings: DebuggerSettings) -> Redaction:
    return Redaction(
        headers=frozenset(h.lower() for h in settings.debugger_redact_headers),
        max_raw_body_bytes=settings.debugger_max_raw_body_bytes,
        query=frozenset(q.lower() for q in settings.debugger_redact_query),
        max_input_bytes=settings.debugger_max_input_bytes,
        max_trace_bytes=settings.debugger_max_trace_bytes,
        max_step_value_bytes=settings.debugger_max_step_value_bytes,
        max_response_body_bytes=settings.debugger_max_response_body_bytes,
        max_error_bytes=settings.debugger_max_error_bytes,
    )


async def wire(kernel: Kernel[DebuggerSettings]) -> None:
    settings = kernel.settings
    metrics = DebuggerMetrics(kernel.metrics.registry)
    # A pool per kind of work (kernel.pool serves the background jobs): API load cannot
    # take the intake's or the status RPC's connections.
    pools = await database_pools(kernel)
    store = RequestStore(pools.api)
    redact = redaction(settings)
    timeout_ms = settings.debugger_api_statement_timeout_ms
    tail = LiveTail(kernel.broker, redact)

    async def end_tails(_: web.Application) -> None:
        await tail.close()

    # Before the server waits for its requests to finish (aiohttp's on_shutdown).
    kernel.app.on_shutdown.append(end_tails)
    kernel.provide(
        REQUESTS_API,
        RequestsApi(
            store,
            kernel.rpc,
            tail,
            limiter=WorkspaceLimiter(
                total=settings.debugger_list_concurrency,
                per_workspace=settings.debugger_list_per_workspace,
                max_waiting=settings.debugger_list_queue,
                wait_s=settings.debugger_list_wait_s,
                # A slot frees within the statement timeout at the latest.
                retry_after_s=seconds_after(timeout_ms),
                time_share=settings.debugger_list_time_share,
                time_burst_s=timeout_ms / 1000,
            ),
            statement_timeout_ms=timeout_ms,
        ),
    )
    # Replays (replays.py): one request, edited or not, and bulk jobs (replay_jobs.py),
    # worked by whichever replica holds a job's lease.
    replayer = Replayer(RunnerClient(kernel.broker, kernel.rpc), settings.debugger_replay_timeout_s)
    replay_jobs = ReplayJobs(kernel.pool, settings.debugger_replay_max_requests)
    replay_worker = ReplayWorker(
        replay_jobs,
        RequestStore(kernel.pool),  # the originals, read on the background pool
        replayer,
        in_flight=settings.debugger_replay_in_flight,
        rate=settings.debugger_replay_rate,
        chunk=settings.debugger_replay_chunk,
        lease_s=settings.debugger_replay_lease_s,
        poll_s=settings.debugger_replay_poll_s,
        max_jobs=settings.debugger_replay_max_jobs,
        slice_s=settings.debugger_replay_slice_s,
    )
    kernel.provide(
        REPLAY_API,
        ReplayApi(
            store, kernel.rpc, kernel.app[REQUESTS_API], replayer, replay_jobs, replay_worker
        ),
    )
    kernel.background(replay_worker.run_forever())
    # Alerts (alerts.py): evaluated off the ingest path, delivered from an outbox.
    alert_policy = AddressPolicy(settings.debugger_alert_allow_networks)
    alert_store = AlertStore(kernel.pool)
    alert_http = OutboundHttp(alert_policy)
    alert_sender = AlertSender(
        alert_store,
        alert_http,
        timeout_s=settings.debugger_alert_timeout_s,
        max_attempts=settings.debugger_alert_max_attempts,
        retry_delay_s=settings.debugger_alert_retry_delay_s,
        max_retry_delay_s=settings.debugger_alert_max_retry_delay_s,
        poll_interval_s=settings.debugger_alert_poll_interval_s,
        concurrency=settings.debugger_alert_concurrency,
        connect_timeout_s=settings.debugger_alert_connect_timeout_s,
        first_byte_timeout_s=settings.debugger_alert_first_byte_timeout_s,
        # Per destination and per workspace, so a tarpit delays only its owner.
        guard=DeliveryGuard(
            per_destination=settings.debugger_alert_per_destination,
            slots=settings.debugger_alert_slots,
            failures_to_open=settings.debugger_alert_breaker_failures,
            cool_down_s=settings.debugger_alert_breaker_cool_down_s,
            busy_retry_s=BUSY_RETRY_S,
        ),
    )
    alert_evaluator = AlertEvaluator(
        alert_store,
        eval_interval_s=settings.debugger_alert_eval_interval_s,
        sweep_interval_s=settings.debugger_alert_sweep_interval_s,
        queue_size=settings.debugger_alert_queue_size,
        on_fired=alert_sender.wake,
    )
    kernel.provide(
        ALERTS_API,
        AlertsApi(
            alert_store,
            kernel.rpc,
            # The same ownership check (and read-through) as the requests API.
            kernel.app[REQUESTS_API]._visible_flow,
            alert_policy,
        ),
    )
    kernel.background(alert_evaluator.run_forever())
    kernel.background(alert_sender.run_forever())
    kernel.on_shutdown(alert_http.close)
    ingest = BatchIngest(
        RequestStore(pools.ingest),
        redact,
        settings.debugger_batch_size,
        settings.debugger_batch_linger_ms / 1000,
        retry_delay_s=settings.debugger_write_retry_delay_s,
        max_retry_delay_s=settings.debugger_write_max_retry_delay_s,
        unknown_retries=settings.debugger_write_unknown_retries,
        runner_user=settings.runner_user,
        after_write=alert_evaluator.note_written,
        metrics=metrics,
    )
    metrics.watch(ingest, alert_sender, kernel.app[REQUESTS_API].limiter)
    # The ingest settles its messages itself, one ack per written batch.
    kernel.consume(
        topology.DEBUGGER_EVENTS,
        ingest.on_event,
        prefetch=max(settings.debugger_prefetch, settings.debugger_batch_size),
    )
    # Write and ack the batch in progress; what cannot be written in time stays unacked
    # and is delivered again once the connection is closed.
    kernel.on_shutdown(lambda: ingest.close(settings.shutdown_timeout_s))
    retention = Retention(
        kernel.pool,
        max_age_s=settings.debugger_retention_max_age_s,
        max_per_flow=settings.debugger_retention_max_per_flow,
        batch=settings.debugger_retention_batch,
    )
    kernel.periodic("retention", settings.debugger_retention_interval_s, retention.sweep)
    # Completion callback attempts (callbacks.py): their own queue, one row each,
    # believed only from the runners' broker user (a forged one is dropped).
    callback_attempts = CallbackAttempts(kernel.pool)
    callback_events = EventHandlers()
    callback_events.on(
        CALLBACK_ATTEMPTED, callback_attempts.record, published_by=settings.runner_user
    )
    kernel.on_events(topology.DEBUGGER_CALLBACKS, callback_events, prefetch=32)
    kernel.periodic(
        "callback_attempts_prune",
        settings.debugger_retention_interval_s,
        lambda: callback_attempts.prune(
            settings.debugger_retention_max_age_s, settings.debugger_retention_batch
        ),
    )
    # The ingress's status URL (`/v1/flow-webhook/{flow_id}/runs/{request_id}`).
    kernel.serve(GET_RUN_STATUS, RunStatuses(pools.rpc).get, prefetch=32)
    # The web page (ui.py): a static shell that calls the JSON API above.
    kernel.provide(UI, DebuggerUi(pools.api, kernel.rpc))


SERVICE = ServiceSpec(
    name="debugger",
    settings=DebuggerSettings,
    port=lambda settings: settings.debugger_port,
    wire=wire,
    database=DATABASE,
    routes=(
        Route(
            "GET",
            "/v1/flows/{flow_id}/requests",
            REQUESTS_API,
            lambda api: api.list,
            docs.LIST_REQUESTS,
        ),
        Route(
            "GET", "/v1/requests/{request_id}", REQUESTS_API, lambda api: api.get, docs.GET_REQUEST
        ),
        Route(
            "POST",
            "/v1/requests/{request_id}/replay",
            REPLAY_API,
            lambda api: api.replay,
            docs.REPLAY,
        ),
        Route(
            "POST",
            "/v1/flows/{flow_id}/replays",
            REPLAY_API,
            lambda api: api.start_job,
            docs.START_JOB,
        ),
        Route("GET", "/v1/replays/{job_id}", REPLAY_API, lambda api: api.get_job, docs.GET_JOB),
        Route(
            "DELETE",
            "/v1/replays/{job_id}",
            REPLAY_API,
            lambda api: api.cancel_job,
            docs.CANCEL_JOB,
        ),
        Route(
            "GET",
            "/v1/flows/{flow_id}/requests/stream",
            REQUESTS_API,
            lambda api: api.stream,
            docs.STREAM,
        ),
        Route("GET", "/v1/flows/{flow_id}/stats", REQUESTS_API, lambda api: api.stats, docs.STATS),
        Route("PUT", "/v1/flows/{flow_id}/alert", ALERTS_API, lambda api: api.put, docs.PUT_ALERT),
        Route("GET", "/v1/flows/{flow_id}/alert", ALERTS_API, lambda api: api.get, docs.GET_ALERT),
        Route(
            "DELETE",
            "/v1/flows/{flow_id}/alert",
            ALERTS_API,
            lambda api: api.delete,
            docs.DELETE_ALERT,
        ),
        Route("GET", "/v1/flows", UI, lambda ui: ui.flows, LIST_FLOWS_DOC),
        Route("GET", "/ui", UI, lambda ui: ui.redirect, PAGE_DOC),
        Route("GET", "/ui/", UI, lambda ui: ui.index, PAGE_DOC),
        Route("GET", "/ui/static/{name}", UI, lambda ui: ui.asset, PAGE_DOC),
    ),
)


def create_app(settings: DebuggerSettings) -> web.Application:
    return SERVICE.create_app(settings)
