"""debugger: the batching intake of every request's events, retention and the ops API,
declared on the service kernel (`shared/service.py`)."""

from pathlib import Path

from aiohttp import web

from services.debugger.ingest import BatchIngest
from services.debugger.records import Redaction
from services.debugger.requests_api import RequestsApi
from services.debugger.retention import Retention
from services.debugger.settings import DebuggerSettings
from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail
from shared.messaging import topology
from shared.messaging.runner_client import RunnerClient
from shared.service import Database, Kernel, Route, ServiceSpec

REQUESTS_API = web.AppKey("requests_api", RequestsApi)
DATABASE = Database("debugger", Path(__file__).parent / "migrations")


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
    store = RequestStore(kernel.pool)
    redact = redaction(settings)
    kernel.provide(
        REQUESTS_API,
        RequestsApi(
            store,
            kernel.rpc,
            RunnerClient(kernel.broker, kernel.rpc),
            LiveTail(kernel.broker, redact),
            settings.debugger_replay_timeout_s,
        ),
    )
    ingest = BatchIngest(
        store,
        redact,
        settings.debugger_batch_size,
        settings.debugger_batch_linger_ms / 1000,
        retry_delay_s=settings.debugger_write_retry_delay_s,
        max_retry_delay_s=settings.debugger_write_max_retry_delay_s,
        unknown_retries=settings.debugger_write_unknown_retries,
        runner_user=settings.runner_user,
    )
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
        interval_s=settings.debugger_retention_interval_s,
    )
    kernel.background(retention.run_forever())


SERVICE = ServiceSpec(
    name="debugger",
    settings=DebuggerSettings,
    port=lambda settings: settings.debugger_port,
    wire=wire,
    database=DATABASE,
    routes=(
        Route("GET", "/v1/flows/{flow_id}/requests", REQUESTS_API, lambda api: api.list),
        Route("GET", "/v1/requests/{request_id}", REQUESTS_API, lambda api: api.get),
        Route("POST", "/v1/requests/{request_id}/replay", REQUESTS_API, lambda api: api.replay),
        Route("GET", "/v1/flows/{flow_id}/requests/stream", REQUESTS_API, lambda api: api.stream),
        Route("GET", "/v1/flows/{flow_id}/stats", REQUESTS_API, lambda api: api.stats),
    ),
)


def create_app(settings: DebuggerSettings) -> web.Application:
    return SERVICE.create_app(settings)
