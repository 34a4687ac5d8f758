"""Google Pub/Sub push (contract: "More verification modes"): the push request's
`Authorization: Bearer <JWT>`, RS256, checked against the signing keys of a JWKS (the
flow's `jwks_url`, Google's by default), its `aud` the flow's `audience`, its `email`
the flow's `email` (the push subscription's service account), `exp` and `iat` honoured
with `LEEWAY_S`. Google's own tokens must also come from Google's issuer.

The JWKS is fetched through the outgoing-request rules (shared/outbound.py, the
ingress's FLOWHOOKS_INGRESS_HTTP_ALLOW_NETWORKS), bounded in time and size, and cached
(`JwksCache`): a bounded number of URLs, each for a TTL. Concurrent requests needing
the same JWKS wait on one fetch; a fetch that fails is remembered for a few seconds so
that a host that hangs or fails costs one fetch, not one per webhook, and only this
mode's flows wait (up to the fetch's timeout), never the other webhooks."""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog

from services.ingress.fetched import MAX_FETCHES_IN_FLIGHT, FetchedByUrl
from shared.outbound import OutboundHttp, OutboundRefused
from shared.redaction import safe_url

log = structlog.get_logger(__name__)

GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
# Clock skew allowed on `exp` and `iat` (and `nbf`).
LEEWAY_S = 60
# A token longer than this is no push token (Google's are about 1 KiB): refused unread.
MAX_TOKEN_CHARS = 8192
MAX_KEY_ID_CHARS = 200
# Keys read from one JWKS at most (Google publishes two or three).
MAX_JWKS_KEYS = 20


class JwksUnavailable(Exception):
    """The JWKS could not be fetched or read (the ingress answers 503: not the sender's
    fault, and Pub/Sub retries)."""


