"""The two questions auth answers over RPC: may this bearer run this flow
(`authorize_webhook`, for the ingress) and who is this bearer (`identify_token`, for
the management APIs). Only hashes of bearers ever reach auth."""

import uuid
from datetime import UTC, datetime

from services.auth.store import AccessToken, AuthStore
from shared.api_auth import WEBHOOK_SCOPES
from shared.bearer import same_hash
from shared.errors import Unauthorized
from shared.schemas.access import AuthorizeWebhook, IdentifyToken, TokenIdentity, WebhookAccess


class AccessChecker:
    def __init__(self, store: AuthStore) -> None:
        self.store = store

    async def usable_token(self, bearer_hash: str) -> AccessToken | None:
        token = await self.store.token_by_hash(bearer_hash)
        # The lookup is by an index on the hash; compare once more in constant time.
        if token is None or not same_hash(token.token_hash, bearer_hash):
            return None
        return token if token.usable_at(datetime.now(UTC)) else None

    async def identify_token(self, request: IdentifyToken) -> TokenIdentity:
        token = await self.usable_token(request.bearer_hash)
        if token is None:
            raise Unauthorized("unknown, expired or revoked token")
        return TokenIdentity(
            token_id=token.id, workspace_id=token.workspace_id, scopes=token.scopes
        )

    async def authorize_webhook(self, request: AuthorizeWebhook) -> WebhookAccess:
        """Order matters: the token is judged before anything about the flow is revealed
        (401, then 403 for a personal token without a webhook scope, then 404)."""
        try:
            flow_id: uuid.UUID | None = uuid.UUID(request.flow_id)
        except ValueError:
            flow_id = None
        flow = await self.store.flow_access(flow_id) if flow_id else None
        if request.bearer_hash is None:
            # No bearer: only a signing flow may be called so; the ingress checks the
            # signature. Anything else is 401, so nothing about the flow shows.
            if flow is not None and flow.settings.signing is not None:
                return WebhookAccess(decision="signature", flow=flow.settings)
            return WebhookAccess(decision="unauthorized")
        if flow is not None:
            for token_hash, not_after in flow.accepted_hashes(datetime.now(UTC)):
                if same_hash(token_hash, request.bearer_hash):
                    # A previous key's end time bounds how long the ingress may cache this.
                    return WebhookAccess(
                        decision="allowed", flow=flow.settings, expires_at=not_after
                    )
        token = await self.usable_token(request.bearer_hash)
        if token is None:
            return WebhookAccess(decision="unauthorized")
        if not WEBHOOK_SCOPES.intersection(token.scopes):
            return WebhookAccess(decision="forbidden")
        if flow is None or flow.settings.workspace_id != token.workspace_id:
            return WebhookAccess(decision="not_found")
        return WebhookAccess(decision="allowed", flow=flow.settings, expires_at=token.expires_at)
