"""The handshake stage of the webhook pipeline (contract: "Providers that must be
answered before they send"). Many providers will not send a single event until the
URL proves itself: Slack's `url_verification`, Zoom's `endpoint.url_validation`, Meta's
`hub.challenge`, ... The ingress answers these itself, at once, and never runs the
flow for them (the handler records them as outcome `handshake`).

One pure answerer per mode (`HANDSHAKES`): it takes the flow's `Check` (secrets
opened), the request as a `Probe` and the time, and returns the answer, None when the
request is not a handshake (an event: the flow runs), or raises `BadRequest` /
`Unauthorized` with the reason. Two kinds of handshake:
- signed ones (slack, zoom, twitch, discord, sns) are signed like the mode's events: they
  pass the verify stage first, so an unsigned or forged one is 401 and echoes nothing;
- unsigned ones (microsoft-graph, meta, twitter, dropbox, okta, asana) carry no
  signature: `arrives_unsigned` recognises them from the method, query and headers
  alone, and the verify stage is skipped for them. Meta's is judged by its verify token,
  Twitter's answer proves that we hold the secret; the others prove only that the URL
  answers, except Asana's, which gives the flow its secret (only while it holds none).

Every value echoed is capped (`MAX_ECHO_CHARS`), and a body over
`MAX_HANDSHAKE_BODY_BYTES` is never a handshake (providers send a few hundred bytes):
what is decoded here is small."""

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.ingress.learned_secrets import already_held
from services.ingress.signatures import Check, signing_secret
from shared.errors import BadRequest, Unauthorized
from shared.schemas.vocabulary import JSON, SigningMode, envelope

# The longest value (challenge, token) echoed back; providers send tens of characters.
MAX_ECHO_CHARS = 4096
# A larger body is not a handshake (and an unsigned "handshake" this large is refused
# as an unsigned event: 401).
MAX_HANDSHAKE_BODY_BYTES = 64 * 1024
TEXT = "text/plain"


@dataclass(frozen=True)
class Probe:
    """The parts of a request a handshake is read from (query values: the first of each
    name, decoded)."""

    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class HandshakeAnswer:
    """What the sender is answered. `content_type` None: no body (twitch's 204, asana's
    200 with only its header). `visit`: a URL the ingress GETs in the background once
    answered (SNS's SubscribeURL)."""

    status: int
    content_type: str | None
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    # A secret the flow must hold before this answer is sent (asana's: the webhook
    # handler has the runner store it first, `learned_secrets.py`).
    learned_secret: str | None = None
    visit: str | None = None


def _json_answer(document: dict[str, Any]) -> HandshakeAnswer:
    return HandshakeAnswer(200, JSON, orjson.dumps(document))


def _text_answer(text: str, **headers: str) -> HandshakeAnswer:
    return HandshakeAnswer(200, TEXT, text.encode(), headers)


def _echoed(value: Any, name: str) -> str:
    """A value the provider wants back, checked: a non-empty string of at most
    `MAX_ECHO_CHARS` characters, else 400 naming it."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"handshake: no {name}, or not a string")
    if len(value) > MAX_ECHO_CHARS:
        raise BadRequest(f"handshake: the {name} is longer than {MAX_ECHO_CHARS} characters")
    return value


def _json_body(probe: Probe) -> dict[str, Any] | None:
    """The body as a JSON object when it is small enough to be a handshake, else None."""
    if not probe.body or len(probe.body) > MAX_HANDSHAKE_BODY_BYTES:
        return None
    try:
        document = orjson.loads(probe.body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def answer_slack(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """Signed POST `{"type": "url_verification", "challenge": C}` → `{"challenge": C}`."""
    document = _json_body(probe)
    if document is None or document.get("type") != "url_verification":
        return None
    return _json_answer({"challenge": _echoed(document.get("challenge"), "challenge")})


def answer_zoom(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """Signed POST `{"event": "endpoint.url_validation", "payload": {"plainToken": P}}`
    → `{"plainToken": P, "encryptedToken": hex(HMAC-SHA256(secret, P))}`, under the
    secret that signed the request (during a rotation: the one Zoom holds)."""
    document = _json_body(probe)
    if document is None or document.get("event") != "endpoint.url_validation":
        return None
    payload = document.get("payload")
    plain = _echoed(payload.get("plainToken") if isinstance(payload, dict) else None, "plainToken")
    secret = signing_secret(check, probe.headers, probe.body, now) or check.secrets[0]
    encrypted = hmac.new(secret, plain.encode(), hashlib.sha256).hexdigest()
    return _json_answer({"plainToken": plain, "encryptedToken": encrypted})


def answer_microsoft_graph(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """POST `?validationToken=T` (subscription and lifecycle validation) → 200
    `text/plain` T, decoded as the query is."""
    if "validationToken" not in probe.query:
        return None
    return _text_answer(_echoed(probe.query["validationToken"], "validationToken"))


def answer_meta(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """GET `hub.mode=subscribe&hub.verify_token=V&hub.challenge=C` → 200 `text/plain` C
    when V is the flow's verify token, else 401."""
    if probe.method != "GET" or "hub.mode" not in probe.query:
        return None
    if probe.query["hub.mode"] != "subscribe":
        raise BadRequest("handshake: hub.mode must be subscribe")
    assert check.verify_token is not None  # validated on save
    token = probe.query.get("hub.verify_token", "").encode()
    if not hmac.compare_digest(token, check.verify_token):
        raise Unauthorized("invalid meta handshake: the hub.verify_token is not the flow's")
    return _text_answer(_echoed(probe.query.get("hub.challenge"), "hub.challenge"))


