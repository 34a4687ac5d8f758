"""`runner.learn_webhook_secret`: a secret a provider gives in its first handshake
(Asana's `X-Hook-Secret`), kept as the flow's only while the flow holds none.

The runner owns flows, so the ingress asks it. The secret arrives sealed by the ingress
(no reader of the broker learns it); it is opened, checked like a secret saved through
the flows API, sealed again with the ring's current key and written by one conditional
update (`FlowStore.learn_secret`): of two concurrent handshakes exactly one wins, the
other is told `held`. A win is a new version of the flow whose `flow.changed` is
published inside the transaction, as for every change (a change the broker does not
confirm is rolled back: the ingress answers 503 and the provider may try again), so
auth and every ingress learn it within the usual bound."""

import structlog

from services.runner.access import FlowAccess
from services.runner.definition import LEARNED_SECRET_MODES, SealedSecret, check_learned_secret
from services.runner.store import FlowStore
from services.runner.webhook_secrets import hint
from shared.errors import Unavailable
from shared.schemas.learned_secrets import LearnWebhookSecret, WebhookSecretLearned
from shared.secret_box import SealError, SecretBox

log = structlog.get_logger(__name__)

# What the ingress's refusal names (the header the secret came in).
LEARNED_SECRET_FIELD = "X-Hook-Secret"


class SecretLearning:
    def __init__(self, store: FlowStore, access: FlowAccess, box: SecretBox | None) -> None:
        self.store = store
        self.access = access
        self.box = box

    async def learn(self, request: LearnWebhookSecret) -> WebhookSecretLearned:
        if self.box is None:
            raise Unavailable(
                "the runner cannot keep webhook secrets: it has no FLOWHOOKS_WEBHOOK_SECRETS_KEY"
            )
        try:
            secret = self.box.open(request.sealed_secret, request.workspace_id)
        except SealError:
            # Another ring than the ingress's: an operator's mistake, not the sender's.
            log.error("learned_secret_unopenable", flow_id=request.flow_id)
            raise Unavailable(
                "the runner cannot open the secret the ingress sealed (their"
                " FLOWHOOKS_WEBHOOK_SECRETS_KEY rings differ)"
            ) from None
        flow = await self.store.get(request.flow_id, request.workspace_id)
        if flow is None:
            return WebhookSecretLearned(state="not_found")
        mode = (flow.definition["webhook"].get("auth") or {}).get("mode")
        if mode not in LEARNED_SECRET_MODES:
            return WebhookSecretLearned(state="not_learning")
        check_learned_secret(mode, secret, LEARNED_SECRET_FIELD)
        stored = SealedSecret(sealed=self.box.seal(secret, flow.workspace_id), hint=hint(secret))
        async with self.store.pool.acquire() as conn, conn.transaction():
            saved = await self.store.learn_secret(
                conn, flow.id, flow.workspace_id, mode, stored.model_dump()
            )
            if saved is not None:
                await self.access.publish(saved)
        if saved is not None:
            log.info("webhook_secret_learned", flow_id=flow.id, version=saved.version)
            return WebhookSecretLearned(state="learned", version=saved.version)
        # Lost to a secret already held, or to a change meanwhile (deleted, another mode).
        current = await self.store.get(request.flow_id, request.workspace_id)
        if current is None:
            return WebhookSecretLearned(state="not_found")
        if (current.definition["webhook"].get("auth") or {}).get("mode") != mode:
            return WebhookSecretLearned(state="not_learning")
        return WebhookSecretLearned(state="held", version=current.version)
