"""auth's copy of each flow's access state (token hash, status, webhook settings).

Flows belong to the runner. auth keeps its own copy so that a webhook check needs no
call to the runner and no read of the runner's tables: the runner publishes
`flow.changed` after every change (consumed here from a durable quorum queue, so
nothing is missed while auth is down), and at start auth pages through the runner's
`runner.list_flow_access` once to heal any gap (a new deployment, a restored database).
Versions make both paths safe to interleave: an older state never overwrites a newer.
After applying a change auth tells every ingress replica to drop its cached answers.
"""

import asyncio

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.auth.store import AuthStore
from shared.errors import ApiError
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_ACCESS_CHANGED, LIST_FLOW_ACCESS
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowAccessChanged, FlowChanged, ListFlowAccess

log = structlog.get_logger(__name__)


class FlowAccessSync:
    def __init__(self, store: AuthStore, broker: Broker, rpc: RpcClient) -> None:
        self.store = store
        self.broker = broker
        self.rpc = rpc
        self.resynced = asyncio.Event()

    async def apply(self, change: FlowChanged) -> None:
        if await self.store.apply_flow_change(change):
            # No ingress may be running: an unroutable notice is fine (mandatory=False).
            await self.broker.publish_event(
                FLOW_ACCESS_CHANGED,
                FlowAccessChanged(flow_id=change.flow_id),
                mandatory=False,
            )

    async def on_flow_changed(self, message: AbstractIncomingMessage) -> None:
        try:
            change = FlowChanged.model_validate_json(message.body)
        except ValidationError:
            log.error("bad_flow_changed_event", body=message.body[:200])
            await message.reject(requeue=False)
            return
        try:
            await self.apply(change)
        except Exception:
            # The database or broker is briefly away: let the broker deliver it again.
            log.exception("flow_change_not_applied", flow_id=change.flow_id)
            await asyncio.sleep(1)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def resync_forever(self) -> None:
        """Page through the runner's flows until one full pass succeeded."""
        while True:
            try:
                await self._resync_once()
                self.resynced.set()
                return
            except (ApiError, OSError) as exc:
                log.info("flow_resync_retry", reason=str(exc))
                await asyncio.sleep(2)

    async def _resync_once(self) -> None:
        after: str | None = None
        count = 0
        while True:
            page = await self.rpc.call(LIST_FLOW_ACCESS, ListFlowAccess(after_flow_id=after))
            for change in page.items:
                await self.apply(change)
            count += len(page.items)
            if page.next_after_flow_id is None:
                log.info("flow_resync_done", flows=count)
                return
            after = page.next_after_flow_id
