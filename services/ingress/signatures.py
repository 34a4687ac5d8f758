"""Webhook signature checks (contract: "Webhook verification modes"). One pure reader
per mode takes the flow's check, the request headers and the time now, and returns
what the headers claim is signed (`Signed`) or the reason it refuses (the ingress
answers 401 with it). `precheck` refuses from the headers alone, before the body is
read; `verify` then compares the body's HMAC under the flow's secrets (already opened:
bytes, one or two during a rotation). Every comparison is constant time
(`hmac.compare_digest`).

Only what the sender signs is read: nothing here parses the body, except for
`microsoft-graph`, whose events carry their secret (`clientState`) inside it, and
Twilio's form parameters, which Twilio signs instead of the body.
Besides HMACs: `okta` compares a header with a secret, `discord` checks an Ed25519
signature against the application's public key.

Twilio, Square and HubSpot sign the URL they called: the public URL of the request
(`RequestLine`, from FLOWHOOKS_INGRESS_PUBLIC_URL), read by `URL_READERS`."""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.schemas.vocabulary import SigningMode

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]
# How a `Signed` is judged: an HMAC of the message under a secret (most modes), the
# header's value equal to a secret (`okta`), an Ed25519 signature of the message by the
# public key (`discord`), each notification's `clientState` in the body equal to a
# secret (`microsoft-graph`).
Scheme = Literal["hmac", "equal", "ed25519", "client_state"]
# A signature header longer than this is no provider's: refused before any parsing.
MAX_SIGNATURE_HEADER_CHARS = 4096
# Signatures checked in one header at most (Stripe and Standard Webhooks list several).
MAX_SIGNATURES = 8

STANDARD_SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class Check:
    """One flow's check, as `verify` needs it (`SigningSettings` with opened secrets)."""

    mode: SigningMode
    secrets: tuple[bytes, ...]
    tolerance_s: int = 300
    header: str | None = None
    algorithm: Algorithm = "sha256"
    encoding: Encoding = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    content: str = "{body}"
    # `meta`'s verify token (opened); the flow's public key: `discord`'s as raw bytes,
    # `sendgrid`'s loaded (an ECDSA public key).
    verify_token: bytes | None = None
    public_key: object | None = None


def secret_key(mode: str, secret: str) -> bytes:
    """The HMAC key of a secret as the flow holds it. Standard Webhooks' `whsec_<base64>`
    keys are the decoded bytes; every other provider signs with the secret's text
    (Stripe's `whsec_…` included)."""
    if mode == "standard-webhooks":
        return base64.b64decode(secret.removeprefix(STANDARD_SECRET_PREFIX), validate=True)
    return secret.encode()


