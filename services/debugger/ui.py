"""The debugger's web page at `/ui/`: a Jinja2-rendered shell, one script and one style
sheet, all served by this process (no build step, nothing from a CDN).

The shell holds no data and needs no sign-in: the page keeps a personal access token in
`sessionStorage` and its script calls the JSON APIs with `Authorization: Bearer`. The
live tail is read with `fetch()` and a stream reader, since `EventSource` cannot send
that header. Every stored value reaches the page through `textContent` only, and the UI
responses carry a strict Content-Security-Policy (no inline script or style at all), so
a stored body can never run in an operator's browser.

`GET /v1/debugger/flows` (JSON, `debugger.read`): the caller's workspace's flows as the
debugger knows them (`debugger.flows`), newest request first; the page's list of flows.
Not the runner's `GET /v1/flows` (the flows themselves, with their definitions): the
flows' names live in the runner, whose API the page cannot call across origins.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel

from services.debugger.legacy_copy import LegacyRequests, requests_source
from shared.errors import NotFound
from shared.http_api import Call
from shared.schemas.vocabulary import RECORDED_OUTCOMES, RunMode

ASSETS = Path(__file__).parent / "ui"
MAX_FLOWS = 500

# No inline script or style, no plugins, no <base>, not framable: a payload that slipped
# past the escaping would still have nothing to run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none';"
    " base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The shell is small and the static files change with each release.
    "Cache-Control": "no-cache",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

# {requests}: the partitioned table (and the old one while it is being moved).
LIST_FLOWS = (
    "SELECT f.flow_id::text AS id,"
    " (SELECT max(r.received_at) FROM {requests} r WHERE r.flow_id = f.flow_id)"
    " AS last_request_at"
    " FROM debugger.flows f WHERE f.workspace_id = $1 AND NOT f.deleted"
    " ORDER BY last_request_at DESC NULLS LAST, f.flow_id LIMIT $2"
)


class KnownFlow(BaseModel):
    id: str
    last_request_at: datetime | None


class KnownFlows(BaseModel):
    """The workspace's flows the debugger knows, newest request first"""

    items: list[KnownFlow]


class Html(BaseModel):
    """Marker: an HTML page or a static file, for people rather than programs."""


@dataclass(frozen=True)
class Static:
    body: bytes
    content_type: str


def _load_static(folder: Path) -> dict[str, Static]:
    """Read once at start: the set of files served is fixed, so no path from a request
    ever reaches the file system."""
    return {
        path.name: Static(path.read_bytes(), STATIC_TYPES[path.suffix])
        for path in sorted(folder.iterdir())
        if path.suffix in STATIC_TYPES
    }


class DebuggerUi:
    def __init__(self, pool: asyncpg.Pool, legacy: LegacyRequests | None = None) -> None:
        self.pool = pool
        self.legacy = legacy
        env = Environment(
            loader=FileSystemLoader(ASSETS / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        # Rendered once: the shell is the same for everyone and holds no data.
        self.index_html = env.get_template("index.html").render(
            outcomes=sorted(RECORDED_OUTCOMES), modes=tuple(RunMode)
        )
        self.static = _load_static(ASSETS / "static")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.index_html,
            content_type="text/html",
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def asset(self, request: web.Request) -> web.Response:
        static = self.static.get(request.match_info["name"])
        if static is None:
            raise NotFound("no such file")
        return web.Response(
            body=static.body,
            content_type=static.content_type,
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def flows(self, call: Call[None, None]) -> KnownFlows:
        statement = LIST_FLOWS.replace("{requests}", requests_source(self.legacy))
        rows = await self.pool.fetch(statement, uuid.UUID(call.caller.workspace_id), MAX_FLOWS)
        return KnownFlows(
            items=[KnownFlow(id=r["id"], last_request_at=r["last_request_at"]) for r in rows]
        )
