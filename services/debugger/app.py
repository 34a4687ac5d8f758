"""debugger: the batching intake of every request's events, retention and the ops API,
declared on the service kernel (`shared/service.py`)."""

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from services.debugger.alerts import ALERT_DELIVERY, AlertEvaluator, AlertSender, AlertStore
from services.debugger.alerts_api import AlertConfig, AlertsApi, AlertView
from services.debugger.callbacks import CallbackAttempts
from services.debugger.ingest import BatchIngest
from services.debugger.legacy_copy import LegacyRequests
from services.debugger.metrics import DebuggerMetrics
from services.debugger.partitions import Partitions
from services.debugger.records import Redaction
from services.debugger.replay_edit import Replayer
from services.debugger.replay_jobs import ReplayJobs, ReplayWorker
from services.debugger.replays import NewReplayJob, ReplayApi, ReplayEdit, ReplayJob, ReplayResult
from services.debugger.requests_api import (
    EventStream,
    FlowSeriesView,
    FlowStats,
    RequestDetail,
    RequestList,
    RequestListQuery,
    RequestsApi,
    SeriesQuery,
    StatsQuery,
    seconds_after,
)
from services.debugger.retention import Retention
from services.debugger.run_status import RunStatuses
from services.debugger.settings import DebuggerSettings
from services.debugger.source_list import KnownSources, SourceList
from services.debugger.source_replays import SourceReplays
from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail
from services.debugger.ui import DebuggerUi, Html, KnownFlows
from services.debugger.visibility import FlowVisibility, StoredRequests
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.api_auth import DEBUGGER_READ, DEBUGGER_REPLAY, MANAGE
from shared.delivery import DeliveryEngine
from shared.http_api import Route
from shared.messaging import naming, topology
from shared.messaging.contracts import (
    ASYNC_RUNS,
    CALLBACK_ATTEMPTED,
    GET_FLOW_OWNER,
    GET_RUN_STATUS,
    GET_SOURCE,
    IDENTIFY_TOKEN,
    LIST_SOURCES,
    SYNC_RUNS,
)
from shared.messaging.dispatch import EventHandlers
from shared.messaging.permissions import ProcessQueue, ServiceAccess
from shared.messaging.runner_client import RunnerClient
from shared.outbound import AddressPolicy, OutboundHttp
from shared.service import Database, Kernel, ServiceSpec