def _digest(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def _matches(
    secrets: tuple[bytes, ...],
    message: bytes,
    given: list[bytes],
    algorithm: Algorithm = "sha256",
) -> bool:
    """Whether any given signature is the HMAC of `message` under any secret. Every
    pair is compared (no early exit on a near miss); compare_digest is constant time."""
    found = False
    for key in secrets:
        expected = _digest(key, message, algorithm)
        for signature in given:
            found |= hmac.compare_digest(expected, signature)
    return found


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None or len(value) > MAX_SIGNATURE_HEADER_CHARS:
        return None
    return value.strip()


def _fresh(timestamp: str | None, now: float, tolerance_s: int) -> str | None:
    """None when `timestamp` (unix seconds) is within the tolerance of now, else why not.
    ASCII digits only: str.isdigit also accepts "¹²³", which int() refuses."""
    if (
        timestamp is None
        or not timestamp.isascii()
        or not timestamp.isdigit()
        or len(timestamp) > 12
    ):
        return "a missing or malformed signature timestamp"
    if abs(now - int(timestamp)) > tolerance_s:
        return f"a signature timestamp more than {tolerance_s} s away from now"
    return None


# For the modules of the other kinds of checks (public_key_signatures.py).
fresh_timestamp = _fresh


def _unhex(values: list[str]) -> list[bytes]:
    decoded = []
    for value in values[:MAX_SIGNATURES]:
        try:
            decoded.append(bytes.fromhex(value))
        except ValueError:
            continue
    return decoded


def _unbase64(values: list[str]) -> list[bytes]:
    decoded = []
    for value in values[:MAX_SIGNATURES]:
        try:
            decoded.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return decoded


@dataclass(frozen=True)
class Signed:
    """What a request's headers claim: the signed message is `before` + body + `after`,
    and `given` the signatures to compare (decoded; undecodable ones left out)."""

    before: bytes
    after: bytes
    given: list[bytes]
    # The refusal when no given signature matches.
    mismatch: str
    algorithm: Algorithm = "sha256"
    scheme: Scheme = "hmac"
    # When the signed message is not `before` + body + `after` (Twilio): the messages
    # any of which may be signed, from the body, or the refusal.
    messages: Callable[[bytes], list[bytes] | str] | None = None


def _timestamped(
    value: str, separator: str, time_key: str, signature_key: str
) -> tuple[str | None, list[str]]:
    """A `<time_key>=<t><sep><signature_key>=<sig>[<sep>...]` header (Stripe's, Paddle's):
    its timestamp (the last given) and its signatures (several while a secret rolls)."""
    timestamp, signatures = None, []
    for item in value.split(separator):
        key, _, given = item.strip().partition("=")
        if key == time_key:
            timestamp = given
        elif key == signature_key:
            signatures.append(given)
    return timestamp, signatures


def read_stripe(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 of `<t>.<body>`."""
    value = _header(headers, "Stripe-Signature")
    if value is None:
        return "no Stripe-Signature header"
    timestamp, signatures = _timestamped(value, ",", "t", "v1")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    return Signed(
        f"{timestamp}.".encode(), b"", _unhex(signatures), "the Stripe-Signature does not match"
    )


def read_github(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (no timestamp)."""
    value = _header(headers, "X-Hub-Signature-256")
    if value is None or not value.startswith("sha256="):
        return "no X-Hub-Signature-256 header of the form sha256=<hex>"
    given = _unhex([value.removeprefix("sha256=")])
    return Signed(b"", b"", given, "the X-Hub-Signature-256 does not match")


def read_shopify(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the body>` (no timestamp)."""
    value = _header(headers, "X-Shopify-Hmac-Sha256")
    if value is None:
        return "no X-Shopify-Hmac-Sha256 header"
    return Signed(b"", b"", _unbase64([value]), "the X-Shopify-Hmac-Sha256 does not match")


def read_slack(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Slack-Signature: v0=<hex HMAC-SHA256 of v0:<X-Slack-Request-Timestamp>:<body>>`."""
    timestamp = _header(headers, "X-Slack-Request-Timestamp")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "X-Slack-Signature")
    if value is None or not value.startswith("v0="):
        return "no X-Slack-Signature header of the form v0=<hex>"
    given = _unhex([value.removeprefix("v0=")])
    return Signed(f"v0:{timestamp}:".encode(), b"", given, "the X-Slack-Signature does not match")


def read_standard(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """Standard Webhooks: `webhook-signature: v1,<base64> [v1,<base64>...]`, HMAC-SHA256
    of `<webhook-id>.<webhook-timestamp>.<body>` (other versions, such as `v1a`
    asymmetric signatures, are skipped)."""
    message_id = _header(headers, "webhook-id")
    if not message_id:
        return "no webhook-id header"
    timestamp = _header(headers, "webhook-timestamp")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "webhook-signature")
    if value is None:
        return "no webhook-signature header"
    signatures = [
        signature
        for version, _, signature in (item.partition(",") for item in value.split())
        if version == "v1"
    ]
    return Signed(
        f"{message_id}.{timestamp}.".encode(),
        b"",
        _unbase64(signatures),
        "the webhook-signature does not match",
    )


def read_hmac(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """The generic mode: `<header>: <prefix><hex|base64 HMAC of content>`, content being
    the flow's template with `{timestamp}` (the timestamp header's value) and `{body}`."""
    assert check.header is not None  # validated on save
    value = _header(headers, check.header)
    if value is None or not value.startswith(check.prefix):
        expected = f"{check.prefix}<{check.encoding}>"
        return f"no {check.header} header of the form {expected}"
    timestamp = ""
    if check.timestamp_header is not None:
        found = _header(headers, check.timestamp_header)
        stale = _fresh(found, now, check.tolerance_s)
        if stale is not None:
            return stale
        timestamp = found or ""
    before, _, after = check.content.partition("{body}")
    signature = value[len(check.prefix) :]
    given = _unhex([signature]) if check.encoding == "hex" else _unbase64([signature])
    return Signed(
        before.replace("{timestamp}", timestamp).encode(),
        after.replace("{timestamp}", timestamp).encode(),
        given,
        f"the {check.header} signature does not match",
        check.algorithm,
    )


def read_zoom(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`x-zm-signature: v0=<hex HMAC-SHA256 of v0:<x-zm-request-timestamp>:<body>>`."""
    timestamp = _header(headers, "x-zm-request-timestamp")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "x-zm-signature")
    if value is None or not value.startswith("v0="):
        return "no x-zm-signature header of the form v0=<hex>"
    given = _unhex([value.removeprefix("v0=")])
    return Signed(f"v0:{timestamp}:".encode(), b"", given, "the x-zm-signature does not match")


def read_microsoft_graph(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """Microsoft Graph signs nothing: each notification of the body's `value[]` carries
    the subscription's `clientState`, which must equal a secret (judged with the body)."""
    return Signed(
        b"", b"", [], "a notification's clientState does not match", scheme="client_state"
    )


def read_twitter(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`x-twitter-webhooks-signature: sha256=<base64 HMAC-SHA256 of the body>`."""
    value = _header(headers, "x-twitter-webhooks-signature")
    if value is None or not value.startswith("sha256="):
        return "no x-twitter-webhooks-signature header of the form sha256=<base64>"
    given = _unbase64([value.removeprefix("sha256=")])
    return Signed(b"", b"", given, "the x-twitter-webhooks-signature does not match")


def read_dropbox(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Dropbox-Signature: <hex HMAC-SHA256 of the body>` (the app secret)."""
    value = _header(headers, "X-Dropbox-Signature")
    if value is None:
        return "no X-Dropbox-Signature header"
    return Signed(b"", b"", _unhex([value]), "the X-Dropbox-Signature does not match")


def read_okta(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """The flow's `header` (the event hook's authentication field) equal to a secret."""
    assert check.header is not None  # validated on save
    value = _header(headers, check.header)
    if not value:
        return f"no {check.header} header"
    return Signed(
        b"", b"", [value.encode()], f"the {check.header} header does not match", scheme="equal"
    )


# Twitch's timestamps are RFC 3339 with up to nanoseconds: "2019-11-16T10:11:12.123456789Z".
MAX_RFC3339_CHARS = 40


def _fresh_rfc3339(timestamp: str | None, now: float, tolerance_s: int) -> str | None:
    """`_fresh` for an RFC 3339 timestamp (Python reads at most microseconds)."""
    if timestamp is None or not timestamp.isascii() or len(timestamp) > MAX_RFC3339_CHARS:
        return "a missing or malformed signature timestamp"
    whole, dot, fraction = timestamp.partition(".")
    if dot:
        digits = fraction.rstrip("Z").rstrip("z")
        zone = fraction[len(digits) :]
        timestamp = f"{whole}.{digits[:6]}{zone}"
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return "a missing or malformed signature timestamp"
    if moment.tzinfo is None:
        return "a missing or malformed signature timestamp"
    if abs(now - moment.timestamp()) > tolerance_s:
        return f"a signature timestamp more than {tolerance_s} s away from now"
    return None


# For the modules of the other kinds of checks (sns.py).
fresh_rfc3339 = _fresh_rfc3339


def read_twitch(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`Twitch-Eventsub-Message-Signature: sha256=<hex HMAC-SHA256 of id + timestamp +
    body>`, the id and timestamp (RFC 3339) from their own headers."""
    message_id = _header(headers, "Twitch-Eventsub-Message-Id")
    if not message_id:
        return "no Twitch-Eventsub-Message-Id header"
    timestamp = _header(headers, "Twitch-Eventsub-Message-Timestamp")
    stale = _fresh_rfc3339(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "Twitch-Eventsub-Message-Signature")
    if value is None or not value.startswith("sha256="):
        return "no Twitch-Eventsub-Message-Signature header of the form sha256=<hex>"
    given = _unhex([value.removeprefix("sha256=")])
    return Signed(
        f"{message_id}{timestamp}".encode(),
        b"",
        given,
        "the Twitch-Eventsub-Message-Signature does not match",
    )


ED25519_SIGNATURE_BYTES = 64


def read_discord(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Signature-Ed25519: <hex Ed25519 signature of <X-Signature-Timestamp><body>>`,
    by the application's public key."""
    timestamp = _header(headers, "X-Signature-Timestamp")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "X-Signature-Ed25519")
    if value is None:
        return "no X-Signature-Ed25519 header"
    given = [
        signature for signature in _unhex([value]) if len(signature) == ED25519_SIGNATURE_BYTES
    ]
    if not given:
        return "the X-Signature-Ed25519 header is not a 64-byte signature in hex"
    return Signed(
        f"{timestamp}".encode(),
        b"",
        given,
        "the X-Signature-Ed25519 does not match",
        scheme="ed25519",
    )


def read_paddle(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>...]`, HMAC-SHA256 of `<ts>:<body>`
    (several `h1` while Paddle rotates the secret)."""
    value = _header(headers, "Paddle-Signature")
    if value is None:
        return "no Paddle-Signature header"
    timestamp, signatures = _timestamped(value, ";", "ts", "h1")
    stale = _fresh(timestamp, now, check.tolerance_s)
    if stale is not None:
        return stale
    return Signed(
        f"{timestamp}:".encode(), b"", _unhex(signatures), "the Paddle-Signature does not match"
    )


def read_asana(check: Check, headers: Mapping[str, str], now: float) -> Signed | str:
    """`X-Hook-Signature: <hex HMAC-SHA256 of the body>`, under the secret Asana gave in
    its handshake (`X-Hook-Secret`). Until a handshake has armed the flow, nothing but
    that handshake is accepted."""
    if not check.secrets:
        return (
            "this asana flow holds no secret yet: only Asana's handshake (X-Hook-Secret)"
            " is accepted until one arms it"
        )
    value = _header(headers, "X-Hook-Signature")
    if value is None:
        return "no X-Hook-Signature header"
    return Signed(b"", b"", _unhex([value]), "the X-Hook-Signature does not match")


READERS: dict[SigningMode, Callable[[Check, Mapping[str, str], float], Signed | str]] = {
    "stripe": read_stripe,
    "github": read_github,
    "shopify": read_shopify,
    "slack": read_slack,
    "standard-webhooks": read_standard,
    "hmac": read_hmac,
    # The handshake modes (their handshakes: services/ingress/handshake.py).
    "zoom": read_zoom,
    "microsoft-graph": read_microsoft_graph,
    "meta": read_github,  # X-Hub-Signature-256, as GitHub's
    "twitter": read_twitter,
    "dropbox": read_dropbox,
    "okta": read_okta,
    "twitch": read_twitch,
    "discord": read_discord,
    "paddle": read_paddle,
    "asana": read_asana,
}


@dataclass(frozen=True)
class RequestLine:
    """What the URL-signing modes sign besides the body: the method, and the public URL
    of the request (FLOWHOOKS_INGRESS_PUBLIC_URL + the path and query as received)."""

    method: str
    url: str


# Form parameters Twilio's signature may cover; more is no Twilio request.
MAX_TWILIO_PARAMS = 1000


def _twilio_urls(url: str) -> list[str]:
    """The URL with and without its scheme's default port: Twilio signs either (its
    own validator tries both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.username is not None:
        return [url]  # no URL Twilio is given carries a login; checked as is
    default_port = 443 if parts.scheme == "https" else 80
    bare = urlunsplit(parts._replace(netloc=host))
    ported = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default_port}"))
    return [bare, ported] if bare != ported else [bare]


def _twilio_params(body: bytes) -> str | None:
    """The form parameters as Twilio signs them: by name, then value, each pair
    concatenated (duplicates once, as Twilio's validator does); None: not form data."""
    try:
        pairs = parse_qsl(
            body.decode(),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_TWILIO_PARAMS,
        )
    except (UnicodeDecodeError, ValueError):
        return None
    params: dict[str, set[str]] = {}
    for name, value in pairs:
        params.setdefault(name, set()).add(value)
    return "".join(name + value for name in sorted(params) for value in sorted(params[name]))


def read_twilio(
    check: Check, headers: Mapping[str, str], line: RequestLine, now: float
) -> Signed | str:
    """`X-Twilio-Signature: <base64 HMAC-SHA1 of the URL + the form parameters sorted by
    name, each name and value concatenated>`; a JSON body instead: the URL's
    `bodySHA256` query parameter (the body's hex SHA-256) is signed with the URL alone."""
    value = _header(headers, "X-Twilio-Signature")
    if value is None:
        return "no X-Twilio-Signature header"
    urls = _twilio_urls(line.url)
    body_hashes = parse_qs(urlsplit(line.url).query).get("bodySHA256")

    def messages(body: bytes) -> list[bytes] | str:
        if body_hashes is not None:
            expected = hashlib.sha256(body).hexdigest()
            if not hmac.compare_digest(expected, body_hashes[0].lower()):
                return "the body's SHA-256 is not the URL's bodySHA256"
            return [url.encode() for url in urls]
        params = _twilio_params(body)
        if params is None:
            return "the body is not form data (a JSON body goes with a bodySHA256 query parameter)"
        return [(url + params).encode() for url in urls]

    return Signed(
        b"",
        b"",
        _unbase64([value]),
        "the X-Twilio-Signature does not match",
        "sha1",
        messages=messages,
    )


def read_square(
    check: Check, headers: Mapping[str, str], line: RequestLine, now: float
) -> Signed | str:
    """`x-square-hmacsha256-signature: <base64 HMAC-SHA256 of the URL + the body>`."""
    value = _header(headers, "x-square-hmacsha256-signature")
    if value is None:
        return "no x-square-hmacsha256-signature header"
    return Signed(
        line.url.encode(),
        b"",
        _unbase64([value]),
        "the x-square-hmacsha256-signature does not match",
    )


# HubSpot signs its URL with these characters decoded (its "v3" documentation).
_HUBSPOT_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def _hubspot_url(url: str) -> str:
    for encoded, char in _HUBSPOT_DECODED.items():
        url = url.replace(encoded, char).replace(encoded.lower(), char)
    return url


def read_hubspot(
    check: Check, headers: Mapping[str, str], line: RequestLine, now: float
) -> Signed | str:
    """`X-HubSpot-Signature-v3: <base64 HMAC-SHA256 of method + URL + body + timestamp>`,
    `X-HubSpot-Request-Timestamp` in milliseconds, within the tolerance (5 minutes)."""
    timestamp = _header(headers, "X-HubSpot-Request-Timestamp")
    if timestamp is None or not timestamp.isascii() or not timestamp.isdigit():
        return "a missing or malformed X-HubSpot-Request-Timestamp (milliseconds)"
    stale = _fresh(timestamp[:-3] or "0", now, check.tolerance_s)
    if stale is not None:
        return stale
    value = _header(headers, "X-HubSpot-Signature-v3")
    if value is None:
        return "no X-HubSpot-Signature-v3 header"
    return Signed(
        (line.method + _hubspot_url(line.url)).encode(),
        timestamp.encode(),
        _unbase64([value]),
        "the X-HubSpot-Signature-v3 does not match",
    )


URL_READERS: dict[
    SigningMode, Callable[[Check, Mapping[str, str], RequestLine, float], Signed | str]
] = {
    "twilio": read_twilio,
    "square": read_square,
    "hubspot": read_hubspot,
}


def _read(
    check: Check, headers: Mapping[str, str], line: RequestLine | None, now: float
) -> Signed | str:
    url_reader = URL_READERS.get(check.mode)
    if url_reader is not None:
        assert line is not None  # signing.py refuses a URL mode without a public URL
        return url_reader(check, headers, line, now)
    return READERS[check.mode](check, headers, now)


def precheck(
    check: Check, headers: Mapping[str, str], now: float, line: RequestLine | None = None
) -> str | None:
    """What can be refused before the body is read: a missing or malformed signature
    header, a stale or malformed timestamp, no decodable signature. None: only the body
    can tell."""
    signed = _read(check, headers, line, now)
    if isinstance(signed, str):
        return signed
    if not signed.given and signed.scheme != "client_state":  # that one is in the body
        return signed.mismatch
    return None


def verify(
    check: Check,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    line: RequestLine | None = None,
) -> str | None:
    """None if the request is signed by one of the flow's secrets, else the reason."""
    signed = _read(check, headers, line, now)
    if isinstance(signed, str):
        return signed
    if signed.messages is None:
        messages = [signed.before + body + signed.after]
    else:
        found = signed.messages(body)
        if isinstance(found, str):
            return found
        messages = found
    if signed.scheme != "hmac":
        return _judge(check, signed, messages[0])
    matched = False
    for message in messages:
        matched |= _matches(check.secrets, message, signed.given, signed.algorithm)
    if not matched:
        return signed.mismatch
    return None


def _judge(check: Check, signed: Signed, message: bytes) -> str | None:
    """The schemes other than an HMAC (`Scheme`): None if it holds, else the reason."""
    if signed.scheme == "equal":
        found = False
        for secret in check.secrets:
            for value in signed.given:
                found |= hmac.compare_digest(secret, value)
        return None if found else signed.mismatch
    if signed.scheme == "ed25519":
        assert isinstance(check.public_key, bytes)  # validated on save
        public_key = Ed25519PublicKey.from_public_bytes(check.public_key)
        for signature in signed.given:
            try:
                public_key.verify(signature, message)
                return None
            except InvalidSignature:
                continue
        return signed.mismatch
    return _client_states(check, message, signed.mismatch)


def _client_states(check: Check, body: bytes, mismatch: str) -> str | None:
    """`microsoft-graph`: every notification of `value[]` carries a `clientState` equal
    to a secret (one without, or with another, refuses the whole request)."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 'the body is not JSON (notifications are {"value": [...]})'
    items = document.get("value") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        return "the body has no value[] of notifications"
    for item in items:
        state = item.get("clientState") if isinstance(item, dict) else None
        if not isinstance(state, str):
            return "a notification has no clientState"
        found = False
        for key in check.secrets:
            found |= hmac.compare_digest(key, state.encode())
        if not found:
            return mismatch
    return None


def signing_secret(
    check: Check, headers: Mapping[str, str], body: bytes, now: float
) -> bytes | None:
    """The secret whose HMAC signed this request (of the flow's one or two), or None:
    what a handshake that answers with the secret (Zoom's) answers with."""
    signed = READERS[check.mode](check, headers, now)
    if isinstance(signed, str) or signed.scheme != "hmac":
        return None
    message = signed.before + body + signed.after
    for key in check.secrets:
        if _matches((key,), message, signed.given, signed.algorithm):
            return key
    return None
