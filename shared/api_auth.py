"""The scopes of personal tokens, and which routes they open (`Scope`, declared by each
`Route`; the kernel checks them: shared/http_api.py)."""

from shared.http_api import Scope

MANAGE_SCOPES = frozenset({"automation", "automation.manage"})
WEBHOOK_SCOPES = frozenset({"automation", "automation.manage", "automation.webhook_run"})
# Ops tokens that must not manage flows or send webhooks: `debugger.read` sees requests
# (list, detail, stream, stats); `debugger.replay` replays them, and sees what it replays.
DEBUGGER_READ_SCOPES = MANAGE_SCOPES | {"debugger.read", "debugger.replay"}
DEBUGGER_REPLAY_SCOPES = MANAGE_SCOPES | {"debugger.replay"}
KNOWN_SCOPES = WEBHOOK_SCOPES | DEBUGGER_READ_SCOPES

# What the routes declare (`Route.scope`, shared/http_api.py).
MANAGE = Scope(MANAGE_SCOPES)
DEBUGGER_READ = Scope(DEBUGGER_READ_SCOPES)
DEBUGGER_REPLAY = Scope(DEBUGGER_REPLAY_SCOPES)


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
