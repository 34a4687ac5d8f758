"""A secret a provider gives in its handshake (`runner.learn_webhook_secret`, ingress ->
runner): Asana's `X-Hook-Secret`, kept by the flow only while it holds none."""

from typing import Literal

from pydantic import BaseModel


class LearnWebhookSecret(BaseModel):
    """Keep this secret as the flow's, if the flow (of this workspace, in a mode that
    learns its secret) holds none yet. `sealed_secret`: sealed by the ingress
    (shared/secret_box.py, bound to the workspace), so that no reader of the broker
    learns it; the runner opens it, checks it and seals it again as it stores it."""

    flow_id: str
    workspace_id: str
    sealed_secret: str


class WebhookSecretLearned(BaseModel):
    """`learned`: the flow holds it now, at `version` (`flow.changed` published).
    `held`: the flow already holds a secret; it is kept, this one refused. `not_found`:
    no such flow in this workspace. `not_learning`: the flow's mode does not learn its
    secret (changed since the ingress read it)."""

    state: Literal["learned", "held", "not_found", "not_learning"]
    version: int | None = None
