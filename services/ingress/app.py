"""ingress: the webhook route, the access cache (kept by auth's change events) and the
runner client, declared on the service kernel (`shared/service.py`). No database."""

from aiohttp import web

from services.ingress.access_cache import AccessCache
from services.ingress.dedup import Deduplicator
from services.ingress.learned_secrets import SecretLearner
from services.ingress.metrics import IngressMetrics
from services.ingress.pubsub import JwksCache
from services.ingress.settings import IngressSettings
from services.ingress.signing import SignatureChecks
from services.ingress.sns import SnsCertificates, SubscribeVisits
from services.ingress.sources import SourceCache, SourceMetrics, SourceWebhook
from services.ingress.webhook import Accepted, WebhookHandler
from shared.http_api import Route
from shared.messaging import naming
from shared.messaging.contracts import (
    ACCESS_TOKEN_REVOKED,
    ASYNC_RUNS,
    AUTHORIZE_WEBHOOK,
    CLAIM_DEDUP_KEY,
    FLOW_ACCESS_CHANGED,
    GET_RUN_STATUS,
    GET_SOURCE,
    LEARN_WEBHOOK_SECRET,
    REQUEST_DEDUPLICATED,
    REQUEST_FILTERED,
    REQUEST_HANDSHAKE,
    REQUEST_QUEUED,
    REQUEST_REJECTED,
    REQUEST_ROUTED,
    RUNS_DRAINED,
    SOURCE_CHANGED,
    SYNC_RUNS,
    Event,
)
from shared.messaging.permissions import ProcessQueue, ServiceAccess
from shared.messaging.runner_client import RunnerClient
from shared.openapi import AnyJson
from shared.outbound import AddressPolicy, OutboundHttp
from shared.secret_box import SecretBox
from shared.service import Kernel, ServiceSpec

WEBHOOK = web.AppKey("webhook", WebhookHandler)
SOURCE_WEBHOOK = web.AppKey("source_webhook", SourceWebhook)


async def wire(kernel: Kernel[IngressSettings]) -> None:
    settings = kernel.settings
    metrics = IngressMetrics(kernel.metrics.registry)
    cache = AccessCache(
        kernel.rpc,
        settings.ingress_access_cache_size,
        settings.ingress_access_cache_ttl_s,
        metrics,
    )
    # Events may have been missed while the connection was down.
    kernel.broker.reconnected.append(cache.clear)
    runner = RunnerClient(kernel.broker, kernel.rpc, max_items=settings.ingress_run_batch)
    key = settings.webhook_secrets_key
    # The ingress's own outgoing requests (JWKS, SNS certificates and SubscribeURLs),
    # behind the outgoing-request rules.
    outbound = OutboundHttp(AddressPolicy(list(settings.ingress_http_allow_networks)))
    jwks = JwksCache(
        outbound,
        max_entries=settings.ingress_jwks_cache_size,
        ttl_s=settings.ingress_jwks_ttl_s,
        timeout_s=settings.ingress_jwks_timeout_s,
        max_bytes=settings.ingress_jwks_max_bytes,
        failure_ttl_s=settings.ingress_jwks_failure_ttl_s,
    )
    sns_certificates = SnsCertificates(
        outbound,
        settings.sns_cert_url_pattern,
        max_entries=settings.ingress_sns_cert_cache_size,
        ttl_s=settings.ingress_sns_cert_ttl_s,
        timeout_s=settings.ingress_sns_cert_timeout_s,
        max_bytes=settings.ingress_sns_cert_max_bytes,
        failure_ttl_s=settings.ingress_sns_cert_failure_ttl_s,
    )
    sns_visits = SubscribeVisits(outbound, sns_certificates)
    signatures = SignatureChecks(
        SecretBox(key.get_secret_value()) if key is not None else None,
        settings.ingress_access_cache_size,
        public_url=settings.ingress_public_url,
        jwks=jwks,
        sns_certificates=sns_certificates,
    )
    dedup = Deduplicator(kernel.rpc, kernel.broker, settings.ingress_dedup_max_waiting)
    webhook = kernel.provide(
        WEBHOOK,
        WebhookHandler(
            cache,
            runner,
            kernel.broker,
            settings,
            signatures,
            dedup,
            metrics,
            sns_visits,
            # An asana flow's first handshake: the runner keeps the secret it gives.
            learner=SecretLearner(kernel.rpc, signatures.box),
        ),
    )
    metrics.watch(webhook)
    sources = SourceCache(
        kernel.rpc, settings.ingress_source_cache_size, settings.ingress_source_cache_ttl_s
    )
    kernel.broker.reconnected.append(sources.clear)  # changes may have been missed
    cache.changes.on(SOURCE_CHANGED, sources.changed, published_by=settings.runner_user)
    kernel.provide(
        SOURCE_WEBHOOK,
        SourceWebhook(
            webhook,
            sources,
            settings.ingress_source_max_message_bytes,
            SourceMetrics(kernel.metrics.registry),
        ),
    )
    # The same per-process queue also receives the runners' reports of this replica's
    # async runs that finished (routed to it alone), for its per-workspace queued bounds.
    cache.changes.on(
        Event(naming.runs_drained_key(kernel.broker.instance), RUNS_DRAINED.body),
        webhook.backlog.drained,
        published_by=settings.runner_user,
    )
    kernel.broker.reconnected.append(webhook.backlog.clear)  # reports may have been missed
    kernel.on_events(
        naming.cache_invalidation_queue_name(kernel.broker.instance),
        cache.changes,
        prefetch=100,
        # Unknown or unreadable: be safe rather than fast.
        on_unreadable=cache.clear,
    )

    async def close() -> None:
        await runner.drain()
        await dedup.drain()
        webhook.close()
        await outbound.close()

    kernel.on_shutdown(close)


