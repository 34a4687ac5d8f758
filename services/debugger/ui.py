"""The debugger's web page at `/ui/`: a Jinja2-rendered shell, one script and one style
sheet, all served by this process (no build step, nothing from a CDN).

The shell holds no data and needs no sign-in: the page keeps a personal access token in
`sessionStorage` and its script calls the JSON APIs with `Authorization: Bearer`. The
live tail is read with `fetch()` and a stream reader, since `EventSource` cannot send
that header. Every stored value reaches the page through `textContent` only, and the UI
responses carry a strict Content-Security-Policy (no inline script or style at all), so
a stored body can never run in an operator's browser.

`GET /v1/debugger/flows` (JSON, `debugger.read`): the caller's workspace's flows as the
debugger knows them (`debugger.flows`: name and status as `flow.changed` last said),
newest request first, each with its last 24 h by hour (requests and failures, for the
page's sparklines; stats.py); the page's list of flows. Not the runner's `GET
/v1/flows` (the flows themselves, with their definitions), which the page cannot call
across origins.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from services.debugger.legacy_copy import LegacyRequests, requests_source
from services.debugger.stats import FlowSeries
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.errors import NotFound
from shared.http_api import Call
from shared.schemas.vocabulary import (
    FAILED_OUTCOMES,
    RECORDED_OUTCOMES,
    REPLAY_FILTER_OUTCOMES,
    Progress,
    RunMode,
)

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
    "SELECT f.flow_id::text AS id, f.name, f.status,"
    " (SELECT max(r.received_at) FROM {requests} r WHERE r.flow_id = f.flow_id)"
    " AS last_request_at"
    " FROM debugger.flows f WHERE f.workspace_id = $1 AND NOT f.deleted"
    " ORDER BY last_request_at DESC NULLS LAST, f.flow_id LIMIT $2"
)


class Sparkline(BaseModel):
    """Requests and failures per hour over the last 24 h, oldest first"""

    requests: list[int]
    failures: list[int]


class KnownFlow(BaseModel):
    id: str
    # None: not heard from the runner since the debugger began keeping names.
    name: str | None
    status: str | None
    last_request_at: datetime | None
    sparkline: Sparkline


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
    def __init__(
        self,
        pool: asyncpg.Pool,
        limiter: WorkspaceLimiter,
        trace_url_template: str | None = None,
        legacy: LegacyRequests | None = None,
    ) -> None:
        self.pool = pool
        self.legacy = legacy
        self.series = FlowSeries(pool)
        # The sparklines read every listed flow's last day: a slot like any listing.
        self.limiter = limiter
        self.trace_url_template = trace_url_template
        # Rendered at the first request, not at start: few debuggers are ever asked for
        # the page, and jinja2's import and the compile cost ~30 ms of CPU at each start.
        self._index_html: str | None = None
        self.static = _load_static(ASSETS / "static")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    def index_html(self) -> str:
        if self._index_html is None:
            self._index_html = self._render_index()
        return self._index_html

    def _render_index(self) -> str:
        # jinja2 is imported here, not at the top: see __init__.
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        env = Environment(
            loader=FileSystemLoader(ASSETS / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        # Rendered once: the shell is the same for everyone and holds no data.
        return env.get_template("index.html").render(
            outcomes=sorted(RECORDED_OUTCOMES),
            modes=tuple(RunMode),
            replay_outcomes=sorted(REPLAY_FILTER_OUTCOMES),
            failed_outcomes=",".join(FAILED_OUTCOMES),
            # An attribute value, escaped by the template; the script only fills in the
            # id (URL-encoded) and links only http(s) (settings.py checks it too).
            trace_url_template=self.trace_url_template or "",
            waiting=Progress.WAITING,
        )

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.index_html(),
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
        workspace_id = call.caller.workspace_id
        async with self.limiter.slot(workspace_id):
            statement = LIST_FLOWS.replace("{requests}", requests_source(self.legacy))
            rows = await self.pool.fetch(statement, uuid.UUID(workspace_id), MAX_FLOWS)
            lines = await self.series.sparklines([r["id"] for r in rows], workspace_id)
        return KnownFlows(
            items=[
                KnownFlow(
                    id=r["id"],
                    name=r["name"],
                    status=r["status"],
                    last_request_at=r["last_request_at"],
                    sparkline=Sparkline(**lines[r["id"]]),
                )
                for r in rows
            ]
        )
