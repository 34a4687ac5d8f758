"""A flow's definition: parsing and validation on save. Every refusal is a 400
`bad_request` whose message and `data.field` point at the place (`steps[0].template`)."""

import base64
import binascii
import re
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.runner.pacing import (
    MAX_DELAY_S,
    PACING_FIELDS,
    ConcurrencyConfig,
    DebounceConfig,
    OrderingConfig,
    ThrottleConfig,
)
from services.runner.step_placement import check_step_placement
from services.runner.steps import STEP_TYPES, StepModel
from services.runner.steps.base import REF_ID_PATTERN
from services.runner.templates import TemplateEngine
from shared import standard_webhooks
from shared.dedup_keys import parse_key_spec
from shared.errors import BadRequest
from shared.filters import check_filter
from shared.outbound import OutboundRefused, parse_url
from shared.public_keys import load_ecdsa_public_key
from shared.schemas.access import FlowStatus
from shared.schemas.vocabulary import WebhookAuthMode

RESERVED_REF_IDS = frozenset({"request", "loop"})
# The failure `on_error` steps see: a ref-id of its own only in flows that have them
# (flows saved before `on_error` existed may name a step `error`).
ERROR_NAME = "error"
# Top-level steps of a flow, `steps` and `on_error` together.
MAX_STEPS = 200
# Step lists inside each other (`condition` and `loop` steps), the top level being 1.
# Fixed, not a setting: a stored flow must stay valid for every runner, and far deeper
# definitions cannot even be encoded (orjson stops at 255 levels of JSON: 500 on save).
MAX_STEP_DEPTH = 32


# An HTTP header name (RFC 9110 token).
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
# Response headers a flow may not set: hop-by-hop ones (they describe one connection,
# not the answer), cookies (every flow shares the ingress's origin), and those the
# ingress owns (the body's length and type, the request id, the dedup marker).
REFUSED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "set-cookie",
        "content-length",
        "content-type",
        "x-request-id",
        "idempotent-replayed",
    }
)
MAX_RESPONSE_HEADERS = 20
# A flow's answer is final: a 1xx status is informational (the caller goes on waiting for
# the real answer and hangs).
MIN_FINAL_STATUS = 200
MAX_RESPONSE_HEADER_TEMPLATE_CHARS = 4096
# Two at most: the one in use and the next, while the sender rotates (contract).
MAX_SECRETS = 2
MIN_SECRET_CHARS, MAX_SECRET_CHARS = 8, 512
# A reference to a secret the flow already holds, as GET shows it ("…last4").
HINT_MARK = "\u2026"
MAX_CALLBACK_URL_CHARS = 2048
# Modes checked by a public key or a token's claims instead of secrets (`discord`
# too, checked with the handshake modes): they take no `secrets`.
KEYLESS_MODES = frozenset({"sendgrid", "google-pubsub", "sns"})
# Modes whose secret the flow learns from the provider's first handshake (Asana's
# `X-Hook-Secret`, services/runner/learned_secrets.py): saved with no secret (unarmed),
# and holding one at most.
LEARNED_SECRET_MODES = frozenset({"asana"})
# Each mode's own fields besides `secrets` and `tolerance_s` (the `hmac` ones are below;
# `okta` takes `header`): refused on every other mode, and shown only by their modes.
MODE_FIELDS = {
    "sendgrid": ("public_key",),
    "google-pubsub": ("audience", "email", "jwks_url"),
    "meta": ("verify_token",),
    "discord": ("public_key",),
    "sns": ("topic_arns",),
}
# A public key as a mode takes it (Discord's Ed25519 key is 64 hex characters, SendGrid's
# P-256 key about 124 characters of base64 DER).
MAX_PUBLIC_KEY_CHARS = 1024
ED25519_PUBLIC_KEY_BYTES = 32
MAX_CLAIM_CHARS = 512
# `sns`'s topic allow-list: an SNS topic's ARN (`arn:<partition>:sns:<region>:<account>:
# <name>`, the name at most 256 characters, `.fifo` for a FIFO topic).
SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
MAX_TOPIC_ARNS = 100


