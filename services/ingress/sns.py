"""AWS SNS (contract: the `sns` row of "Providers that must be answered before they
send"). SNS signs its messages itself, inside the JSON body (sent as `text/plain`):
`SignatureVersion` 1 (SHA1withRSA) or 2 (SHA256withRSA) over a canonical string of the
message's fields, by the private key of the certificate at `SigningCertURL`. So the
mode holds no secrets; the ingress:

- refuses from the headers alone what cannot be SNS (`precheck_sns`: no or another
  `x-amz-sns-message-type`, a body larger than any SNS message, a topic the flow does
  not allow);
- reads the body (`read_message`: bounded, every field checked, the `Timestamp` within
  the flow's tolerance, the certificate URL matching FLOWHOOKS_SNS_CERT_URL_PATTERN);
- fetches the certificate through the outgoing-request rules (`SnsCertificates`: only
  from URLs the pattern allows, no redirects, bounded time and size, cached with a bound,
  one shared fetch per URL, a failure remembered briefly: as `pubsub.JwksCache`);
- checks the signature (`verify_signature`).
A SubscriptionConfirmation is then answered by the handshake stage, and its
`SubscribeURL` visited in the background (`SubscribeVisits`, within 10 s); a
Notification runs the flow with `Message` parsed when it is JSON (`sns_input`)."""

import base64
import binascii
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.ingress.fetched import MAX_FETCHES_IN_FLIGHT, FetchedByUrl
from services.ingress.normalise import BodyLimits, looks_like_json, parse_input, parse_json
from services.ingress.signatures import fresh_rfc3339
from shared.errors import BadRequest
from shared.outbound import OutboundHttp, OutboundRefused, parse_url
from shared.redaction import safe_url
from shared.schemas.runs import StepTrace

log = structlog.get_logger(__name__)

TYPE_HEADER = "x-amz-sns-message-type"
TOPIC_HEADER = "x-amz-sns-topic-arn"
NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"
MESSAGE_TYPES = (NOTIFICATION, SUBSCRIPTION_CONFIRMATION, UNSUBSCRIBE_CONFIRMATION)
# The fields each type signs, in this order, each as "Name\nValue\n" (AWS's canonical
# string); a Notification's `Subject` only when the message has one.
SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS[UNSUBSCRIBE_CONFIRMATION] = SIGNED_FIELDS[SUBSCRIPTION_CONFIRMATION]
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# https on sns.<region>.amazonaws.com (and .com.cn), matched from the URL's start.
DEFAULT_CERT_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
# SNS messages are at most 256 KiB; the JSON envelope escapes `Message` (a quote or a
# backslash takes two characters): a larger body is no SNS message.
MAX_BODY_BYTES = 1024 * 1024
# Every field but `Message` is short (a 4096-bit signature is 684 base64 characters).
MAX_FIELD_CHARS = 4096
MAX_URL_CHARS = 2048
# The contract: the SubscribeURL is visited within 10 s.
SUBSCRIBE_VISIT_TIMEOUT_S = 10.0
MAX_VISIT_ANSWER_BYTES = 64 * 1024
# Visits at once (confirmations are rare: one per subscription).
MAX_VISITS_IN_FLIGHT = 16
MIN_RSA_KEY_BITS = 2048


def message_type(headers: Mapping[str, str]) -> str | None:
    value = headers.get(TYPE_HEADER)
    return value if value in MESSAGE_TYPES else None


def _topic_refusal(topic: str, topic_arns: list[str] | None) -> str | None:
    if topic_arns is not None and topic not in topic_arns:
        return f"the topic {topic[:300]} is not one of the flow's topic_arns"
    return None


def precheck_sns(headers: Mapping[str, str], topic_arns: list[str] | None) -> str | None:
    """What the headers alone show is not a message SNS signed for this flow."""
    if message_type(headers) is None:
        return f"no {TYPE_HEADER} header of {', '.join(MESSAGE_TYPES[:-1])} or {MESSAGE_TYPES[-1]}"
    length = headers.get("Content-Length")
    # ASCII digits only: str.isdigit also accepts "¹²³", which int() refuses.
    if (
        length is not None
        and length.isascii()
        and length.isdigit()
        and int(length) > MAX_BODY_BYTES
    ):
        return f"the body is larger than any SNS message ({MAX_BODY_BYTES} bytes)"
    topic = headers.get(TOPIC_HEADER)
    return None if topic is None else _topic_refusal(topic, topic_arns)


