"""The supervisor's cache of flows as saved, by id (what a run needs of its flow: the
snapshot a worker gets, its timeout, callback and pacing); reloaded when a request names
a newer version, and always for a replay."""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from services.runner.definition import WebhookCallback, WebhookTrigger
from services.runner.pacing import Pacing
from services.runner.store import FlowStore
from services.runner.worker_protocol import FlowSnapshot
from shared.schemas.runs import CURRENT_VERSION


@dataclass(frozen=True)
class CachedFlow:
    snapshot: FlowSnapshot
    snapshot_encoded: bytes  # encoded once: it goes to a worker with every run
    timeout_s: float
    # `webhook.callback` as stored (secret sealed); None: no completion callback.
    callback: WebhookCallback | None = None
    # Its ordering and pacing (pacing.py); None: its async runs start at once.
    pacing: Pacing | None = None


class FlowCache:
    """Flows as saved, by id; reloaded when a request names a newer version. The
    supervisor never parses templates: workers do (user code stays in them)."""

    def __init__(self, store: FlowStore, size: int = 10_000) -> None:
        self.store = store
        self.size = size
        self._flows: OrderedDict[str, CachedFlow] = OrderedDict()

    def cached(self, flow_id: str, min_version: int) -> CachedFlow | None:
        """The flow if its cached copy serves a run of `min_version` (no replay's):
        what `get` returns without reading the store; None when `get` would read it."""
        cached = self._flows.get(flow_id)
        if (
            cached is None
            or min_version == CURRENT_VERSION
            or cached.snapshot.version < min_version
        ):
            return None
        self._flows.move_to_end(flow_id)
        return cached

    async def get(self, flow_id: str, min_version: int) -> CachedFlow | None:
        cached = self._flows.get(flow_id)
        # A replay (`CURRENT_VERSION`) always reads the flow afresh.
        if (
            cached is not None
            and min_version != CURRENT_VERSION
            and cached.snapshot.version >= min_version
        ):
            self._flows.move_to_end(flow_id)
            return cached
        row = await self.store.get(flow_id)
        if row is None:
            self._flows.pop(flow_id, None)
            return None
        snapshot = FlowSnapshot(
            id=row.id,
            workspace_id=row.workspace_id,
            version=row.version,
            definition={"name": row.name, "status": row.status, **without_auth(row.definition)},
        )
        trigger = WebhookTrigger.model_validate(row.definition.get("webhook", {}))
        flow = CachedFlow(
            snapshot,
            snapshot.model_dump_json().encode(),
            trigger.timeout_s,
            trigger.callback,
            Pacing.of(trigger),
        )
        self._flows[flow_id] = flow
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
        return flow


def without_auth(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition a worker gets: no `webhook.auth` nor `webhook.callback`. Their
    secrets are sealed, but the workers run flow authors' templates and need none of it."""
    webhook = definition.get("webhook")
    if not isinstance(webhook, dict) or not {"auth", "callback"} & webhook.keys():
        return definition
    kept = {k: v for k, v in webhook.items() if k not in ("auth", "callback")}
    return {**definition, "webhook": kept}