class SealedSecret(BaseModel):
    """A signing secret as stored: sealed (shared/secret_box.py) and its hint."""

    model_config = ConfigDict(extra="forbid")

    sealed: str
    hint: str


class WebhookAuth(BaseModel):
    """`webhook.auth`. On save `secrets` are the secrets themselves (or the hints of
    ones the flow holds); as stored they are `SealedSecret`s (flows_api.py)."""

    model_config = ConfigDict(extra="forbid")

    mode: WebhookAuthMode
    secrets: list[str | SealedSecret] = Field(default_factory=list, max_length=MAX_SECRETS)
    tolerance_s: int = Field(default=300, ge=1, le=86_400)
    # The generic `hmac` mode's own fields.
    header: str | None = Field(default=None, pattern=HEADER_NAME_PATTERN, max_length=100)
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field(default="", max_length=64)
    timestamp_header: str | None = Field(default=None, pattern=HEADER_NAME_PATTERN, max_length=100)
    content: str | None = Field(default=None, max_length=200)
    # `meta`: the verify token its console asks for, a secret (sealed, hinted) like
    # `secrets` (`okta` takes `header` above).
    verify_token: str | SealedSecret | None = None
    # A public key instead of secrets, shown as saved (it is public): `discord`'s
    # Ed25519 key (hex), `sendgrid`'s ECDSA P-256 key (base64 DER).
    public_key: str | None = Field(default=None, max_length=MAX_PUBLIC_KEY_CHARS)
    # `google-pubsub`: the push token's `aud` and `email`, and its JWKS (None: Google's).
    audience: str | None = Field(default=None, min_length=1, max_length=MAX_CLAIM_CHARS)
    email: str | None = Field(default=None, min_length=3, max_length=MAX_CLAIM_CHARS)
    jwks_url: str | None = Field(default=None, max_length=MAX_CALLBACK_URL_CHARS)
    # `sns`: the topics whose messages the flow takes (None: any topic AWS signs for).
    topic_arns: list[str] | None = Field(default=None, max_length=MAX_TOPIC_ARNS)


class ResponseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status_code: int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str | None = Field(default=None, max_length=200)
    # Name -> template (rendered like the body, always to text).
    headers: dict[str, str] = Field(default_factory=dict)


class DedupConfig(BaseModel):
    """`webhook.dedup` (shared/dedup_keys.py says how the key is read)."""

    model_config = ConfigDict(extra="forbid")

    key: str
    # Up to 30 days: keys are kept that long in `runner.dedup_keys`.
    window_s: int = Field(default=86_400, ge=1, le=30 * 86_400)

    @field_validator("key")
    @classmethod
    def _valid_key(cls, key: str) -> str:
        parse_key_spec(key)  # its ValueError is the field's error
        return key


