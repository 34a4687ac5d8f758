"""Bearer tokens: reading the Authorization header and hashing secrets.

Secrets are never stored or sent between services: only their SHA-256 hash is. Tokens
are high-entropy random strings, so an unsalted hash is safe and lets auth find a
token by an indexed lookup; the final comparison is constant time anyway.
"""

import hashlib
import hmac
import secrets

from shared.errors import Unauthorized

PERSONAL_TOKEN_PREFIX = "fhp_"
FLOW_TOKEN_PREFIX = "fhw_"
# A bearer longer than this cannot be one of ours; refuse before hashing megabytes.
MAX_TOKEN_LENGTH = 512


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_personal_token() -> str:
    return PERSONAL_TOKEN_PREFIX + secrets.token_urlsafe(40)


def bearer_from_header(value: str | None) -> str:
    """The token of `Authorization: Bearer <token>`, or `Unauthorized`."""
    if not value:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise Unauthorized("invalid bearer token")
    return token
