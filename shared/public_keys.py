"""Public keys that flows hold to check senders' signatures, read the same way by the
runner (on save: a bad key is refused naming the field) and the ingress (to verify).

SendGrid shows its Event Webhook verification key as base64 of the DER
SubjectPublicKeyInfo of an ECDSA P-256 key; that is the only form accepted."""

import base64
import binascii

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

# A P-256 SubjectPublicKeyInfo is 91 bytes (124 base64 characters); far longer input is
# no such key and is refused before it is decoded.
MAX_PUBLIC_KEY_CHARS = 1024


def load_ecdsa_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key of `text` (base64 DER), or ValueError saying why not."""
    if len(text) > MAX_PUBLIC_KEY_CHARS:
        raise ValueError(f"a public key has at most {MAX_PUBLIC_KEY_CHARS} characters")
    try:
        der = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the public key is not base64 (SendGrid shows it as base64 DER)") from None
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("the public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the public key is not an ECDSA P-256 key")
    return key
