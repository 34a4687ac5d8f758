"""Personal-token checks for the management APIs (flows on runner, requests on
debugger): the bearer's hash goes to auth over RPC, which answers with the token's
workspace and scopes."""

from aiohttp import web

from shared.bearer import bearer_from_header, hash_token
from shared.errors import Forbidden, Timeout, Unavailable
from shared.messaging.contracts import IDENTIFY_TOKEN
from shared.messaging.rpc import RpcClient
from shared.schemas.access import IdentifyToken, TokenIdentity

MANAGE_SCOPES = frozenset({"automation", "automation.manage"})
WEBHOOK_SCOPES = frozenset({"automation", "automation.manage", "automation.webhook_run"})
# Ops tokens that must not manage flows or send webhooks: `debugger.read` sees requests
# (list, detail, stream, stats); `debugger.replay` replays them, and sees what it replays.
DEBUGGER_READ_SCOPES = MANAGE_SCOPES | {"debugger.read", "debugger.replay"}
DEBUGGER_REPLAY_SCOPES = MANAGE_SCOPES | {"debugger.replay"}
KNOWN_SCOPES = WEBHOOK_SCOPES | DEBUGGER_READ_SCOPES


# Who may grant a debugger scope: whoever already opens every endpoint it opens (the
# manage scopes open both; `debugger.replay` opens what `debugger.read` does).
_DEBUGGER_GRANTORS = {
    "debugger.read": DEBUGGER_READ_SCOPES,
    "debugger.replay": DEBUGGER_REPLAY_SCOPES,
}


def scope_covers(held: str, wanted: str) -> bool:
    """`automation` covers every `automation.*` scope; any scope covers itself; a debugger
    scope is covered by every scope that opens at least what it opens."""
    if held == wanted or wanted.startswith(held + "."):
        return True
    return held in _DEBUGGER_GRANTORS.get(wanted, frozenset())


async def identify(rpc: RpcClient, request: web.Request) -> TokenIdentity:
    token = bearer_from_header(request.headers.get("Authorization"))
    try:
        return await rpc.call(IDENTIFY_TOKEN, IdentifyToken(bearer_hash=hash_token(token)))
    except Timeout:
        raise Unavailable("the auth service did not answer") from None


async def require_scope(
    rpc: RpcClient, request: web.Request, allowed: frozenset[str] = MANAGE_SCOPES
) -> TokenIdentity:
    """The caller's identity if its token holds one of `allowed`; else 401/403."""
    identity = await identify(rpc, request)
    if not allowed.intersection(identity.scopes):
        raise Forbidden(f"this token needs one of the scopes {', '.join(sorted(allowed))}")
    return identity
