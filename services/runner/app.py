"""runner: the flows API, the run consumers (sync and async queues, flows run in the
worker pool) and the flow-access RPC, declared on the service kernel
(`shared/service.py`)."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from services.runner.access import FlowAccess
from services.runner.callbacks import CALLBACK_DELIVERY, CallbackSender
from services.runner.dedup import DedupKeys
from services.runner.definition import FlowDefinition
from services.runner.delays import DelayedRuns
from services.runner.dispatcher import PacedDispatcher
from services.runner.drain_reports import DrainReports
from services.runner.finished import FinishedRuns
from services.runner.flow_cache import FlowCache
from services.runner.flows_api import (
    FlowList,
    FlowListQuery,
    FlowsApi,
    FlowView,
    FlowVisibility,
    WebhookInfo,
)
from services.runner.learned_secrets import SecretLearning
from services.runner.metrics import RunnerMetrics
from services.runner.paced_runs import PacedRuns
from services.runner.pool import WorkerPool
from services.runner.runs import RunService, async_window
from services.runner.settings import RunnerSettings
from services.runner.source_store import SourceStore
from services.runner.sources import (
    RouteBody,
    RouteList,
    RouteView,
    SourceBody,
    SourceList,
    SourcesApi,
    SourceView,
    SourceVisibility,
)
from services.runner.store import FlowStore
from services.runner.templates import TemplateEngine
from shared.api_auth import MANAGE
from shared.delivery import DeliveryEngine
from shared.http_api import Route
from shared.messaging import naming, topology
from shared.messaging.batching import BatchPublisher
from shared.messaging.contracts import (
    ASYNC_RUNS,
    CALLBACK_ATTEMPTED,
    CALLBACKS,
    CLAIM_DEDUP_KEY,
    FLOW_CHANGED,
    GET_FLOW_OWNER,
    GET_SOURCE,
    IDENTIFY_TOKEN,
    LEARN_WEBHOOK_SECRET,
    LIST_FLOW_ACCESS,
    LIST_SOURCES,
    PARKED_RUNS,
    RUN_FINISHED,
    RUN_STARTED,
    RUN_WAITING,
    SOURCE_CHANGED,
    SYNC_RUNS,
)
from shared.messaging.permissions import ServiceAccess
from shared.messaging.rpc import GroupedReplies
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.access import FlowOwner, FlowOwnerQuery
from shared.schemas.runs import RunFinished, RunProgress
from shared.secret_box import SecretBox
from shared.service import Database, Kernel, ServiceSpec

FLOWS_API = web.AppKey("flows_api", FlowsApi)
FLOW = web.AppKey("flow", FlowVisibility)  # the path's flow, in the caller's workspace
SOURCES_API = web.AppKey("sources_api", SourcesApi)
SOURCE = web.AppKey("source", SourceVisibility)  # the path's source, in the caller's workspace
DATABASE = Database("runner", Path(__file__).parent / "migrations")


async def wire(kernel: Kernel[RunnerSettings]) -> None:
    settings = kernel.settings
    store = FlowStore(kernel.pool)
    bounds = settings.run_bounds()
    templates = TemplateEngine.bounded(bounds)
    access = await FlowAccess.open(store, kernel.broker, settings.token_ring())
    key = settings.webhook_secrets_key
    secret_box = SecretBox(key.get_secret_value()) if key is not None else None
    callback_delivery = settings.callback_delivery()
    callback_policy = AddressPolicy(callback_delivery.allow_networks)
    kernel.provide(FLOW, FlowVisibility(store))
    source_store = SourceStore(kernel.pool)
    sources = kernel.provide(
        SOURCES_API,
        SourcesApi(
            source_store,
            store,
            access,
            kernel.broker,
            templates,
            settings.webhook_base_url(),
            secret_box,
        ),
    )
    kernel.provide(SOURCE, SourceVisibility(source_store))
    kernel.serve(GET_SOURCE, sources.get_source)
    kernel.serve(LIST_SOURCES, sources.listed)
    kernel.provide(
        FLOWS_API,
        FlowsApi(
            store,
            access,
            templates,
            settings.runner_max_timeout_s,
            settings.webhook_base_url(),
            secret_box,
            callback_policy,
            after_change=sources.flow_changed,
        ),
    )

    workers = WorkerPool(
        bounds,
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
        DeliveryEngine.of(
            callback_http, CALLBACK_DELIVERY, callback_delivery, settings.callback_retry()
        ),
        secret_box,
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
    paced = PacedRuns(kernel.pool, settings.runner_paced_lease_s, settings.runner_paced_settle_s)
    # `running` and a delay's `waiting` through one publisher: in the order handed over.
    progress: BatchPublisher[RunProgress] = BatchPublisher(kernel.broker, RUN_STARTED)
    delays = DelayedRuns(
        kernel.pool,
        kernel.broker,
        max_waiting_runs=settings.runner_delay_max_waiting_runs,
        max_state_bytes=settings.runner_delay_max_state_bytes,
        max_run_state_bytes=settings.runner_delay_max_run_state_bytes,
        resume_batch=settings.runner_delay_resume_batch,
        progress=progress,
    )
    kernel.periodic("delays_resume", settings.runner_delay_poll_s, delays.resume_due)
    runs = RunService(
        kernel.broker,
        FlowCache(store),
        workers,
        finished,
        progress if settings.runner_record_started else None,
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
        paced=paced,
        waiting=BatchPublisher(kernel.broker, RUN_WAITING),
        delays=delays,
        started_after_s=settings.runner_record_started_after_s,
    )
    if runs.held_starts is not None:
        kernel.on_shutdown(runs.held_starts.close)  # its timer, after the paced runs' drain
    # Paced flows' runs (webhook.ordering, ...): claimed from the database by every
    # replica's dispatcher (dispatcher.py).
    dispatcher = PacedDispatcher(
        paced,
        runs,
        max_in_flight=settings.runner_paced_max_in_flight or workers.max_workers * workers.slots,
        poll_s=settings.runner_paced_poll_s,
    )
    runs.on_paced = dispatcher.wake_at
    kernel.background(dispatcher.run_forever())
    kernel.periodic("paced_leases", settings.runner_paced_lease_s / 3, dispatcher.renew_leases)
    kernel.periodic("paced_starts_prune", 60.0, paced.prune)
    kernel.on_shutdown(dispatcher.drain)  # before the events, replies and workers stop
    metrics.watch(workers, callbacks, runs)
    kernel.periodic("finished_runs_prune", 60.0, finished_runs.prune)
    kernel.periodic("dedup_keys_prune", 60.0, dedup_keys.prune)
    kernel.serve(CLAIM_DEDUP_KEY, dedup_keys.claim)
    kernel.serve(LIST_FLOW_ACCESS, access.list_flow_access)

    async def flow_or_source_owner(query: FlowOwnerQuery) -> FlowOwner:
        owner = await access.flow_owner(query)
        return owner if owner.found else await sources.owner(query)

    kernel.serve(GET_FLOW_OWNER, flow_or_source_owner)
    # An asana flow's first handshake: the secret it gives (learned_secrets.py).
    kernel.serve(LEARN_WEBHOOK_SECRET, SecretLearning(store, access, secret_box).learn)
    kernel.on_command(SYNC_RUNS, runs.on_sync_runs, prefetch=settings.runner_sync_prefetch)
    kernel.on_command(ASYNC_RUNS, runs.on_async_runs, prefetch=async_prefetch)
    kernel.on_command(CALLBACKS, callbacks.on_callback, prefetch=settings.runner_callback_prefetch)


def _flow_route(
    method: str,
    path: str,
    pick: Callable[[FlowsApi], Any],
    summary: str,
    response: type[BaseModel] | None,
    **declared: Any,
) -> Route[FlowsApi]:
    """A flows API route: a manage scope, the flows tag."""
    return Route(
        method, path, FLOWS_API, pick, summary, response, scope=MANAGE, tags=TAGS, **declared
    )


def _source_route(
    method: str,
    path: str,
    pick: Callable[[SourcesApi], Any],
    summary: str,
    response: type[BaseModel] | None,
    **declared: Any,
) -> Route[SourcesApi]:
    """A sources API route: a manage scope, the sources tag."""
    return Route(
        method,
        path,
        SOURCES_API,
        pick,
        summary,
        response,
        scope=MANAGE,
        tags=("sources",),
        **declared,
    )


SOURCE_ROUTES = (
    _source_route(
        "POST",
        "/v1/sources",
        lambda api: api.create,
        "Create a source: one URL whose requests are routed to many flows",
        SourceView,
        status=201,
        body=SourceBody,
        body_as_json=True,
    ),
    _source_route(
        "GET", "/v1/sources", lambda api: api.list, "List sources", SourceList, query=FlowListQuery
    ),
    _source_route(
        "GET",
        "/v1/sources/{source_id}",
        lambda api: api.get,
        "Read a source",
        SourceView,
        resource=SOURCE,
    ),
    _source_route(
        "PATCH",
        "/v1/sources/{source_id}",
        lambda api: api.patch,
        "Change some of a source's fields",
        SourceView,
        resource=SOURCE,
        partial=True,
        body=SourceBody,
        body_as_json=True,
    ),
    _source_route(
        "DELETE",
        "/v1/sources/{source_id}",
        lambda api: api.delete,
        "Delete a source and its routes",
        None,
        status=204,
        resource=SOURCE,
    ),
    _source_route(
        "GET",
        "/v1/sources/{source_id}/routes",
        lambda api: api.routes,
        "The flows the source routes to",
        RouteList,
        resource=SOURCE,
    ),
    _source_route(
        "PUT",
        "/v1/sources/{source_id}/routes/{flow_id}",
        lambda api: api.put_route,
        "Route the source's requests that match the filter to a flow of the same workspace",
        RouteView,
        resource=SOURCE,
        body=RouteBody,
        body_required=False,
    ),
    _source_route(
        "DELETE",
        "/v1/sources/{source_id}/routes/{flow_id}",
        lambda api: api.delete_route,
        "Stop routing the source's requests to the flow",
        None,
        status=204,
        resource=SOURCE,
    ),
)

TAGS = ("flows",)
# A flow definition, decoded by the kernel and judged by `parse_definition` (templates
# compile against this service's engine; a PATCH is merged over the stored flow first).
FLOW_BODY: dict[str, Any] = {"body": FlowDefinition, "body_as_json": True}

SERVICE = ServiceSpec(
    name="runner",
    settings=RunnerSettings,
    wire=wire,
    database=DATABASE,
    broker=ServiceAccess(
        serves=(
            CLAIM_DEDUP_KEY,
            LIST_FLOW_ACCESS,
            GET_FLOW_OWNER,
            LEARN_WEBHOOK_SECRET,
            GET_SOURCE,
            LIST_SOURCES,
        ),
        consumes=(SYNC_RUNS, ASYNC_RUNS, CALLBACKS),
        # Identifying API tokens.
        calls=(IDENTIFY_TOKEN,),
        # A batch it cannot run whole is split back onto its queue; async runs parked
        # while their workspace is at its share; callbacks enqueued, and parked in the
        # wait ladder between attempts.
        sends=(SYNC_RUNS, ASYNC_RUNS, PARKED_RUNS, CALLBACKS, *topology.CALLBACK_WAITS),
        publishes=(
            FLOW_CHANGED,
            RUN_FINISHED,
            RUN_STARTED,
            RUN_WAITING,
            CALLBACK_ATTEMPTED,
            SOURCE_CHANGED,
        ),
        # To the ingress process that queued them: its async runs that finished.
        publishes_to_processes=(naming.runs_drained_key,),
    ),
    routes=(
        *SOURCE_ROUTES,
        _flow_route(
            "POST",
            "/v1/flows",
            lambda api: api.create,
            "Create a flow",
            FlowView,
            status=201,
            **FLOW_BODY,
        ),
        _flow_route(
            "GET", "/v1/flows", lambda api: api.list, "List flows", FlowList, query=FlowListQuery
        ),
        _flow_route(
            "GET",
            "/v1/flows/{flow_id}",
            lambda api: api.get,
            "Read a flow",
            FlowView,
            resource=FLOW,
        ),
        _flow_route(
            "PUT",
            "/v1/flows/{flow_id}",
            lambda api: api.replace,
            "Replace a flow",
            FlowView,
            resource=FLOW,
            **FLOW_BODY,
        ),
        _flow_route(
            "PATCH",
            "/v1/flows/{flow_id}",
            lambda api: api.patch,
            "Change some of a flow's fields",
            FlowView,
            resource=FLOW,
            partial=True,
            description="Top-level fields replace the stored ones; `webhook` is merged field"
            " by field.",
            **FLOW_BODY,
        ),
        _flow_route(
            "DELETE",
            "/v1/flows/{flow_id}",
            lambda api: api.delete,
            "Delete a flow",
            None,
            status=204,
            resource=FLOW,
        ),
        _flow_route(
            "GET",
            "/v1/flows/{flow_id}/webhook",
            lambda api: api.webhook,
            "The flow's webhook URL and token",
            WebhookInfo,
            resource=FLOW,
        ),
        _flow_route(
            "POST",
            "/v1/flows/{flow_id}/webhook/rotate-token",
            lambda api: api.rotate_token,
            "Issue a new webhook token (the previous one stops working)",
            WebhookInfo,
            resource=FLOW,
        ),
    ),
)