def answer_twitter(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """GET `crc_token=T` → `{"response_token": "sha256=" + base64(HMAC-SHA256(secret,
    T))}`. The newest secret (the last: a rotation adds the new one after the old)."""
    if probe.method != "GET" or "crc_token" not in probe.query:
        return None
    token = _echoed(probe.query["crc_token"], "crc_token")
    digest = hmac.new(check.secrets[-1], token.encode(), hashlib.sha256).digest()
    return _json_answer({"response_token": "sha256=" + base64.b64encode(digest).decode()})


def answer_dropbox(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """GET `challenge=C` → 200 `text/plain` C, not to be sniffed as anything else."""
    if probe.method != "GET" or "challenge" not in probe.query:
        return None
    challenge = _echoed(probe.query["challenge"], "challenge")
    return _text_answer(challenge, **{"X-Content-Type-Options": "nosniff"})


OKTA_CHALLENGE_HEADER = "X-Okta-Verification-Challenge"


def answer_okta(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """GET with `X-Okta-Verification-Challenge: V` → `{"verification": V}`."""
    if probe.method != "GET" or OKTA_CHALLENGE_HEADER not in probe.headers:
        return None
    challenge = _echoed(probe.headers[OKTA_CHALLENGE_HEADER], OKTA_CHALLENGE_HEADER)
    return _json_answer({"verification": challenge})


TWITCH_TYPE_HEADER = "Twitch-Eventsub-Message-Type"


def answer_twitch(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """Signed `webhook_callback_verification` → 200 `text/plain` with the body's
    `challenge`; a signed `revocation` (the subscription ended) → 204."""
    kind = probe.headers.get(TWITCH_TYPE_HEADER)
    if kind == "revocation":
        return HandshakeAnswer(204, None, b"")
    if kind != "webhook_callback_verification":
        return None
    document = _json_body(probe)
    if document is None:
        raise BadRequest("handshake: a webhook_callback_verification body is a JSON object")
    return _text_answer(_echoed(document.get("challenge"), "challenge"))


def answer_discord(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """Signed POST `{"type": 1}` (PING) → `{"type": 1}` (PONG)."""
    document = _json_body(probe)
    if document is None or document.get("type") != 1:
        return None
    return _json_answer({"type": 1})


ASANA_SECRET_HEADER = "X-Hook-Secret"


def answer_asana(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """POST with `X-Hook-Secret: S` → 200 echoing `X-Hook-Secret: S`, S becoming the
    flow's secret; only while the flow holds none. Asana sends it once, when a webhook
    is created: another one means someone created a second webhook to this URL, or
    someone else found it; refusing it keeps the secret the first one gave (the
    operator re-arms by clearing the flow's secrets)."""
    if probe.method != "POST" or ASANA_SECRET_HEADER not in probe.headers:
        return None
    if check.secrets:
        raise already_held(check.mode)
    secret = _echoed(probe.headers[ASANA_SECRET_HEADER], ASANA_SECRET_HEADER)
    if not (secret.isascii() and secret.isprintable()):
        # Sealed and echoed as it is: undecodable bytes (kept as lone surrogates) would
        # fail both. The runner judges the rest (its length) as for a saved secret.
        raise BadRequest(f"handshake: the {ASANA_SECRET_HEADER} is not printable ASCII")
    return HandshakeAnswer(200, None, b"", {ASANA_SECRET_HEADER: secret}, learned_secret=secret)


SNS_TYPE_HEADER = "x-amz-sns-message-type"


def answer_sns(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """A signed SubscriptionConfirmation → 200 once its `SubscribeURL` is visited (the
    handler visits it before answering, services/ingress/sns.py `SubscribeVisits`;
    `unconfirmed` if the visit fails); a signed
    UnsubscribeConfirmation → 200, recorded. Their signature, topic and URLs were
    checked by the verify stage (sns.py `read_message`)."""
    kind = probe.headers.get(SNS_TYPE_HEADER)
    if kind not in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return None
    document = _json_body(probe)
    if document is None:
        raise BadRequest(f"handshake: an SNS {kind} is a JSON object of at most 64 KiB")
    data = {"type": kind, "topic_arn": document.get("TopicArn")}
    if kind == "UnsubscribeConfirmation":
        return _json_answer(envelope(200, None, "unsubscribed: recorded, not run", data))
    subscribe_url = _echoed(document.get("SubscribeURL"), "SubscribeURL")
    answer = _json_answer(envelope(200, None, "subscription confirmed", data))
    return HandshakeAnswer(answer.status, answer.content_type, answer.body, visit=subscribe_url)


def unconfirmed(error: str) -> HandshakeAnswer:
    """A SubscriptionConfirmation whose `SubscribeURL` visit failed: 503, so that SNS
    sends it again (nothing is left to a process that may stop)."""
    document = envelope(503, "unavailable", f"the SNS subscription is not confirmed: {error}")
    return HandshakeAnswer(503, JSON, orjson.dumps(document))


Answerer = Callable[[Check, Probe, float], HandshakeAnswer | None]
# Whether a request is the mode's unsigned handshake, from its method, query and headers.
Recogniser = Callable[[str, Mapping[str, str], Mapping[str, str]], bool]


@dataclass(frozen=True)
class Handshake:
    answer: Answerer
    # The mode's handshake arrives unsigned: recognised before the body is read, and the
    # verify stage skipped for it. None: signed like the mode's events.
    unsigned: Recogniser | None = None


def _get_with(name: str) -> Recogniser:
    return lambda method, query, headers: method == "GET" and name in query


HANDSHAKES: dict[SigningMode, Handshake] = {
    "slack": Handshake(answer_slack),
    "zoom": Handshake(answer_zoom),
    "microsoft-graph": Handshake(
        answer_microsoft_graph,
        lambda method, query, headers: method == "POST" and "validationToken" in query,
    ),
    "meta": Handshake(answer_meta, _get_with("hub.mode")),
    "twitter": Handshake(answer_twitter, _get_with("crc_token")),
    "dropbox": Handshake(answer_dropbox, _get_with("challenge")),
    "okta": Handshake(
        answer_okta,
        lambda method, query, headers: method == "GET" and OKTA_CHALLENGE_HEADER in headers,
    ),
    "twitch": Handshake(answer_twitch),
    "discord": Handshake(answer_discord),
    "asana": Handshake(
        answer_asana,
        lambda method, query, headers: method == "POST" and ASANA_SECRET_HEADER in headers,
    ),
    "sns": Handshake(answer_sns),
}


def arrives_unsigned(
    mode: SigningMode,
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    content_length: int | None,
    has_body: bool,
) -> bool:
    """Whether this request is its mode's unsigned handshake (small, or none of its
    kind: a large or chunked body is judged as an event, so unsigned it is 401)."""
    handshake = HANDSHAKES.get(mode)
    if handshake is None or handshake.unsigned is None:
        return False
    if has_body and (content_length is None or content_length > MAX_HANDSHAKE_BODY_BYTES):
        return False
    return handshake.unsigned(method, query, headers)


def answer(check: Check, probe: Probe, now: float) -> HandshakeAnswer | None:
    """The handshake's answer, or None: not a handshake (or a mode without one)."""
    handshake = HANDSHAKES.get(check.mode)
    return None if handshake is None else handshake.answer(check, probe, now)
