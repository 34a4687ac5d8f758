"""Standard Webhooks signatures (https://www.standardwebhooks.com, spec 1.0.0, symmetric
scheme): the content signed is `<webhook-id>.<webhook-timestamp>.<body>`, with
HMAC-SHA256 under the secret `whsec_<base64 of 24 to 64 random bytes>`, sent as
`webhook-signature: v1,<base64 of the MAC>` (a space-separated list when several secrets
sign during a rotation). Used by the debugger's alert notices; kept here because any
service sending or receiving signed callbacks needs the same two functions."""

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Mapping
from hashlib import sha256

PREFIX = "whsec_"
VERSION = "v1"
# The spec's bounds on a symmetric secret: at least 192 bits, at most 512.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
# How far a timestamp may be from the receiver's clock (replays of old deliveries).
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """A delivery that does not verify; the message says why."""


def new_secret(size: int = 32) -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of `whsec_<base64>` (the prefix is optional, as in the reference
    libraries); ValueError if it is not base64 of 24 to 64 bytes."""
    encoded = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret must be whsec_ followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the secret must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def _check_metadata(msg_id: str, timestamp: str) -> None:
    # The signed content is delimited by full stops: neither part may contain one.
    if not msg_id or "." in msg_id:
        raise SignatureError("webhook-id must be non-empty and contain no '.'")
    if not timestamp.isdigit():
        raise SignatureError("webhook-timestamp must be whole seconds since the epoch")


def _mac(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, sha256).digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64>`."""
    _check_metadata(msg_id, str(timestamp))
    return f"{VERSION},{_mac(secret_key(secret), msg_id, str(timestamp), body)}"


def signed_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of one delivery attempt (the timestamp is the attempt's)."""
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign(secret, msg_id, at, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raises SignatureError unless one of the `v1` signatures matches and the
    timestamp is within `tolerance_s` of `now`. Header names are case-insensitive."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if msg_id is None or timestamp is None or signatures is None:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    _check_metadata(msg_id, timestamp)
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        raise SignatureError("webhook-timestamp is outside the tolerance")
    expected = _mac(secret_key(secret), msg_id, timestamp, body)
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        # Constant time: a comparison that stops early is a signing oracle.
        if version == VERSION and hmac.compare_digest(value.encode(), expected.encode()):
            return
    raise SignatureError("no signature matches")
