"""What the runner tells auth about each flow's access: `flow.changed` after every
change (published inside the change's transaction, so a change the broker did not
confirm is rolled back), and the `runner.list_flow_access` RPC that auth pages through
at start.

Each change carries the hash of the flow's token under every key of the ring whose
token may have been shown (`TokenKeyRing.issuers_since`), by key id, and the ring
itself (key ids, end times, generation). A runner that starts with a ring other than
the one announced last republishes every flow before it serves (`FlowAccess.open`), so
auth learns the new keys' hashes and forgets the dropped keys at once."""

import asyncio
from typing import Any

import structlog

from services.runner.flow_tokens import flow_token
from services.runner.store import FlowRow, FlowStore
from services.runner.token_keys import TokenKeyRing
from shared.bearer import hash_token
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_CHANGED
from shared.schemas.access import (
    DedupSettings,
    FlowAccessPage,
    FlowChanged,
    FlowOwner,
    FlowOwnerQuery,
    FlowWebhookSettings,
    ListFlowAccess,
    SigningSettings,
    TokenKeyState,
    TokenRingState,
)

log = structlog.get_logger(__name__)

# Flows republished at once when the ring changed (each waits for its confirm).
ANNOUNCE_CONCURRENCY = 50
ANNOUNCE_PAGE = 500


def signing_settings(webhook: dict[str, Any]) -> SigningSettings | None:
    """A signing flow's check for the ingress: its secrets sealed, as stored."""
    auth = webhook.get("auth")
    if not isinstance(auth, dict) or auth.get("mode", "bearer") == "bearer":
        return None
    return SigningSettings.model_validate(
        {
            **{key: value for key, value in auth.items() if value is not None},
            "secrets": [secret["sealed"] for secret in auth.get("secrets", [])],
            # `meta`'s verify token travels sealed like the secrets.
            "verify_token": (auth.get("verify_token") or {}).get("sealed"),
        }
    )


class RingMismatch(Exception):
    """The ring given differs from the one the runners announced last."""


class FlowAccess:
    def __init__(
        self, store: FlowStore, broker: Broker, ring: TokenKeyRing, generation: int
    ) -> None:
        self.store = store
        self.broker = broker
        self.ring = ring
        self.ring_state = TokenRingState(
            generation=generation,
            keys=[TokenKeyState(key_id=key.key_id, not_after=key.not_after) for key in ring.keys],
        )

    @classmethod
    async def open(cls, store: FlowStore, broker: Broker, ring: TokenKeyRing) -> "FlowAccess":
        """The runner's at start: if its ring is not the one announced last, a new
        generation, and every flow republished under it before the runner serves."""
        generation, announced = await store.claim_token_ring(ring.fingerprint)
        access = cls(store, broker, ring, generation)
        if not announced:
            count = await access.announce_all()
            await store.mark_ring_announced(generation)
            log.info(
                "token_ring_announced",
                generation=generation,
                key_ids=[key.key_id for key in ring.keys],
                flows=count,
            )
        return access

    @classmethod
    async def for_command(
        cls, store: FlowStore, broker: Broker, ring: TokenKeyRing
    ) -> "FlowAccess":
        """A command beside running runners (rotate-all-tokens) must use their ring: it
        never announces one of its own."""
        announced = await store.token_ring()
        if announced is None or announced[0] != ring.fingerprint:
            raise RingMismatch(
                "this key ring is not the one the runners announced last: give the command"
                " the runners' FLOWHOOKS_RUNNER_TOKEN_KEYS (or start the runners with this one)"
            )
        return cls(store, broker, ring, announced[1])

    def token(self, flow: FlowRow) -> str:
        """The token the API shows: the current key's."""
        return flow_token(self.ring.current.secret, flow.id, flow.token_nonce)

    def token_hashes(self, flow: FlowRow) -> dict[str, str]:
        return {
            key.key_id: hash_token(flow_token(key.secret, flow.id, flow.token_nonce))
            for key in self.ring.issuers_since(flow.token_key_id)
        }

    def changed(self, flow: FlowRow, deleted: bool = False) -> FlowChanged:
        webhook = flow.definition["webhook"]
        version = flow.version + 1 if deleted else flow.version
        return FlowChanged(
            flow_id=flow.id,
            workspace_id=flow.workspace_id,
            version=version,
            token_hash=hash_token(self.token(flow)),
            token_hashes=self.token_hashes(flow),
            ring=self.ring_state,
            deleted=deleted,
            name=flow.name,
            settings=FlowWebhookSettings(
                flow_id=flow.id,
                workspace_id=flow.workspace_id,
                version=version,
                status=flow.status,
                is_async=bool(webhook.get("async", False)),
                timeout_s=float(webhook.get("timeout_s", 30.0)),
                signing=signing_settings(webhook),
                dedup=DedupSettings.model_validate(webhook["dedup"])
                if webhook.get("dedup")
                else None,
                on_timeout=webhook.get("on_timeout", "error"),
                # Saved `"dedup": null`: not even the signing mode's default key.
                dedup_default=not ("dedup" in webhook and webhook["dedup"] is None),
                filter=webhook.get("filter"),
            ),
        )

    async def publish(self, flow: FlowRow, deleted: bool = False) -> None:
        """Raises `Unavailable` when the broker does not confirm (the caller rolls back)."""
        await self.broker.publish_event(FLOW_CHANGED, self.changed(flow, deleted))

    async def announce_all(self) -> int:
        """Republish every flow's current state (same versions) under this ring."""
        after: str | None = None
        count = 0
        while True:
            flows = await self.store.page_all(after, ANNOUNCE_PAGE)
            for start in range(0, len(flows), ANNOUNCE_CONCURRENCY):
                chunk = flows[start : start + ANNOUNCE_CONCURRENCY]
                await asyncio.gather(*(self.publish(flow) for flow in chunk))
            count += len(flows)
            if len(flows) < ANNOUNCE_PAGE:
                return count
            after = flows[-1].id

    async def list_flow_access(self, request: ListFlowAccess) -> FlowAccessPage:
        limit = max(1, min(request.limit, 1000))
        flows = await self.store.page_all(request.after_flow_id, limit)
        return FlowAccessPage(
            items=[self.changed(flow) for flow in flows],
            next_after_flow_id=flows[-1].id if len(flows) == limit else None,
            ring=self.ring_state,
        )

    async def flow_owner(self, query: FlowOwnerQuery) -> FlowOwner:
        """`runner.get_flow_owner`: the debugger's read-through for a flow it has not
        heard of yet. Deleted flows are gone from the store, so they are not found."""
        flow = await self.store.get(query.flow_id)
        if flow is None:
            return FlowOwner(flow_id=query.flow_id, found=False)
        return FlowOwner(
            flow_id=flow.id,
            found=True,
            workspace_id=flow.workspace_id,
            version=flow.version,
            name=flow.name,
            status=flow.status,
        )
