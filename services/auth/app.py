"""auth: wires settings, the database, the broker, the token API and the RPCs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from aiohttp import web

from services.auth.access import AccessChecker
from services.auth.flow_sync import FlowAccessSync
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.auth.tokens_api import TokensApi
from shared.db import open_pool
from shared.messaging import topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import AUTHORIZE_WEBHOOK, IDENTIFY_TOKEN
from shared.messaging.rpc import RpcClient, RpcServer
from shared.web import base_app, route_to, watch_readiness

SCHEMA = "auth"
MIGRATIONS = Path(__file__).parent / "migrations"

SETTINGS = web.AppKey("settings", AuthSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", Broker)
FLOW_SYNC = web.AppKey("flow_sync", FlowAccessSync)
TOKENS_API = web.AppKey("tokens_api", TokensApi)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await open_pool(settings.database_url, settings.database_pool_max, SCHEMA, MIGRATIONS)
    broker = Broker(settings.amqp_url, "auth", settings.publish_timeout_s)
    await broker.connect()
    app[POOL], app[BROKER] = pool, broker

    store = AuthStore(pool)
    checker = AccessChecker(store)
    rpc_client = RpcClient(broker, settings.rpc_timeout_s)
    await rpc_client.start()
    flow_sync = FlowAccessSync(store, broker, rpc_client)
    app[FLOW_SYNC] = flow_sync
    app[TOKENS_API] = TokensApi(store, checker, broker)

    server = RpcServer(broker, topology.AUTH_RPC, prefetch=settings.auth_rpc_prefetch)
    server.register(AUTHORIZE_WEBHOOK, checker.authorize_webhook)
    server.register(IDENTIFY_TOKEN, checker.identify_token)
    await server.start()
    await broker.consume(topology.AUTH_FLOW_CHANGES, flow_sync.on_flow_changed, prefetch=32)
    resync = asyncio.create_task(flow_sync.resync_forever())

    watch_readiness(app, broker, pool)
    yield
    resync.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await resync
    await broker.stop_consuming()
    await server.wait_idle(settings.shutdown_timeout_s)
    await broker.close()
    await pool.close()


def create_app(settings: AuthSettings) -> web.Application:
    app = base_app("auth")
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/access-tokens", route_to(TOKENS_API, lambda api: api.create))
    app.router.add_get("/v1/access-tokens", route_to(TOKENS_API, lambda api: api.list))
    app.router.add_delete(
        "/v1/access-tokens/{token_id}", route_to(TOKENS_API, lambda api: api.revoke)
    )
    return app
