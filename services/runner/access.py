"""What the runner tells auth about each flow's access: `flow.changed` after every
change (published inside the change's transaction, so a change the broker did not
confirm is rolled back), and the `runner.list_flow_access` RPC that auth pages through
at start."""

from services.runner.flow_tokens import flow_token
from services.runner.store import FlowRow, FlowStore
from shared.bearer import hash_token
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_CHANGED
from shared.schemas.access import FlowAccessPage, FlowChanged, FlowWebhookSettings, ListFlowAccess


class FlowAccess:
    def __init__(self, store: FlowStore, broker: Broker, token_key: str) -> None:
        self.store = store
        self.broker = broker
        self.token_key = token_key

    def token(self, flow: FlowRow) -> str:
        return flow_token(self.token_key, flow.id, flow.token_nonce)

    def changed(self, flow: FlowRow, deleted: bool = False) -> FlowChanged:
        webhook = flow.definition["webhook"]
        version = flow.version + 1 if deleted else flow.version
        return FlowChanged(
            flow_id=flow.id,
            workspace_id=flow.workspace_id,
            version=version,
            token_hash=hash_token(self.token(flow)),
            deleted=deleted,
            settings=FlowWebhookSettings(
                flow_id=flow.id,
                workspace_id=flow.workspace_id,
                version=version,
                status=flow.status,
                is_async=bool(webhook.get("async", False)),
                timeout_s=float(webhook.get("timeout_s", 30.0)),
            ),
        )

    async def publish(self, flow: FlowRow, deleted: bool = False) -> None:
        """Raises `Unavailable` when the broker does not confirm (the caller rolls back)."""
        await self.broker.publish_event(FLOW_CHANGED, self.changed(flow, deleted))

    async def list_flow_access(self, request: ListFlowAccess) -> FlowAccessPage:
        limit = max(1, min(request.limit, 1000))
        flows = await self.store.page_all(request.after_flow_id, limit)
        return FlowAccessPage(
            items=[self.changed(flow) for flow in flows],
            next_after_flow_id=flows[-1].id if len(flows) == limit else None,
        )