class WebhookCallback(BaseModel):
    """`webhook.callback`: where an async run's result is POSTed (services/runner/
    callbacks.py). On save `secret` is the secret itself (`whsec_...`) or the hint of the
    one the flow holds; as stored it is a `SealedSecret` (webhook_secrets.py)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_CALLBACK_URL_CHARS)
    secret: str | SealedSecret


class WebhookTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ref_id: str = Field(default="web1", pattern=REF_ID_PATTERN, max_length=64)
    is_async: bool = Field(default=False, alias="async")
    timeout_s: float = Field(default=30.0, gt=0)
    response: ResponseConfig | None = None
    # None: the bearer mode.
    auth: WebhookAuth | None = None
    # Left out: the auth mode's default key (shared/dedup_keys.py PROVIDER_DEFAULT_KEYS;
    # none for bearer and hmac); null, given: every request runs (`public` keeps it).
    dedup: DedupConfig | None = None
    # "accept": a sync run still going at `timeout_s` is answered 202 (status URL) and
    # goes on, up to FLOWHOOKS_RUNNER_MAX_TIMEOUT_S.
    on_timeout: Literal["error", "accept"] = "error"
    # None: no completion callback (async flows only).
    callback: WebhookCallback | None = None
    # Ordering and pacing of async runs (services/runner/pacing.py); None: not paced.
    ordering: OrderingConfig | None = None
    concurrency: ConcurrencyConfig | None = None
    debounce: DebounceConfig | None = None
    throttle: ThrottleConfig | None = None
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S)
    # None: every request runs; else only those it matches (shared/filters.py), the
    # others answered 200 `filtered` by the ingress.
    filter: dict[str, Any] | None = None


class FlowDefinition(BaseModel):
    """What a user saves. `steps` hold the step types' own models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    status: FlowStatus = "draft"
    webhook: WebhookTrigger = Field(default_factory=WebhookTrigger)
    steps: list[Any] = Field(default_factory=list, max_length=MAX_STEPS)
    # Run when a step fails (services/runner/engine.py `_recover`), with `error` in the
    # context; then the flow's response, if it has one, answers. Empty: none.
    on_error: list[Any] = Field(default_factory=list, max_length=MAX_STEPS)

    def public(self) -> dict[str, Any]:
        webhook = self.webhook.model_dump(by_alias=True)
        # Left out while unused, so flows saved before they existed read the same; but
        # `"dedup": null` given is kept: it turns the mode's default dedup off.
        dedup_off = "dedup" in self.webhook.model_fields_set and self.webhook.dedup is None
        for name in ("auth", "dedup", "callback", "filter", *PACING_FIELDS):
            if webhook[name] is None and not (name == "dedup" and dedup_off):
                del webhook[name]
        if webhook.get("auth") is not None:
            # The newer modes' fields, shown by the modes that use them only.
            for name in {name for names in MODE_FIELDS.values() for name in names}:
                if webhook["auth"][name] is None:
                    del webhook["auth"][name]
        if webhook["on_timeout"] == "error":
            del webhook["on_timeout"]
        if webhook["response"] is not None and not webhook["response"]["headers"]:
            del webhook["response"]["headers"]
        public = {
            "name": self.name,
            "status": self.status,
            "webhook": webhook,
            "steps": [step.model_dump(by_alias=True) for step in self.steps],
        }
        if self.on_error:  # left out while unused, like the webhook's optional fields
            public["on_error"] = [step.model_dump(by_alias=True) for step in self.on_error]
        return public


