"""`flowhooks flows rotate-all-tokens`: a new nonce for every flow, so every flow's token
is derived anew from the current key of the ring and every token shown before (under
any key) is refused.

It runs beside the runners, as the runner: with the runner's settings (database, broker
login, key ring), the runner's store, and `flow.changed` published inside each flow's
transaction exactly as the flows API does, so auth and every ingress drop the old token
within a second, flow by flow. The ring must be the one the runners announced last:
tokens derived from another ring would be refused.
"""

import asyncio
import sys
from typing import TextIO

from services.runner.access import FlowAccess
from services.runner.app import DATABASE
from services.runner.flow_tokens import new_nonce
from services.runner.settings import RunnerSettings
from services.runner.store import FlowRow, FlowStore
from shared.db import open_pool
from shared.messaging.connection import Broker

PAGE = 200


async def _rotate(access: FlowAccess, flow: FlowRow) -> bool:
    """One flow, retried while it is being changed meanwhile; False if it was deleted."""
    store = access.store
    current: FlowRow | None = flow
    while current is not None:
        async with store.pool.acquire() as conn, conn.transaction():
            rotated = await store.rotate_nonce(
                conn, current, new_nonce(), access.ring.current.key_id
            )
            if rotated is not None:
                await access.publish(rotated)
                return True
        current = await store.get(current.id)
    return False


async def rotate_all_tokens(settings: RunnerSettings, out: TextIO = sys.stdout) -> int:
    """Returns the number of flows rotated. Raises `RingMismatch` for another ring and
    `Unavailable` when the broker does not confirm (the flow in hand keeps its token;
    running the command again finishes the job)."""
    pool = await open_pool(settings.database_url, 4, DATABASE.schema, DATABASE.migrations)
    broker = Broker(
        settings.broker_urls, "runner", settings.publish_timeout_s, settings.broker_replicas
    )
    try:
        await broker.connect()
        store = FlowStore(pool)
        access = await FlowAccess.for_command(store, broker, settings.token_ring())
        rotated = 0
        after: str | None = None
        while True:
            flows = await store.page_all(after, PAGE)
            results = await asyncio.gather(*(_rotate(access, flow) for flow in flows))
            rotated += sum(results)
            if flows:
                print(f"rotated {rotated} flow token(s) so far", file=out, flush=True)
            if len(flows) < PAGE:
                return rotated
            after = flows[-1].id
    finally:
        await broker.close()
        await pool.close()
