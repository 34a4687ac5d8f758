"""The ingress's side of a secret learned from a handshake (`asana`): the runner owns
flows, so the ingress asks it to keep the secret (`runner.learn_webhook_secret`) and
answers the handshake only once it has: the secret must hold before the provider sends
its first event. The secret is sealed here first (shared/secret_box.py, bound to the
flow's workspace), so the broker never carries it in the clear."""

from shared.errors import NotFound, Timeout, Unauthorized, Unavailable
from shared.messaging.contracts import LEARN_WEBHOOK_SECRET
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.learned_secrets import LearnWebhookSecret
from shared.secret_box import SecretBox


def already_held(mode: str) -> Unauthorized:
    """The refusal of a handshake to a flow that holds its secret already: Asana sends
    its handshake once, when a webhook is created, so another one is a second webhook
    to this URL, or someone who found the URL; the secret the first one gave stays."""
    return Unauthorized(
        f"invalid {mode} handshake: this flow already holds a secret (a later handshake"
        " cannot replace it; to re-arm the flow, save its webhook.auth.secrets as []"
        " through the flows API, then create the webhook again)"
    )


class SecretLearner:
    def __init__(self, rpc: RpcClient, box: SecretBox | None) -> None:
        self.rpc = rpc
        self.box = box

    async def learn(self, flow: FlowWebhookSettings, secret: str) -> int:
        """The flow's version that holds `secret`. 401 when the flow holds a secret
        already (or no longer learns one), 404 when it is gone, 400 for a secret the
        runner would not accept on save, 503 when the runner does not answer or cannot
        keep it (nothing was kept: the provider may try again)."""
        assert flow.signing is not None
        mode = flow.signing.mode
        if self.box is None:
            raise Unavailable(f"this ingress cannot keep {mode} secrets (no secrets key)")
        request = LearnWebhookSecret(
            flow_id=flow.flow_id,
            workspace_id=flow.workspace_id,
            sealed_secret=self.box.seal(secret, flow.workspace_id),
        )
        try:
            learned = await self.rpc.call(LEARN_WEBHOOK_SECRET, request)
        except Timeout:
            raise Unavailable(
                f"the runner did not answer in time: the {mode} secret is not kept yet"
            ) from None
        if learned.state == "learned":
            assert learned.version is not None
            return learned.version
        if learned.state == "not_found":
            raise NotFound("no such flow")
        if learned.state == "not_learning":
            raise Unauthorized(
                f"invalid {mode} handshake: the flow's mode has changed; it learns no secret"
            )
        raise already_held(mode)
