"""Who may do what: the auth service's RPCs and the access-change events."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from shared.dedup_keys import PROVIDER_DEFAULT_KEYS
from shared.schemas.vocabulary import SigningMode

FlowStatus = Literal["draft", "live", "paused"]


class SigningSettings(BaseModel):
    """A flow's signature check (`webhook.auth`, any mode but `bearer`), as the ingress
    needs it. `secrets` are sealed (shared/secret_box.py): only the ingress opens them.
    The `hmac` fields are the generic mode's; the provider modes fix their own."""

    mode: SigningMode
    secrets: list[str]
    tolerance_s: int = 300
    header: str | None = None
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    content: str = "{body}"
    # The handshake modes' own fields (`header` above is also `okta`'s: the header whose
    # value must equal a secret). `meta`: the sealed `verify_token` its GET handshake
    # must carry.
    verify_token: str | None = None
    # A public key, not a secret, so not sealed: `discord`'s Ed25519 key (hex), or
    # `sendgrid`'s ECDSA P-256 key as SendGrid shows it (base64 DER).
    public_key: str | None = None
    # `google-pubsub`: the push token's `aud` and `email` claims, and where its signing
    # keys are (None: Google's).
    audience: str | None = None
    email: str | None = None
    jwks_url: str | None = None
    # `sns`: the topics whose messages the flow takes (None: any topic).
    topic_arns: list[str] | None = None


class DedupSettings(BaseModel):
    """`webhook.dedup`: where a request's key is (`header:<name>` or `json:<pointer>`)
    and how long a key counts as seen."""

    key: str
    window_s: int = 86_400


class FlowWebhookSettings(BaseModel):
    """What the ingress needs to know about a flow to take one of its webhooks."""

    flow_id: str
    workspace_id: str
    version: int
    status: FlowStatus
    is_async: bool = False
    timeout_s: float = 30.0
    # None: bearer only (the default mode). Callers that send a bearer are judged by
    # the bearer rules whatever the mode.
    signing: SigningSettings | None = None
    # None: the signing mode's default key if it has one (`dedup_of`), else every
    # request runs.
    dedup: DedupSettings | None = None
    # "accept": a sync run still going at `timeout_s` is answered 202 and goes on (up
    # to the runner's FLOWHOOKS_RUNNER_MAX_TIMEOUT_S).
    on_timeout: Literal["error", "accept"] = "error"
    # False: the flow saved `"dedup": null`, so no default key either. True by default:
    # runners before the defaults never stored a null.
    dedup_default: bool = True
    # `webhook.filter` (shared/filters.py, checked on save): None, every request runs.
    filter: dict[str, Any] | None = None

    def dedup_of(self) -> DedupSettings | None:
        """The flow's dedup: its own `webhook.dedup`; none saved, its signing mode's
        provider default (`PROVIDER_DEFAULT_KEYS`, the default window) unless the flow
        turned it off with `"dedup": null`; else None (every request runs)."""
        if self.dedup is not None or not self.dedup_default or self.signing is None:
            return self.dedup
        key = PROVIDER_DEFAULT_KEYS.get(self.signing.mode)
        return DedupSettings(key=key) if key is not None else None


class TokenKeyState(BaseModel):
    """One key of the runner's flow-token key ring, known outside the runner by its id."""

    key_id: str
    # Tokens of this key are refused from this time on (a previous key's grace period).
    not_after: datetime | None = None


class TokenRingState(BaseModel):
    """Which keys' flow tokens are accepted. `generation` grows each time a runner
    starts with a ring that differs from the last one; auth keeps the highest."""

    generation: int
    keys: list[TokenKeyState]


class FlowChanged(BaseModel):
    """runner -> auth (`flow.changed`): a flow's access state after every change.
    Carries the webhook token's hashes, never a token."""

    flow_id: str
    workspace_id: str
    version: int
    # The token the API shows (derived from the ring's current key).
    token_hash: str
    settings: FlowWebhookSettings
    deleted: bool = False
    # Key id -> hash of the token that key derives for this version's nonce, for every
    # key of the ring whose token may have been shown (the current one included).
    # Empty (an older runner): only `token_hash`, under no key id.
    token_hashes: dict[str, str] = {}
    # The runner's key ring when it published this; None from an older runner.
    ring: TokenRingState | None = None
    # The flow's name, for people (the debugger's page lists flows by it); None from an
    # older runner.
    name: str | None = None


class ListFlowAccess(BaseModel):
    """auth -> runner at start: page through every flow's access state."""

    after_flow_id: str | None = None
    limit: int = 500


class FlowAccessPage(BaseModel):
    items: list[FlowChanged]
    next_after_flow_id: str | None
    # The answering runner's key ring (a restored auth database learns it here).
    ring: TokenRingState | None = None


class FlowAccessChanged(BaseModel):
    """auth -> every ingress (`flow_access.changed`), after auth applied the change."""

    # None: every flow (the key ring changed: a dropped key's tokens must go everywhere).
    flow_id: str | None


class FlowOwnerQuery(BaseModel):
    """debugger -> runner: who owns this flow? Asked when the debugger's copy
    (`debugger.flows`, fed by `flow.changed`) does not know the flow yet."""

    flow_id: str


class FlowOwner(BaseModel):
    """The flow's workspace and version as the runner has it; `found` false for an
    unknown or deleted flow (the runner keeps no tombstones)."""

    flow_id: str
    found: bool
    workspace_id: str | None = None
    version: int | None = None
    # For the debugger's list of flows; None from an older runner.
    name: str | None = None
    status: FlowStatus | None = None


class AccessTokenRevoked(BaseModel):
    """auth -> every ingress (`access_token.revoked`)."""

    token_id: str
    token_hash: str


class AuthorizeWebhook(BaseModel):
    """ingress -> auth: may this bearer (sent as its SHA-256 hash) run this flow?
    `bearer_hash` None: the caller sent no Authorization header; auth answers
    `signature` with the flow's settings when the flow has a signing mode (the ingress
    checks the signature itself), else `unauthorized`."""

    flow_id: str
    bearer_hash: str | None


class WebhookAccess(BaseModel):
    decision: Literal["allowed", "signature", "unauthorized", "forbidden", "not_found"]
    flow: FlowWebhookSettings | None = None
    # The personal token's expiry, so that a cached answer is not used past it.
    expires_at: datetime | None = None


class IdentifyToken(BaseModel):
    """runner/debugger -> auth: which workspace and scopes has this bearer?"""

    bearer_hash: str


class TokenIdentity(BaseModel):
    token_id: str
    workspace_id: str
    scopes: list[str]