def is_jwt_bearer(header: str) -> bool:
    """Whether `Authorization` holds a bearer that is a JWT (three base64url parts, a
    JSON header): never one of flowhooks' own tokens (`fhp_`, `fhw_`)."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return (
        scheme.lower() == "bearer"
        and token.startswith("eyJ")
        and token.count(".") == 2
        and len(token) <= MAX_TOKEN_CHARS
    )


def bearer_jwt(headers: Mapping[str, str]) -> str | None:
    header = headers.get("Authorization")
    if header is None or not is_jwt_bearer(header):
        return None
    return header.strip().partition(" ")[2].strip()


# Keys of the last good fetch stay usable this long while refetches fail.
STALE_KEYS_MAX_S = 24 * 3600


@dataclass
class _Keys:
    keys: dict[str, Any]  # key id -> RSA public key (of the last good fetch)
    fetched_at: float  # this fetch, good or failed
    good_at: float  # the fetch the keys come from
    error: str | None = None  # a failed fetch, remembered briefly


class JwksCache:
    """JWKS by URL (services/ingress/fetched.py: bounded, one shared fetch per URL, a
    bounded number of URLs fetched at once); fresh for `ttl_s`, a failure remembered
    for `failure_ttl_s` while the last good keys still answer for their key ids."""

    def __init__(
        self,
        http: OutboundHttp,
        max_entries: int,
        ttl_s: float,
        timeout_s: float,
        max_bytes: int,
        failure_ttl_s: float = 5.0,
        refetch_after_s: float = 60.0,
    ) -> None:
        self.http = http
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.failure_ttl_s = failure_ttl_s
        # An unknown key id refetches the JWKS (Google rotates keys), at most this often.
        self.refetch_after_s = refetch_after_s
        self.fetched: FetchedByUrl[_Keys] = FetchedByUrl(
            self._fetch,
            max_entries=max_entries,
            wait_s=timeout_s + 1,
            max_in_flight=MAX_FETCHES_IN_FLIGHT,
            timed_out=lambda url: self._unavailable(
                f"the JWKS at {safe_url(url)} did not answer in time"
            ),
            busy=lambda url: self._unavailable("too many JWKS are being fetched now"),
        )

    async def key(self, url: str, key_id: str) -> Any | None:
        """The public key `key_id` of the JWKS at `url`; None: the JWKS has no such key.
        Raises JwksUnavailable."""
        now = time.monotonic()
        entry = self.fetched.cached(url)
        if entry is not None:
            age = now - entry.fetched_at
            if entry.error is not None and age < self.failure_ttl_s:
                if key_id in entry.keys:
                    return entry.keys[key_id]  # the last good keys, while refetches fail
                raise JwksUnavailable(entry.error)
            if entry.error is None and age < self.ttl_s:
                if key_id in entry.keys or age < self.refetch_after_s:
                    return entry.keys.get(key_id)
        fresh = await self.fetched.fetch(url)
        if key_id in fresh.keys:
            return fresh.keys[key_id]
        if fresh.error is not None:
            raise JwksUnavailable(fresh.error)
        return None

    @staticmethod
    def _unavailable(error: str) -> _Keys:
        now = time.monotonic()
        return _Keys({}, now, now, error)

    async def _fetch(self, url: str) -> _Keys:
        try:
            status, _, body = await self.http.request(
                "GET",
                url,
                headers={"Accept": "application/json"},
                data=None,
                timeout_s=self.timeout_s,
                max_response_bytes=self.max_bytes,
                follow_redirects=False,
            )
            if status != 200:
                raise JwksUnavailable(f"the JWKS at {safe_url(url)} answered {status}")
            keys = _read_jwks(body)
            if not keys:
                raise JwksUnavailable(f"the JWKS at {safe_url(url)} holds no RS256 key")
            now = time.monotonic()
            return _Keys(keys, now, now)
        except (JwksUnavailable, OutboundRefused, OSError, ValueError, aiohttp.ClientError) as exc:
            detail = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                detail = f"no answer within {self.timeout_s:g} s"
            if not isinstance(exc, JwksUnavailable):
                detail = f"the JWKS at {safe_url(url)} failed: {detail}"
            return self._failed(url, detail)

    def _failed(self, url: str, error: str) -> _Keys:
        """A failed fetch, keeping the last good keys (not too old) for their key ids."""
        log.warning("jwks_fetch_failed", url=safe_url(url), error=error)
        now = time.monotonic()
        previous = self.fetched.cached(url)
        if previous is not None and now - previous.good_at < STALE_KEYS_MAX_S:
            return _Keys(previous.keys, now, previous.good_at, error)
        return _Keys({}, now, now, error)


def _read_jwks(body: bytes) -> dict[str, Any]:
    """Key id -> RSA public key, of the RS256 signing keys of a JWKS document."""
    # PyJWT (and the cryptography it loads) is imported here and in verify_push_token,
    # not at the top: every ingress imports this module, few flows take Pub/Sub pushes,
    # and it costs ~20 ms of CPU at each start.
    import jwt
    from jwt.algorithms import RSAAlgorithm

    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JwksUnavailable("the JWKS is not JSON") from None
    items = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise JwksUnavailable("the JWKS has no keys list")
    keys: dict[str, Any] = {}
    for item in items[:MAX_JWKS_KEYS]:
        if not isinstance(item, dict) or item.get("kty") != "RSA":
            continue
        if item.get("use", "sig") != "sig" or item.get("alg", "RS256") != "RS256":
            continue
        key_id = item.get("kid")
        if not isinstance(key_id, str) or not key_id:
            continue
        try:
            keys[key_id] = RSAAlgorithm.from_jwk(item)
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
            continue
    return keys


async def verify_push_token(
    token: str, audience: str, email: str, jwks_url: str | None, jwks: JwksCache
) -> str | None:
    """None when the push token holds, else why not (401). Raises JwksUnavailable."""
    import jwt  # lazily: see _read_jwks

    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        return "the bearer token is not a well-formed JWT"
    if header.get("alg") != "RS256":
        return "the token is not signed with RS256"
    key_id = header.get("kid")
    if not isinstance(key_id, str) or not key_id or len(key_id) > MAX_KEY_ID_CHARS:
        return "the token's header names no key (kid)"
    url = jwks_url or GOOGLE_JWKS_URL
    key = await jwks.key(url, key_id)
    if key is None:
        return f"the token's key {key_id!r} is not in the JWKS"
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audience,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "aud", "email"]},
        )
    except jwt.ExpiredSignatureError:
        return "the token has expired"
    except jwt.ImmatureSignatureError:
        return "the token is issued in the future"
    except jwt.InvalidAudienceError:
        return "the token's aud is not the flow's audience"
    except jwt.MissingRequiredClaimError as exc:
        return f"the token has no {exc.claim} claim"
    except jwt.InvalidSignatureError:
        return "the token's signature does not match"
    except jwt.InvalidTokenError as exc:
        return f"the token is not valid ({type(exc).__name__})"
    if claims.get("email") != email:
        return "the token's email is not the flow's email"
    if claims.get("email_verified", True) is not True:
        return "the token's email is not verified"
    if jwks_url is None and claims.get("iss") not in GOOGLE_ISSUERS:
        return "the token is not issued by Google"
    return None
