"""auth: the token API, the webhook-access RPCs and its copy of each flow's access
state, declared on the service kernel (`shared/service.py`)."""

from pathlib import Path

from aiohttp import web

from services.auth.access import AccessChecker
from services.auth.flow_sync import FlowAccessSync
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.auth.tokens_api import (
    TOKENS_SCOPE,
    AccessTokenList,
    CreatedAccessToken,
    NewToken,
    TokensApi,
)
from shared.http_api import TOKEN_CHECK, Route
from shared.messaging import topology
from shared.messaging.contracts import (
    ACCESS_TOKEN_REVOKED,
    AUTHORIZE_WEBHOOK,
    FLOW_ACCESS_CHANGED,
    FLOW_CHANGED,
    IDENTIFY_TOKEN,
    LIST_FLOW_ACCESS,
)
from shared.messaging.dispatch import EventHandlers
from shared.messaging.permissions import ServiceAccess
from shared.service import Database, Kernel, ServiceSpec

TOKENS_API = web.AppKey("tokens_api", TokensApi)
TAGS = ("access tokens",)
DATABASE = Database("auth", Path(__file__).parent / "migrations")


async def wire(kernel: Kernel[AuthSettings]) -> None:
    store = AuthStore(kernel.pool)
    checker = AccessChecker(store)
    flow_sync = FlowAccessSync(store, kernel.broker, kernel.rpc)
    # The routes' tokens are checked here, without a round trip to itself.
    kernel.provide(TOKEN_CHECK, checker.identify_token)
    kernel.provide(TOKENS_API, TokensApi(store, kernel.broker))

    prefetch = kernel.settings.auth_rpc_prefetch
    kernel.serve(AUTHORIZE_WEBHOOK, checker.authorize_webhook, prefetch=prefetch)
    kernel.serve(IDENTIFY_TOKEN, checker.identify_token, prefetch=prefetch)
    flow_changes = EventHandlers()
    flow_changes.on(FLOW_CHANGED, flow_sync.apply, published_by=kernel.settings.runner_user)
    kernel.on_events(topology.AUTH_FLOW_CHANGES, flow_changes, prefetch=32)
    kernel.background(flow_sync.resync_forever())


SERVICE = ServiceSpec(
    name="auth",
    settings=AuthSettings,
    wire=wire,
    database=DATABASE,
    broker=ServiceAccess(
        serves=(AUTHORIZE_WEBHOOK, IDENTIFY_TOKEN),
        consumes=(topology.AUTH_FLOW_CHANGES,),
        # Its copy of each flow's access state, read whole from the runner.
        calls=(LIST_FLOW_ACCESS,),
        publishes=(FLOW_ACCESS_CHANGED, ACCESS_TOKEN_REVOKED),
    ),
    routes=(
        Route(
            "POST",
            "/v1/access-tokens",
            TOKENS_API,
            lambda api: api.create,
            "Create a personal access token (no more scopes than the caller's)",
            CreatedAccessToken,
            status=201,
            scope=TOKENS_SCOPE,
            body=NewToken,
            tags=TAGS,
        ),
        Route(
            "GET",
            "/v1/access-tokens",
            TOKENS_API,
            lambda api: api.list,
            "List the workspace's access tokens",
            AccessTokenList,
            scope=TOKENS_SCOPE,
            tags=TAGS,
        ),
        Route(
            "DELETE",
            "/v1/access-tokens/{token_id}",
            TOKENS_API,
            lambda api: api.revoke,
            "Revoke an access token",
            status=204,
            scope=TOKENS_SCOPE,
            tags=TAGS,
        ),
    ),
)
