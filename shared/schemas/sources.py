"""Sources (one URL, many flows): what the ingress asks the runner about a source, and
the event that tells every ingress replica to forget what it cached."""

from typing import Any

from pydantic import BaseModel, Field

from shared.schemas.access import DedupSettings, SigningSettings
from shared.schemas.vocabulary import Outcome, envelope


def source_answer(request_id: str, routed: int, **more: int) -> dict[str, Any]:
    """The answer to a source's request (contract): `accepted` with the number of runs
    it started (`routed`), or `filtered` when it started none."""
    message = "accepted" if routed else Outcome.FILTERED
    return envelope(200, None, message, {"request_id": request_id, "routed": routed, **more})


class GetSource(BaseModel):
    source_id: str


class SourceRoute(BaseModel):
    """One subscribed flow as the ingress needs it: its filter (None: every request),
    its version (the run's `flow_version`) and whether it is paused (skipped)."""

    flow_id: str
    flow_version: int
    paused: bool
    filter: dict[str, Any] | None = None


class SourceAccess(BaseModel):
    """`runner.get_source`: a source's verification, dedup and routes. `found` False: no
    such source (cached too: a flood of unknown ids costs one RPC per id)."""

    source_id: str
    found: bool
    workspace_id: str = ""
    version: int = 0
    # SHA-256 of the source's bearer token under each key of the runner's ring, by key id.
    token_hashes: dict[str, str] = {}
    signing: SigningSettings | None = None
    dedup: DedupSettings | None = None
    dedup_default: bool = True
    routes: list[SourceRoute] = []


class SourceChanged(BaseModel):
    """runner -> every ingress (`source.changed`), after the change is committed: forget
    the source (`source_id`), or every source routing to a flow that changed (`flow_id`)."""

    source_id: str | None = None
    flow_id: str | None = None


# The debugger page's list of sources (`runner.list_sources`): at most this many.
MAX_LISTED_SOURCES = 200


class ListSources(BaseModel):
    """debugger -> runner: the workspace's sources, for the debugger page."""

    workspace_id: str
    limit: int = Field(default=MAX_LISTED_SOURCES, ge=1, le=MAX_LISTED_SOURCES)


class ListedRoute(BaseModel):
    """A route as the debugger page shows it: the flow, its filter, its flow paused."""

    flow_id: str
    filter: dict[str, Any] | None = None
    paused: bool = False


class ListedSource(BaseModel):
    """A source as the debugger page shows it: never its token, secrets or hints."""

    id: str
    name: str
    url: str
    # `auth.mode` (None: no verification but the source's bearer token).
    auth_mode: str | None = None
    routes: list[ListedRoute] = []


class ListedSources(BaseModel):
    """`runner.list_sources`: oldest id first; `more`: the workspace has more than listed."""

    items: list[ListedSource]
    more: bool = False
