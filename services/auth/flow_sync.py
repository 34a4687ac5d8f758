"""auth's copy of each flow's access state (token hash, status, webhook settings).

Flows belong to the runner. auth keeps its own copy so that a webhook check needs no
call to the runner and no read of the runner's tables: the runner publishes
`flow.changed` after every change (consumed here from a durable quorum queue, so
nothing is missed while auth is down), and at start auth pages through the runner's
`runner.list_flow_access` once to heal any gap (a new deployment, a restored database).
Versions make both paths safe to interleave: an older state never overwrites a newer.
After applying a change auth tells every ingress replica to drop its cached answers.

The flow-token key ring: each change carries the hash of the flow's token under every
key of the runner's ring (by key id) and the ring itself (key ids, end times, a
generation). A runner that starts with another ring republishes every flow; auth adds
the new keys' hashes and, for a higher generation, replaces its ring and tells every
ingress to drop all its cached answers, so a dropped key's tokens stop everywhere at once.
"""

import asyncio
import itertools

import structlog

from services.auth.store import AuthStore
from shared.errors import ApiError
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_ACCESS_CHANGED, LIST_FLOW_ACCESS
from shared.messaging.rpc import RpcClient
from shared.retry import RetryPolicy
from shared.schemas.access import FlowAccessChanged, FlowChanged, ListFlowAccess, TokenRingState

log = structlog.get_logger(__name__)
# A pass that failed (the runner away) is tried again every 2 s until one succeeds.
RESYNC_RETRY = RetryPolicy((2.0,))


class FlowAccessSync:
    def __init__(self, store: AuthStore, broker: Broker, rpc: RpcClient) -> None:
        self.store = store
        self.broker = broker
        self.rpc = rpc
        self.resynced = asyncio.Event()

    async def apply(self, change: FlowChanged) -> None:
        # The flow's hashes first, then the ring: a ring that adds a key then finds the
        # key's hash in place for this flow.
        if await self.store.apply_flow_change(change):
            await self._notify(change.flow_id)
        if change.ring is not None:
            await self.apply_ring(change.ring)

    async def apply_ring(self, ring: TokenRingState) -> None:
        if await self.store.apply_token_ring(ring):
            log.info(
                "token_ring_changed",
                generation=ring.generation,
                key_ids=[key.key_id for key in ring.keys],
            )
            await self._notify(None)

    async def _notify(self, flow_id: str | None) -> None:
        # No ingress may be running: an unroutable notice is fine (mandatory=False).
        await self.broker.publish_event(
            FLOW_ACCESS_CHANGED, FlowAccessChanged(flow_id=flow_id), mandatory=False
        )

    async def resync_forever(self) -> None:
        """Page through the runner's flows until one full pass succeeded."""
        for failures in itertools.count(1):
            try:
                await self._resync_once()
                self.resynced.set()
                return
            except (ApiError, OSError) as exc:
                log.info("flow_resync_retry", reason=str(exc))
                await asyncio.sleep(RESYNC_RETRY.delay_s(failures))

    async def _resync_once(self) -> None:
        after: str | None = None
        count = 0
        while True:
            page = await self.rpc.call(LIST_FLOW_ACCESS, ListFlowAccess(after_flow_id=after))
            for change in page.items:
                await self.apply(change)
            if page.ring is not None:
                await self.apply_ring(page.ring)
            count += len(page.items)
            if page.next_after_flow_id is None:
                log.info("flow_resync_done", flows=count)
                return
            after = page.next_after_flow_id