TAGS = ("webhook",)
SECURITY = (
    "The flow's webhook token as a bearer (`GET /v1/flows/{id}/webhook` on the runner), "
    "or the signature its `webhook.auth` mode names."
)


def _webhook_route(method: str) -> Route[WebhookHandler]:
    """The webhook reads its request itself (`raw`): bodies of many types (JSON, form,
    XML, text: `normalise.py`), read only once the sender is judged; documented as any
    JSON. The answer is the flow's own, any status and type, except errors."""
    return Route(
        method,
        "/v1/flow-webhook/{flow_id}",
        WEBHOOK,
        lambda webhook: webhook.handle,
        f"Run the flow ({method})",
        Accepted,
        status=202,
        raw=True,
        body=None if method == "GET" else AnyJson,
        body_required=False,
        other_responses={"default": AnyJson},
        response_media="*/*",
        description=f"{SECURITY} A GET's input is its query string.",
        tags=TAGS,
        secured=True,
    )


def _source_webhook_route(method: str) -> Route[SourceWebhook]:
    """A source's URL: read like the flow webhook (`raw`), answered `accepted` with the
    number of runs started, or `filtered`."""
    return Route(
        method,
        "/v1/source-webhook/{source_id}",
        SOURCE_WEBHOOK,
        lambda webhook: webhook.handle,
        f"Route the request to every flow subscribed to the source ({method})",
        AnyJson,
        raw=True,
        body=None if method == "GET" else AnyJson,
        body_required=False,
        response_media="*/*",
        description="The source's token as a bearer (`GET /v1/sources/{id}` on the runner),"
        " or the signature its `auth` mode names. Every route whose filter matches gets its"
        " own async run; 200 `accepted` with `routed` (the number of runs) once the broker"
        " took them all, `filtered` when none matched, 503 when the broker took none.",
        tags=("sources",),
        secured=True,
    )


SERVICE = ServiceSpec(
    name="ingress",
    settings=IngressSettings,
    wire=wire,
    broker=ServiceAccess(
        own_queues=(
            ProcessQueue(
                naming.cache_invalidation_queue_name,
                (
                    FLOW_ACCESS_CHANGED.routing_key,
                    ACCESS_TOKEN_REVOKED.routing_key,
                    SOURCE_CHANGED.routing_key,
                ),
                # Its own async runs that finished (its per-workspace queued bounds).
                addressed=(naming.runs_drained_key,),
            ),
        ),
        calls=(
            AUTHORIZE_WEBHOOK,
            CLAIM_DEDUP_KEY,
            GET_RUN_STATUS,
            LEARN_WEBHOOK_SECRET,
            GET_SOURCE,
        ),
        sends=(SYNC_RUNS, ASYNC_RUNS),
        publishes=(
            REQUEST_REJECTED,
            REQUEST_DEDUPLICATED,
            REQUEST_QUEUED,
            REQUEST_HANDSHAKE,
            REQUEST_FILTERED,
            REQUEST_ROUTED,
        ),
    ),
    routes=(
        *(_webhook_route(method) for method in ("POST", "GET", "PUT", "PATCH")),
        *(_source_webhook_route(method) for method in ("POST", "GET", "PUT", "PATCH")),
        # A run's status (on_timeout "accept", async runs).
        Route(
            "GET",
            "/v1/flow-webhook/{flow_id}/runs/{request_id}",
            WEBHOOK,
            lambda webhook: webhook.status,
            "A run's status: 202 while queued or running, then the run's own answer",
            Accepted,
            status=202,
            # The flow, for a bearer of its webhook token (`WebhookHandler.find`).
            resource=WEBHOOK,
            other_responses={"default": AnyJson},
            response_media="*/*",
            description=SECURITY,
            tags=TAGS,
            secured=True,
        ),
    ),
    # The webhook reads its body itself, bounded by ingress_max_body_bytes.
    client_max_size=lambda settings: settings.ingress_max_body_bytes,
)
