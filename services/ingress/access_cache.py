"""The ingress's cache of auth's answers, kept correct by auth's change events.

Every answer is cached, keyed by (flow id, bearer hash): refusals too, so a flood of
bad tokens costs no RPC each. That is safe because a bearer's standing for a flow only
changes through events the cache hears about (a token is random, so an unknown hash
never becomes valid; a flow appearing or changing sends `flow_access.changed`). Auth publishes
`flow_access.changed` after it applied a flow change (pause, deletion, token rotation)
and `access_token.revoked` after a revocation; every ingress replica receives them on
a queue of its own and evicts the affected entries, so a change takes effect within
the time a message takes to cross the broker. An answer fetched while a change event
arrived is not cached (`_generation`), and after a broker reconnect (events may have
been missed) the whole cache is dropped. The TTL is only a backstop.
"""

import time
from collections import OrderedDict
from datetime import UTC, datetime

import structlog

from services.ingress.metrics import IngressMetrics
from shared.errors import Timeout, Unavailable
from shared.messaging.contracts import ACCESS_TOKEN_REVOKED, AUTHORIZE_WEBHOOK, FLOW_ACCESS_CHANGED
from shared.messaging.dispatch import EventHandlers
from shared.messaging.rpc import RpcClient
from shared.schemas.access import (
    AccessTokenRevoked,
    AuthorizeWebhook,
    FlowAccessChanged,
    WebhookAccess,
)

log = structlog.get_logger(__name__)

CacheKey = tuple[str, str]


class AccessCache:
    def __init__(
        self,
        rpc: RpcClient,
        max_entries: int,
        ttl_s: float,
        metrics: IngressMetrics | None = None,
    ) -> None:
        self.rpc = rpc
        self.metrics = metrics if metrics is not None else IngressMetrics()
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[CacheKey, tuple[WebhookAccess, float]] = OrderedDict()
        self._generation = 0
        # The events of this replica's access-change queue.
        self.changes = EventHandlers()
        self.changes.on(FLOW_ACCESS_CHANGED, self._flow_access_changed)
        self.changes.on(ACCESS_TOKEN_REVOKED, self._token_revoked)

    async def authorize(self, flow_id: str, bearer_hash: str | None) -> WebhookAccess:
        """`bearer_hash` None: a caller without a bearer (cached under "", which no
        token hashes to)."""
        key = (flow_id, bearer_hash or "")
        cached = self._entries.get(key)
        if cached is not None:
            access, stored_at = cached
            fresh = time.monotonic() - stored_at < self.ttl_s
            unexpired = access.expires_at is None or access.expires_at > datetime.now(UTC)
            if fresh and unexpired:
                self._entries.move_to_end(key)
                self.metrics.cache_hit.inc()
                return access
            del self._entries[key]
        self.metrics.cache_miss.inc()
        generation = self._generation
        try:
            access = await self.rpc.call(
                AUTHORIZE_WEBHOOK, AuthorizeWebhook(flow_id=flow_id, bearer_hash=bearer_hash)
            )
        except Timeout:
            raise Unavailable("the auth service did not answer in time") from None
        if generation == self._generation:
            self._store(key, access)
        return access

    def _store(self, key: CacheKey, access: WebhookAccess) -> None:
        if self.max_entries == 0:
            return
        self._entries[key] = (access, time.monotonic())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, *, flow_id: str | None = None, bearer_hash: str | None = None) -> None:
        self._generation += 1
        stale = [key for key in self._entries if key[0] == flow_id or key[1] == bearer_hash]
        for key in stale:
            del self._entries[key]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def _flow_access_changed(self, change: FlowAccessChanged) -> None:
        if change.flow_id is None:
            # The key ring changed: any cached answer may rest on a dropped key.
            self.clear()
        else:
            self.forget(flow_id=change.flow_id)

    async def _token_revoked(self, revoked: AccessTokenRevoked) -> None:
        self.forget(bearer_hash=revoked.token_hash)