@dataclass(frozen=True)
class SnsMessage:
    """A message as read from its body: what its signature covers and how to check it."""

    type: str
    canonical: bytes
    signature: bytes
    version: str
    cert_url: str
    document: dict[str, Any]


def canonical_string(document: Mapping[str, Any]) -> bytes:
    """AWS's string to sign: each signed field of the message's type that it has, in
    order, as "Name\\nValue\\n"."""
    parts = []
    for name in SIGNED_FIELDS[document["Type"]]:
        value = document.get(name)
        if value is not None:
            parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def read_message(
    body: bytes,
    headers: Mapping[str, str],
    topic_arns: list[str] | None,
    certificates: "SnsCertificates",
    tolerance_s: int,
    now: float,
) -> SnsMessage | str:
    """The message, or why it is not one SNS signed for this flow (401)."""
    if len(body) > MAX_BODY_BYTES:
        return f"the body is larger than any SNS message ({MAX_BODY_BYTES} bytes)"
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body is not JSON (SNS sends a JSON message)"
    if not isinstance(document, dict):
        return "the body is not a JSON object (SNS sends a JSON message)"
    kind = document.get("Type")
    if kind not in MESSAGE_TYPES:
        return f"the message's Type is not {', '.join(MESSAGE_TYPES[:-1])} or {MESSAGE_TYPES[-1]}"
    if kind != headers.get(TYPE_HEADER):
        return f"the message's Type is not the {TYPE_HEADER} header's"
    for name in (*SIGNED_FIELDS[kind], "Signature", "SignatureVersion", "SigningCertURL"):
        value = document.get(name)
        if name == "Subject" and value is None:
            continue
        if not isinstance(value, str) or (not value and name != "Message"):
            return f"the message has no {name}, or it is not a string"
        if name != "Message" and len(value) > MAX_FIELD_CHARS:
            return f"the message's {name} is longer than {MAX_FIELD_CHARS} characters"
    version = document["SignatureVersion"]
    if version not in HASHES:
        return "the message's SignatureVersion is not 1 or 2"
    try:
        signature = base64.b64decode(document["Signature"], validate=True)
    except (binascii.Error, ValueError):
        return "the message's Signature is not base64"
    refusal = _topic_refusal(document["TopicArn"], topic_arns)
    if refusal is not None:
        return refusal
    stale = fresh_rfc3339(document["Timestamp"], now, tolerance_s)
    if stale is not None:
        return stale.replace("signature timestamp", "Timestamp")
    refusal = certificates.refusal(document["SigningCertURL"])
    if refusal is not None:
        return refusal
    if kind != NOTIFICATION:
        # Signed, but only SNS's own host confirms a subscription.
        refusal = certificates.refusal(document["SubscribeURL"], "SubscribeURL")
        if refusal is not None:
            return refusal
    return SnsMessage(
        kind,
        canonical_string(document),
        signature,
        version,
        document["SigningCertURL"],
        document,
    )


def verify_signature(key: rsa.RSAPublicKey, message: SnsMessage) -> str | None:
    """None if the certificate's key signed the canonical string, else the refusal."""
    try:
        # A signature of the wrong length raises InvalidSignature too.
        key.verify(
            message.signature, message.canonical, padding.PKCS1v15(), HASHES[message.version]()
        )
    except InvalidSignature:
        return f"the message's Signature (version {message.version}) does not match"
    return None