log = structlog.get_logger(__name__)
REQUESTS_API = web.AppKey("requests_api", RequestsApi)
REPLAY_API = web.AppKey("replay_api", ReplayApi)
ALERTS_API = web.AppKey("alerts_api", AlertsApi)
UI = web.AppKey("ui", DebuggerUi)
SOURCE_LIST = web.AppKey("source_list", SourceList)
# The path's flow or stored request, as the caller may see it (visibility.py).
FLOW = web.AppKey("flow", FlowVisibility)
STORED_REQUEST = web.AppKey("stored_request", StoredRequests)
REQUESTS, REPLAYS, ALERTS = ("requests",), ("replays",), ("alerts",)
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
    # Time partitions (partitions.py), and the old unpartitioned table while its rows
    # are moved over (legacy_copy.py): every reader below reads through `legacy`.
    partitions = Partitions(
        kernel.pool,
        interval=timedelta(seconds=settings.debugger_partition_interval_s),
        ahead=timedelta(seconds=settings.debugger_partition_ahead_s),
        max_age=timedelta(seconds=settings.debugger_retention_max_age_s),
    )
    legacy = LegacyRequests(
        kernel.pool,
        partitions,
        batch=settings.debugger_legacy_copy_batch,
        pause_s=settings.debugger_legacy_copy_pause_s,
    )
    await legacy.refresh()
    try:
        # Before the intake starts: today's partitions exist (the migration made three
        # days), and any rows of the default partition find theirs.
        await partitions.maintain()
    except Exception as exc:  # the periodic job tries again
        log.warning("partitions_not_maintained", error=repr(exc))
    kernel.periodic("partitions", settings.debugger_partition_check_interval_s, partitions.maintain)
    kernel.background(legacy.run_forever())
    store = RequestStore(pools.api, legacy, partitions)
    redact = redaction(settings)
    timeout_ms = settings.debugger_api_statement_timeout_ms
    kernel.provide(FLOW, FlowVisibility(store, kernel.rpc))
    kernel.provide(STORED_REQUEST, StoredRequests(store))
    tail = LiveTail(kernel.broker, redact)

    async def end_tails(_: web.Application) -> None:
        await tail.close()

    # Before the server waits for its requests to finish (aiohttp's on_shutdown).
    kernel.app.on_shutdown.append(end_tails)
    kernel.provide(
        REQUESTS_API,
        RequestsApi(
            store,
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
            search_window_s=settings.debugger_search_window_s,
        ),
    )
    # Replays (replays.py): one request, edited or not, and bulk jobs (replay_jobs.py),
    # worked by whichever replica holds a job's lease.
    replayer = Replayer(RunnerClient(kernel.broker, kernel.rpc), settings.debugger_replay_timeout_s)
    replay_jobs = ReplayJobs(kernel.pool, settings.debugger_replay_max_requests, legacy)
    replay_worker = ReplayWorker(
        replay_jobs,
        RequestStore(kernel.pool, legacy),  # the originals, read on the background pool
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
            replayer,
            replay_jobs,
            replay_worker,
            SourceReplays(
                kernel.rpc,
                kernel.broker,
                RequestStore(kernel.pool),
                redaction(settings),
                settings.debugger_replay_filter_budget,
            ),
        ),
    )
    kernel.background(replay_worker.run_forever())
    # Alerts (alerts.py): evaluated off the ingest path, delivered from an outbox.
    alert_delivery = settings.alert_delivery()
    alert_policy = AddressPolicy(alert_delivery.allow_networks)
    alert_store = AlertStore(kernel.pool)
    alert_http = OutboundHttp(alert_policy)
    alert_sender = AlertSender(
        alert_store,
        DeliveryEngine.of(alert_http, ALERT_DELIVERY, alert_delivery, settings.alert_retry()),
        poll_interval_s=settings.debugger_alert_poll_interval_s,
        concurrency=settings.debugger_alert_concurrency,
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
        AlertsApi(alert_store, alert_policy),
    )
    kernel.background(alert_evaluator.run_forever())
    kernel.background(alert_sender.run_forever())
    kernel.on_shutdown(alert_http.close)
    ingest = BatchIngest(
        RequestStore(pools.ingest, legacy),
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
    metrics.watch(ingest, alert_sender, kernel.app[REQUESTS_API].limiter, partitions)
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
        partitions=partitions,
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
    kernel.serve(GET_RUN_STATUS, RunStatuses(pools.rpc, legacy).get, prefetch=32)
    # The web page (ui.py): a static shell that calls the JSON API above.
    kernel.provide(
        UI,
        DebuggerUi(
            pools.api,
            kernel.app[REQUESTS_API].limiter,
            settings.debugger_trace_url_template,
            legacy,
        ),
    )
    # The page's sources and routes, asked of the runner (source_list.py).
    kernel.provide(SOURCE_LIST, SourceList(pools.api, kernel.rpc, kernel.app[REQUESTS_API].limiter))


SERVICE = ServiceSpec(
    name="debugger",
    settings=DebuggerSettings,
    wire=wire,
    database=DATABASE,
    broker=ServiceAccess(
        serves=(GET_RUN_STATUS,),
        consumes=(topology.DEBUGGER_EVENTS, topology.DEBUGGER_CALLBACKS),
        # The live tail binds (a subset of) what the durable intake receives.
        own_queues=(ProcessQueue(naming.tail_queue_name, topology.DEBUGGER_EVENTS.bindings),),
        # Identifying API tokens; asking the runner who owns a flow it has not heard of
        # yet; replays, each a sync run (`RunnerClient.run`); the page's sources.
        calls=(IDENTIFY_TOKEN, GET_FLOW_OWNER, GET_SOURCE, LIST_SOURCES),
        # A source's request replayed: its runs, async, in one message.
        sends=(SYNC_RUNS, ASYNC_RUNS),
    ),
    routes=(
        Route(
            "GET",
            "/v1/flows/{flow_id}/requests",
            REQUESTS_API,
            lambda api: api.list,
            "List a flow's requests",
            RequestList,
            scope=DEBUGGER_READ,
            resource=FLOW,
            query=RequestListQuery,
            description="Newest first, keyset-paginated (`cursor`). A search (`match`,"
            " `header`) without `since` covers the last 7 days"
            " (FLOWHOOKS_DEBUGGER_SEARCH_WINDOW_S); with `since` (and `until`) it covers"
            " exactly that window, up to the retention. A plain listing covers everything"
            " retained.",
            tags=REQUESTS,
        ),
        Route(
            "GET",
            "/v1/requests/{request_id}",
            REQUESTS_API,
            lambda api: api.get,
            "Read one request in full",
            RequestDetail,
            scope=DEBUGGER_READ,
            resource=STORED_REQUEST,
            tags=REQUESTS,
        ),
        Route(
            "POST",
            "/v1/requests/{request_id}/replay",
            REPLAY_API,
            lambda api: api.replay,
            "Replay one request (edited or not)",
            ReplayResult,
            scope=DEBUGGER_REPLAY,
            resource=STORED_REQUEST,
            body=ReplayEdit,
            body_required=False,
            tags=REPLAYS,
        ),
        Route(
            "POST",
            "/v1/flows/{flow_id}/replays",
            REPLAY_API,
            lambda api: api.start_job,
            "Start a bulk replay job (409 while one runs)",
            ReplayJob,
            status=202,
            scope=DEBUGGER_REPLAY,
            resource=FLOW,
            body=NewReplayJob,
            body_required=False,
            tags=REPLAYS,
        ),
        Route(
            "GET",
            "/v1/replays/{job_id}",
            REPLAY_API,
            lambda api: api.get_job,
            "Read a replay job",
            ReplayJob,
            scope=DEBUGGER_READ,
            tags=REPLAYS,
        ),
        Route(
            "DELETE",
            "/v1/replays/{job_id}",
            REPLAY_API,
            lambda api: api.cancel_job,
            "Cancel a replay job",
            ReplayJob,
            scope=DEBUGGER_REPLAY,
            tags=REPLAYS,
        ),
        Route(
            "GET",
            "/v1/flows/{flow_id}/requests/stream",
            REQUESTS_API,
            lambda api: api.stream,
            "Tail a flow's new requests (server-sent events)",
            EventStream,
            scope=DEBUGGER_READ,
            resource=FLOW,
            response_media="text/event-stream",
            tags=REQUESTS,
        ),
        Route(
            "GET",
            "/v1/flows/{flow_id}/stats",
            REQUESTS_API,
            lambda api: api.stats,
            "A flow's counts and latency",
            FlowStats,
            scope=DEBUGGER_READ,
            resource=FLOW,
            query=StatsQuery,
            tags=REQUESTS,
        ),
        Route(
            "GET",
            "/v1/flows/{flow_id}/stats/series",
            REQUESTS_API,
            lambda api: api.series,
            "A flow's requests by outcome and latency over time",
            FlowSeriesView,
            scope=DEBUGGER_READ,
            resource=FLOW,
            query=SeriesQuery,
            description="`window`: 1h (60 buckets of a minute), 24h (96 of 15 minutes) or"
            " 7d (168 of an hour); the last bucket is the current one.",
            tags=REQUESTS,
        ),
        Route(
            "PUT",
            "/v1/flows/{flow_id}/alert",
            ALERTS_API,
            lambda api: api.put,
            "Create or replace the flow's failure alert",
            AlertView,
            # An alert sends the flow's data to a URL of the caller's choosing, which
            # read-only ops tokens must not set up.
            scope=MANAGE,
            resource=FLOW,
            body=AlertConfig,
            other_responses={201: AlertView},
            tags=ALERTS,
        ),
        Route(
            "GET",
            "/v1/flows/{flow_id}/alert",
            ALERTS_API,
            lambda api: api.get,
            "Read the flow's failure alert",
            AlertView,
            scope=MANAGE,
            resource=FLOW,
            tags=ALERTS,
        ),
        Route(
            "DELETE",
            "/v1/flows/{flow_id}/alert",
            ALERTS_API,
            lambda api: api.delete,
            "Delete the flow's failure alert",
            status=204,
            scope=MANAGE,
            resource=FLOW,
            tags=ALERTS,
        ),
        Route(
            "GET",
            "/v1/debugger/flows",
            UI,
            lambda ui: ui.flows,
            "List the workspace's flows the debugger knows",
            KnownFlows,
            scope=DEBUGGER_READ,
            description="Name and status as the runner last announced them, and each"
            " flow's requests and failures per hour over the last 24 h; at most 500,"
            " newest request first.",
            tags=REQUESTS,
        ),
        Route(
            "GET",
            "/v1/debugger/sources",
            SOURCE_LIST,
            lambda sources: sources.list,
            "List the workspace's sources, their routes and their last 24 h",
            KnownSources,
            scope=DEBUGGER_READ,
            description="Asked of the runner: name, URL, auth mode and routes (each"
            " flow's name as the debugger knows it, and its filter), and how many of the"
            " source's requests were routed and filtered over the last 24 h (null when"
            " not counted in time); at most 200, oldest id first.",
            tags=REQUESTS,
        ),
        # The page, its redirect and its files: for people, not part of the API (no
        # token: the page keeps one and sends it to the API itself).
        *(
            Route(
                "GET",
                path,
                UI,
                pick,
                "The debugger web page",
                Html,
                raw=True,
                response_media="text/html",
                in_api=False,
            )
            for path, pick in (
                ("/ui", lambda ui: ui.redirect),
                ("/ui/", lambda ui: ui.index),
                ("/ui/static/{name}", lambda ui: ui.asset),
            )
        ),
    ),
)
