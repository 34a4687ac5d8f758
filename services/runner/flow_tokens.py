"""Flow webhook tokens, derived rather than stored:
`fhw_` + base64url(HMAC-SHA512(key, "<flow id>:<nonce>")), 90 URL-safe characters.
The database holds only the nonce; rotating picks a new one."""

import base64
import hashlib
import hmac
import secrets

from shared.bearer import FLOW_TOKEN_PREFIX


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def flow_token(key: str, flow_id: str, nonce: str) -> str:
    digest = hmac.new(key.encode(), f"{flow_id}:{nonce}".encode(), hashlib.sha512).digest()
    return FLOW_TOKEN_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