def sns_input(envelope: Any, limits: BodyLimits) -> Any:
    """The flow's input: the SNS message with its `Message` parsed when it is a JSON
    object or array (within the JSON bounds); other text stays text."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("Message"), str):
        return envelope
    text = envelope["Message"]
    raw = text.encode()
    if not looks_like_json(raw):
        return envelope
    try:
        return {**envelope, "Message": parse_json(raw, limits.max_json_depth)}
    except BadRequest:
        return envelope  # text that only looks like JSON


def parse_sns_input(
    method: str, query: dict[str, Any], content_type: str | None, body: bytes, limits: BodyLimits
) -> Any:
    """`normalise.parse_input`, then `sns_input` (SNS sends its JSON as text/plain,
    which parse_input reads as JSON)."""
    return sns_input(parse_input(method, query, content_type, body, limits), limits)


class CertificateUnavailable(Exception):
    """The certificate could not be fetched now (503: SNS retries)."""


class CertificateRefused(Exception):
    """The certificate URL or what it serves is no SNS signing certificate (401)."""


@dataclass
class _Certificate:
    key: rsa.RSAPublicKey | None
    not_before: datetime | None
    not_after: datetime | None
    fetched_at: float
    # A failed fetch, remembered briefly; `refused`: the sender's (401), else 503.
    error: str | None = None
    refused: bool = False


class SnsCertificates:
    """SNS signing certificates by URL: fetched only from URLs matching the pattern
    (FLOWHOOKS_SNS_CERT_URL_PATTERN), through the outgoing-request rules, never
    redirected; a bounded number kept for a TTL; one fetch per URL at a time."""

    def __init__(
        self,
        http: OutboundHttp,
        pattern: str,
        max_entries: int,
        ttl_s: float,
        timeout_s: float,
        max_bytes: int,
        failure_ttl_s: float = 5.0,
    ) -> None:
        self.http = http
        self.pattern = re.compile(pattern)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.failure_ttl_s = failure_ttl_s
        self.fetched: FetchedByUrl[_Certificate] = FetchedByUrl(
            self._fetch,
            max_entries=max_entries,
            wait_s=timeout_s + 1,
            max_in_flight=MAX_FETCHES_IN_FLIGHT,
            timed_out=lambda url: _Certificate(
                None, None, None, 0.0, f"the certificate at {safe_url(url)} did not come in time"
            ),
            busy=lambda url: _Certificate(
                None, None, None, 0.0, "too many SNS certificates are being fetched now"
            ),
        )

    def refusal(self, url: str, name: str = "SigningCertURL") -> str | None:
        """Why the ingress will not fetch `url`, or None."""
        if len(url) > MAX_URL_CHARS:
            return f"the message's {name} is longer than {MAX_URL_CHARS} characters"
        if self.pattern.match(url) is None:
            return (
                f"the message's {name} {safe_url(url)} is not one that"
                " FLOWHOOKS_SNS_CERT_URL_PATTERN allows"
            )
        try:
            parse_url(url)
        except OutboundRefused as exc:
            return f"the message's {name} is not a valid URL: {exc}"
        return None

    async def key(self, url: str, now: datetime | None = None) -> rsa.RSAPublicKey:
        """The public key of the certificate at `url` (which `refusal` allows). Raises
        CertificateRefused or CertificateUnavailable."""
        entry = self.fetched.cached(url)
        lifetime = self.ttl_s if entry is None or entry.error is None else self.failure_ttl_s
        if entry is None or time.monotonic() - entry.fetched_at >= lifetime:
            entry = await self.fetched.fetch(url)
        if entry.error is not None:
            if entry.refused:
                raise CertificateRefused(entry.error)
            raise CertificateUnavailable(entry.error)
        assert entry.key is not None and entry.not_before and entry.not_after
        moment = now or datetime.now(UTC)
        if not entry.not_before <= moment <= entry.not_after:
            raise CertificateRefused(f"the certificate at {safe_url(url)} is not valid now")
        return entry.key

    async def _fetch(self, url: str) -> _Certificate:
        shown = safe_url(url)
        try:
            status, _, body = await self.http.request(
                "GET",
                url,
                headers={},
                data=None,
                timeout_s=self.timeout_s,
                max_response_bytes=self.max_bytes,
                follow_redirects=False,
            )
            if 400 <= status < 500 or 300 <= status < 400:
                # No certificate there (the sender's URL), and redirects are not followed.
                raise CertificateRefused(f"the certificate URL {shown} answered {status}")
            if status != 200:
                raise CertificateUnavailable(f"the certificate URL {shown} answered {status}")
            entry = _read_certificate(body, shown)
        except CertificateRefused as exc:
            entry = self._failed(url, str(exc), refused=True)
        except OutboundRefused as exc:
            refused = "larger than" in str(exc)
            entry = self._failed(url, f"the certificate at {shown}: {exc}", refused=refused)
        except (CertificateUnavailable, OSError, aiohttp.ClientError) as exc:
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                detail = f"no answer within {self.timeout_s:g} s"
            if not isinstance(exc, CertificateUnavailable):
                detail = f"the certificate at {shown} could not be fetched: {detail}"
            entry = self._failed(url, detail, refused=False)
        return entry

    def _failed(self, url: str, error: str, *, refused: bool) -> _Certificate:
        log.warning("sns_certificate_failed", url=safe_url(url), error=error)
        return _Certificate(None, None, None, time.monotonic(), error, refused)


def _read_certificate(body: bytes, shown: str) -> _Certificate:
    """An X.509 certificate in PEM with an RSA key of at least 2048 bits, else
    CertificateRefused saying what is wrong."""
    # Imported here, not at the top: every ingress imports this module but few flows
    # take SNS messages, and cryptography's x509 costs ~15 ms of CPU at each start.
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(body)
    except ValueError:
        raise CertificateRefused(f"the certificate at {shown} is not a PEM certificate") from None
    try:
        key = certificate.public_key()
    except (ValueError, TypeError):
        raise CertificateRefused(f"the certificate at {shown} has an unreadable key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CertificateRefused(f"the certificate at {shown} does not hold an RSA key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise CertificateRefused(
            f"the certificate at {shown} holds an RSA key of fewer than {MIN_RSA_KEY_BITS} bits"
        )
    return _Certificate(
        key,
        certificate.not_valid_before_utc,
        certificate.not_valid_after_utc,
        time.monotonic(),
    )


# What the handler does with a visit's trace once it is done (records it).


class SubscribeVisits:
    """A SubscriptionConfirmation's `SubscribeURL` visited before its sender is answered:
    a GET through the outgoing-request rules, no redirects, within
    `SUBSCRIBE_VISIT_TIMEOUT_S`, at most `MAX_VISITS_IN_FLIGHT` at once; its outcome
    logged and returned as a step trace (the handler records it with the handshake)."""

    def __init__(self, http: OutboundHttp, certificates: SnsCertificates) -> None:
        self.http = http
        self.certificates = certificates
        self._in_flight = 0

    async def visit(self, url: str) -> StepTrace:
        started = datetime.now(UTC)
        clock = time.monotonic()
        shown = safe_url(url)
        output: dict[str, Any] | None = None
        error: str | None = self.certificates.refusal(url, "SubscribeURL")
        if error is None and self._in_flight >= MAX_VISITS_IN_FLIGHT:
            error = f"more than {MAX_VISITS_IN_FLIGHT} SubscribeURL visits at once"
        if error is None:
            self._in_flight += 1
            try:
                status, _, body = await self.http.request(
                    "GET",
                    url,
                    headers={},
                    data=None,
                    timeout_s=SUBSCRIBE_VISIT_TIMEOUT_S,
                    max_response_bytes=MAX_VISIT_ANSWER_BYTES,
                    follow_redirects=False,
                )
                output = {"status_code": status, "body": body[:2000].decode(errors="replace")}
                if not 200 <= status < 300:
                    error = f"the SubscribeURL answered {status} (redirects are not followed)"
            except (OutboundRefused, OSError, aiohttp.ClientError) as exc:
                detail = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    detail = f"no answer within {SUBSCRIBE_VISIT_TIMEOUT_S:g} s"
                error = f"the SubscribeURL could not be visited: {detail}"
            finally:
                self._in_flight -= 1
        if error is None:
            log.info("sns_subscription_confirmed", url=shown)
        else:
            log.warning("sns_subscription_not_confirmed", url=shown, error=error)
        return StepTrace(
            ref_id="subscribe_url",
            type="sns.subscribe_url",
            input={"method": "GET", "url": shown},
            output=output,
            error=error,
            started_at=started,
            duration_ms=(time.monotonic() - clock) * 1000,
        )
