"""SendGrid's Event Webhook signature (contract: "More verification modes"): ECDSA
P-256 with SHA-256 over `<X-Twilio-Email-Event-Webhook-Timestamp><raw body>`, the
signature base64 DER in `X-Twilio-Email-Event-Webhook-Signature`, checked against the
flow's `public_key` (loaded once per flow version by signing.py). Like signatures.py:
pure, `precheck` from the headers alone, `verify` with the body; both return the
refusal (401) or None."""

import base64
import binascii
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.ingress.signatures import fresh_timestamp

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# A P-256 signature in DER is at most 72 bytes (96 base64 characters): far longer is
# no signature and is refused before it is decoded.
MAX_SIGNATURE_CHARS = 256


def _read(headers: Mapping[str, str], tolerance_s: int, now: float) -> tuple[bytes, bytes] | str:
    """The signature (DER) and the timestamp as signed, or the refusal."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    stale = fresh_timestamp(timestamp, now, tolerance_s)
    if stale is not None:
        return stale
    assert timestamp is not None
    value = headers.get(SIGNATURE_HEADER)
    if value is None:
        return f"no {SIGNATURE_HEADER} header"
    if len(value) > MAX_SIGNATURE_CHARS:
        return f"the {SIGNATURE_HEADER} is longer than {MAX_SIGNATURE_CHARS} characters"
    try:
        signature = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return f"the {SIGNATURE_HEADER} is not base64"
    return signature, timestamp.strip().encode()


def precheck_sendgrid(headers: Mapping[str, str], tolerance_s: int, now: float) -> str | None:
    read = _read(headers, tolerance_s, now)
    return read if isinstance(read, str) else None


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int,
    now: float,
) -> str | None:
    read = _read(headers, tolerance_s, now)
    if isinstance(read, str):
        return read
    signature, timestamp = read
    try:
        # A malformed DER signature raises InvalidSignature too.
        key.verify(signature, timestamp + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return f"the {SIGNATURE_HEADER} does not match"
    return None
