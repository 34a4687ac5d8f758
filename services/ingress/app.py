"""ingress: wires settings, the broker (no database), the access cache and the
webhook route."""

from collections.abc import AsyncIterator

from aiohttp import web

from services.ingress.access_cache import AccessCache
from services.ingress.settings import IngressSettings
from services.ingress.webhook import WebhookHandler
from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.messaging.rpc import RpcClient
from shared.messaging.runner_client import RunnerClient
from shared.web import base_app, route_to, watch_readiness

SETTINGS = web.AppKey("settings", IngressSettings)
BROKER = web.AppKey("broker", Broker)
ACCESS_CACHE = web.AppKey("access_cache", AccessCache)
WEBHOOK = web.AppKey("webhook", WebhookHandler)

WEBHOOK_PATH = "/v1/flow-webhook/{flow_id}"


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    broker = Broker(settings.amqp_url, "ingress", settings.publish_timeout_s)
    await broker.connect()
    rpc = RpcClient(broker, settings.rpc_timeout_s)
    await rpc.start()
    cache = AccessCache(
        rpc, settings.ingress_access_cache_size, settings.ingress_access_cache_ttl_s
    )
    # Events may have been missed while the connection was down.
    broker.reconnected.append(cache.clear)
    await broker.consume(
        naming.cache_invalidation_queue_name(broker.instance),
        cache.on_change,
        prefetch=100,
        no_ack=True,
        bindings=cache.changes.routing_keys,
    )
    app[BROKER], app[ACCESS_CACHE] = broker, cache
    runner = RunnerClient(broker, rpc, max_items=settings.ingress_run_batch)
    app[WEBHOOK] = WebhookHandler(cache, runner, broker, settings)

    watch_readiness(app, broker)
    yield
    # aiohttp has already stopped accepting and waited for in-flight requests.
    await runner.drain()
    await broker.stop_consuming()
    await broker.close()
    app[WEBHOOK].close()


def create_app(settings: IngressSettings) -> web.Application:
    # The webhook reads its body itself, bounded by ingress_max_body_bytes.
    app = base_app("ingress", client_max_size=settings.ingress_max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    handler = route_to(WEBHOOK, lambda webhook: webhook.handle)
    for method in ("POST", "GET", "PUT", "PATCH"):
        app.router.add_route(method, WEBHOOK_PATH, handler)
    return app