def _path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _refuse(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", data={"field": field})


def _parse_steps(raw_steps: Any, prefix: str, depth: int = 1) -> list[StepModel]:
    if not isinstance(raw_steps, list):
        raise _refuse(prefix, "must be a list of steps")
    if depth > MAX_STEP_DEPTH:
        raise _refuse(prefix, f"steps are nested deeper than {MAX_STEP_DEPTH} levels")
    steps: list[StepModel] = []
    for index, raw in enumerate(raw_steps):
        path = f"{prefix}[{index}]"
        if not isinstance(raw, dict):
            raise _refuse(path, "must be an object")
        step_type = STEP_TYPES.get(str(raw.get("type")))
        if step_type is None:
            raise _refuse(
                f"{path}.type",
                f"unknown step type {raw.get('type')!r}; known: {', '.join(sorted(STEP_TYPES))}",
            )
        try:
            step = step_type.model.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise _refuse(_path(tuple(error["loc"]), path), error["msg"]) from None
        status_code = getattr(step, "status_code", None)
        if isinstance(status_code, int):  # a `fail` step's answer
            _check_final_status(f"{path}.status_code", status_code)
        for name, attribute in step.NESTED.items():
            nested = _parse_steps(getattr(step, attribute), f"{path}.{name}", depth + 1)
            setattr(step, attribute, nested)
        steps.append(step)
    return steps


def parse_definition(raw: Any, engine: TemplateEngine, max_timeout_s: float) -> FlowDefinition:
    if not isinstance(raw, dict):
        raise BadRequest("the flow must be a JSON object")
    try:
        definition = FlowDefinition.model_validate({**raw, "steps": [], "on_error": []})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise _refuse(_path(tuple(error["loc"])), error["msg"]) from None
    definition.steps = _parse_steps(raw.get("steps", []), "steps")
    # null (a patch's way to remove them) is none, as left out.
    on_error = raw.get("on_error")
    definition.on_error = [] if on_error is None else _parse_steps(on_error, "on_error")
    if len(definition.steps) + len(definition.on_error) > MAX_STEPS:
        raise _refuse(
            "on_error",
            f"a flow has at most {MAX_STEPS} steps, steps and on_error together",
        )
    check_step_placement(definition.steps, definition.on_error, definition.webhook.is_async)
    if definition.webhook.timeout_s > max_timeout_s:
        raise _refuse("webhook.timeout_s", f"must be at most {max_timeout_s:g} seconds")
    if definition.webhook.auth is not None:
        _check_auth(definition.webhook.auth)
    if definition.webhook.response is not None:
        _check_response(definition.webhook.response)
        _check_response_headers(definition.webhook.response)
    if definition.webhook.callback is not None:
        _check_callback(definition.webhook)
    _check_pacing(definition.webhook)
    if definition.webhook.filter is not None:
        check_filter(definition.webhook.filter, "webhook.filter")
    _check_references(definition, engine)
    return definition


def _check_auth(auth: WebhookAuth) -> None:
    field = "webhook.auth"
    hmac_only = {
        "header": auth.header,
        "timestamp_header": auth.timestamp_header,
        "content": auth.content,
        "prefix": auth.prefix or None,
    }
    if auth.mode != "hmac":
        for name, value in hmac_only.items():
            if name == "header" and auth.mode == "okta":
                continue  # okta's header holds the secret itself
            if value is not None:
                raise _refuse(f"{field}.{name}", "only the hmac mode takes it")
    own_fields = MODE_FIELDS.get(auth.mode, ())
    for names in MODE_FIELDS.values():
        for name in names:
            if name not in own_fields and getattr(auth, name) is not None:
                raise _refuse(f"{field}.{name}", f"the {auth.mode} mode does not take it")
    _check_handshake_fields(auth)
    if auth.mode == "bearer":
        if auth.secrets:
            raise _refuse(f"{field}.secrets", "the bearer mode takes no secrets")
        return
    if auth.mode == "discord":
        return  # a public key, no secrets: checked above
    if auth.mode in KEYLESS_MODES:
        _check_keyless(auth)
        return
    if auth.mode in LEARNED_SECRET_MODES:
        _check_learned_secret_mode(auth)
        return
    if not auth.secrets:
        raise _refuse(f"{field}.secrets", f"the {auth.mode} mode needs one or two secrets")
    for index, secret in enumerate(auth.secrets):
        if isinstance(secret, str) and not secret.startswith(HINT_MARK):
            _check_secret(f"{field}.secrets[{index}]", auth.mode, secret)
    if auth.mode == "hmac":
        if auth.header is None:
            raise _refuse(f"{field}.header", "the hmac mode needs the signature's header name")
        content = auth.content or ("{timestamp}.{body}" if auth.timestamp_header else "{body}")
        if content.count("{body}") != 1:
            raise _refuse(f"{field}.content", "must hold {body} exactly once")
        if ("{timestamp}" in content) != (auth.timestamp_header is not None):
            # A timestamp that is not signed protects nothing; one signed but not sent
            # cannot be checked.
            raise _refuse(
                f"{field}.content",
                "{timestamp} goes with timestamp_header: give both or neither",
            )
        auth.content = content


def _check_handshake_fields(auth: WebhookAuth) -> None:
    """The handshake modes' own fields: `meta`'s verify token, `okta`'s header,
    `discord`'s public key instead of secrets; refused on every other mode."""
    field = "webhook.auth"
    if auth.mode == "meta":
        if auth.verify_token is None:
            raise _refuse(
                f"{field}.verify_token",
                "the meta mode needs the verify token you give Meta's console",
            )
        token = auth.verify_token
        if isinstance(token, str) and not token.startswith(HINT_MARK):
            _check_secret(f"{field}.verify_token", auth.mode, token)
    if auth.mode == "okta":
        if auth.header is None:
            raise _refuse(
                f"{field}.header",
                "the okta mode needs the name of the header Okta sends the secret in"
                " (the event hook's authentication field, e.g. X-Okta-Secret)",
            )
        if auth.header.lower() == "authorization":
            # A request with Authorization takes the bearer path (contract).
            raise _refuse(
                f"{field}.header",
                "Authorization is read as a bearer token: name another header in Okta's"
                " console, e.g. X-Okta-Secret",
            )
    if auth.mode == "discord":
        if auth.secrets:
            raise _refuse(
                f"{field}.secrets", "the discord mode takes public_key instead of secrets"
            )
        if auth.public_key is None:
            raise _refuse(
                f"{field}.public_key",
                "the discord mode needs the application's public key (hex), as the"
                " Developer Portal shows it",
            )
        auth.public_key = _ed25519_public_key(f"{field}.public_key", auth.public_key)


def _ed25519_public_key(field: str, value: str) -> str:
    """An Ed25519 public key as hex (64 characters), lower-cased; 400 if it is not one."""
    value = value.strip().lower()
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise _refuse(
            field, f"an Ed25519 public key is {2 * ED25519_PUBLIC_KEY_BYTES} hex characters"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise _refuse(field, "not a valid Ed25519 public key") from None
    return value


def _check_keyless(auth: WebhookAuth) -> None:
    """`sendgrid`, `google-pubsub` and `sns`: a public key, a token's claims or AWS's
    certificate, no secrets."""
    field = "webhook.auth"
    if auth.mode == "sns":
        _check_sns(auth)
        return
    if auth.secrets:
        raise _refuse(
            f"{field}.secrets",
            f"the {auth.mode} mode takes no secrets"
            + (": give public_key" if auth.mode == "sendgrid" else ": give audience and email"),
        )
    if auth.mode == "sendgrid":
        if auth.public_key is None:
            raise _refuse(f"{field}.public_key", "the sendgrid mode needs SendGrid's public key")
        try:
            load_ecdsa_public_key(auth.public_key)
        except ValueError as exc:
            raise _refuse(f"{field}.public_key", str(exc)) from None
        return
    for name in ("audience", "email"):
        value = getattr(auth, name)
        if value is None:
            needs = f"the google-pubsub mode needs the push token's {name}"
            raise _refuse(f"{field}.{name}", needs)
        if not value.isprintable() or value != value.strip():
            raise _refuse(f"{field}.{name}", "must be printable text without surrounding spaces")
    if auth.jwks_url is not None:
        # Where it leads is the ingress's to check, at each fetch (its allow list).
        try:
            parse_url(auth.jwks_url)
        except OutboundRefused as exc:
            raise _refuse(f"{field}.jwks_url", str(exc)) from None


def _check_learned_secret_mode(auth: WebhookAuth) -> None:
    """`asana`: no secret (its first handshake arms the flow), the one it holds (its
    hint, as GET shows it) or, when moving a webhook whose secret you kept, that secret;
    never two: Asana has no rotation (clear the secret and create the webhook again)."""
    field = "webhook.auth.secrets"
    if len(auth.secrets) > 1:
        raise _refuse(
            field,
            f"the {auth.mode} mode holds one secret, the one its handshake gave: there is"
            " no rotation (save [] to re-arm the flow, then create the webhook again)",
        )
    for index, secret in enumerate(auth.secrets):
        if isinstance(secret, str) and not secret.startswith(HINT_MARK):
            _check_secret(f"{field}[{index}]", auth.mode, secret)


def check_learned_secret(mode: str, secret: str, field: str) -> None:
    """A secret a handshake gave (`runner.learn_webhook_secret`), by the rules of a
    secret saved through the API: 400 `bad_request` naming `field` otherwise."""
    _check_secret(field, mode, secret)


def _check_sns(auth: WebhookAuth) -> None:
    """`sns`: signed by AWS (the certificate named in each message), no secrets; an
    optional allow-list of topic ARNs."""
    field = "webhook.auth"
    if auth.secrets:
        raise _refuse(
            f"{field}.secrets",
            "the sns mode takes no secrets: AWS signs each message with its certificate"
            " (optionally give topic_arns)",
        )
    if auth.topic_arns is None:
        return
    if not auth.topic_arns:
        raise _refuse(f"{field}.topic_arns", "give at least one topic ARN, or leave it out")
    for index, arn in enumerate(auth.topic_arns):
        if SNS_TOPIC_ARN.match(arn) is None:
            raise _refuse(
                f"{field}.topic_arns[{index}]",
                "not an SNS topic ARN (arn:aws:sns:<region>:<account id>:<topic name>)",
            )


def _check_secret(field: str, mode: str, secret: str) -> None:
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise _refuse(field, f"a secret has {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters")
    if not secret.isprintable() or not secret.isascii():
        raise _refuse(field, "a secret is printable ASCII")
    if mode == "standard-webhooks":
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not secret.startswith("whsec_") or not key:
            raise _refuse(field, "a Standard Webhooks secret is whsec_<base64>")


def _check_callback(webhook: WebhookTrigger) -> None:
    """The URL's form and the secret's; where the URL leads is checked by the flows API
    (it resolves the name: outbound.check_destination) and again at each attempt."""
    callback = webhook.callback
    assert callback is not None
    if not webhook.is_async:
        # A sync sender already gets the result in its answer.
        raise _refuse("webhook.callback", "callbacks are sent for async flows only")
    try:
        parse_url(callback.url)
    except OutboundRefused as exc:
        raise _refuse("webhook.callback.url", str(exc)) from None
    secret = callback.secret
    if isinstance(secret, str) and not secret.startswith(HINT_MARK):
        try:
            standard_webhooks.secret_key(secret)
            if not secret.startswith(standard_webhooks.PREFIX):
                raise ValueError("the secret must be whsec_ followed by base64")
        except ValueError as exc:
            raise _refuse("webhook.callback.secret", str(exc)) from None


def _check_pacing(webhook: WebhookTrigger) -> None:
    """Pacing holds runs back for seconds or days: a sync caller cannot wait for that
    (its answer is due within `timeout_s`), so it is for async flows only."""
    for name in PACING_FIELDS:
        if getattr(webhook, name) is not None and not webhook.is_async:
            raise _refuse(
                f"webhook.{name}",
                "ordering and pacing apply to async flows only (set webhook.async to true)",
            )


def _check_final_status(field: str, status_code: int) -> None:
    if status_code < MIN_FINAL_STATUS:
        raise _refuse(
            field,
            f"must be a final status, {MIN_FINAL_STATUS} to 599: a 1xx answer is"
            " informational, so the caller would wait for another",
        )


def _control_characters(value: str) -> bool:
    """A line break or another control character (a tab is allowed in a header value)."""
    return any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value)


def _check_response(response: ResponseConfig) -> None:
    _check_final_status("webhook.response.status_code", response.status_code)
    if response.content_type is not None and _control_characters(response.content_type):
        raise _refuse(
            "webhook.response.content_type",
            "no line breaks or other control characters (they would split the answer's headers)",
        )


def _check_response_headers(response: ResponseConfig) -> None:
    if len(response.headers) > MAX_RESPONSE_HEADERS:
        raise _refuse("webhook.response.headers", f"at most {MAX_RESPONSE_HEADERS} headers")
    for name, template in response.headers.items():
        field = f"webhook.response.headers.{name}"
        lowered = name.lower()
        if not re.match(HEADER_NAME_PATTERN, name) or len(name) > 100:
            raise _refuse(field, "not a valid header name")
        if lowered in REFUSED_RESPONSE_HEADERS or lowered.startswith("proxy-"):
            why = (
                "use webhook.response.content_type"
                if lowered == "content-type"
                else "hop-by-hop, a cookie, or set by the ingress itself"
            )
            raise _refuse(field, f"the header {name} cannot be set by a flow ({why})")
        if len(template) > MAX_RESPONSE_HEADER_TEMPLATE_CHARS:
            raise _refuse(
                field,
                f"a header template has {MAX_RESPONSE_HEADER_TEMPLATE_CHARS} characters at most",
            )
        if _control_characters(template):
            # Such a value would split or corrupt the answer (a run that renders one
            # fails); written into the template, it is refused on save already.
            raise _refuse(field, "no line breaks or other control characters in a header value")


def _check_references(definition: FlowDefinition, engine: TemplateEngine) -> None:
    """Ref-ids unique and not reserved; templates parse and name only what exists."""
    webhook_ref = definition.webhook.ref_id
    if webhook_ref in RESERVED_REF_IDS:
        raise _refuse("webhook.ref_id", f"{webhook_ref!r} is reserved")
    seen = {webhook_ref}
    builtins = set(engine.env.globals) | {"request"}

    def check_template(field: str, source: str, known: set[str]) -> None:
        try:
            names = engine.referenced_names(source)
        except TemplateSyntaxError as exc:
            raise _refuse(
                field, f"template syntax error on line {exc.lineno}: {exc.message}"
            ) from None
        unknown = sorted(names - known - builtins)
        if unknown:
            raise _refuse(
                field,
                f"unknown name {unknown[0]!r}: not the webhook's ref-id, "
                "an earlier step's ref-id or `request`",
            )

    def walk(steps: list[StepModel], prefix: str, known: set[str]) -> set[str]:
        known = set(known)
        for index, step in enumerate(steps):
            path = f"{prefix}[{index}]"
            if step.ref_id in RESERVED_REF_IDS:
                raise _refuse(f"{path}.ref_id", f"{step.ref_id!r} is reserved")
            if step.ref_id == ERROR_NAME and definition.on_error:
                raise _refuse(
                    f"{path}.ref_id", f"{ERROR_NAME!r} is reserved in a flow with on_error"
                )
            if step.ref_id in seen:
                raise _refuse(f"{path}.ref_id", f"duplicate ref-id {step.ref_id!r}")
            seen.add(step.ref_id)
            for field, source in step.templates().items():
                check_template(f"{path}.{field}", source, known)
            for field, children in step.nested().items():
                if step.type == "loop":
                    # Ref-ids inside a loop belong to one iteration: not visible after it.
                    walk(children, f"{path}.{field}", known | {"loop"})
                else:
                    known |= walk(children, f"{path}.{field}", known)
            known.add(step.ref_id)
        return known

    known = walk(definition.steps, "steps", {webhook_ref})
    if definition.on_error:
        # A step that failed leaves the steps after it undefined: on_error's templates
        # may name any of them (and should test `is defined`), and `error`; the response,
        # rendered after recovery too, may name on_error's steps and `error` (null when
        # no step failed).
        known |= walk(definition.on_error, "on_error", known | {ERROR_NAME}) | {ERROR_NAME}
    if definition.webhook.response is not None:
        check_template("webhook.response.body", definition.webhook.response.body, known)
        for name, template in definition.webhook.response.headers.items():
            check_template(f"webhook.response.headers.{name}", template, known)
