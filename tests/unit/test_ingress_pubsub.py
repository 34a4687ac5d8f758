"""google-pubsub at the ingress (services/ingress/pubsub.py): push tokens signed with
google-auth (the library Google's own clients sign with), checked against a JWKS served
on loopback through the outgoing-request rules; the JWKS cache's bounds: one fetch for
concurrent requests, a host that hangs answered 503 within the fetch's timeout and
remembered, private addresses refused unless allowed."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import google.auth.crypt
import google.auth.jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from multidict import CIMultiDict

from services.ingress.pubsub import (
    JwksCache,
    JwksUnavailable,
    bearer_jwt,
    is_jwt_bearer,
    verify_push_token,
)
from services.ingress.signing import SignatureChecks
from shared.errors import Unauthorized, Unavailable
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.access import FlowWebhookSettings, SigningSettings

AUDIENCE = "https://hooks.example.com/v1/flow-webhook/f1"
EMAIL = "pusher@my-project.iam.gserviceaccount.com"
LOOPBACK = ["127.0.0.0/8"]


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, key_id: str) -> dict[str, Any]:
    public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": key_id, "alg": "RS256", "use": "sig"}


def token(key: rsa.RSAPrivateKey, key_id: str = "k1", **claims: Any) -> str:
    """A push token as Google signs one (google-auth's RSASigner and jwt.encode)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    now = int(time.time())
    payload = {
        "aud": AUDIENCE,
        "email": EMAIL,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        "iss": "https://accounts.google.com",
        "sub": "1234567890",
        **claims,
    }
    payload = {name: value for name, value in payload.items() if value is not None}
    signer = google.auth.crypt.RSASigner.from_string(pem.decode(), key_id)
    return google.auth.jwt.encode(signer, payload).decode()


@dataclass
class JwksServer:
    url: str
    keys: list[dict[str, Any]]
    fetches: int = 0
    hang: bool = False
    status: int = 200
    served: list[float] = field(default_factory=list)


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(url="", keys=[])

    async def serve(request: web.Request) -> web.Response:
        server.fetches += 1
        if server.hang:
            await asyncio.sleep(30)
        return web.json_response({"keys": server.keys}, status=server.status)

    app = web.Application()
    app.router.add_get("/certs", serve)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/certs"
    yield server
    await runner.cleanup()


@pytest.fixture
async def make_cache() -> AsyncIterator[Callable[..., JwksCache]]:
    sessions: list[OutboundHttp] = []

    def make(allow: list[str] | None = None, **bounds: Any) -> JwksCache:
        http = OutboundHttp(AddressPolicy(LOOPBACK if allow is None else allow))
        sessions.append(http)
        options = {"max_entries": 10, "ttl_s": 3600, "timeout_s": 2.0, "max_bytes": 65536}
        return JwksCache(http, **{**options, **bounds})

    yield make
    for http in sessions:
        await http.close()


async def test_a_push_token_signed_by_google_auth(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    key = rsa_key()
    jwks_server.keys = [jwk(key, "k1")]
    cache = make_cache()

    async def check(jwt: str) -> str | None:
        return await verify_push_token(jwt, AUDIENCE, EMAIL, jwks_server.url, cache)

    assert await check(token(key)) is None
    assert await check(token(key, aud="https://elsewhere.example.com")) == (
        "the token's aud is not the flow's audience"
    )
    assert await check(token(key, email="other@example.com")) == (
        "the token's email is not the flow's email"
    )
    assert await check(token(key, email_verified=False)) == "the token's email is not verified"
    now = int(time.time())
    assert await check(token(key, iat=now - 7200, exp=now - 61)) == "the token has expired"
    # Within the leeway (60 s): accepted.
    assert await check(token(key, iat=now - 7200, exp=now - 30)) is None
    assert await check(token(key, iat=now + 120)) == "the token is issued in the future"
    assert await check(token(key, email=None)) == "the token has no email claim"
    assert await check(token(key, exp=None)) == "the token has no exp claim"
    assert await check(token(rsa_key())) == "the token's signature does not match"
    assert await check("eyJhbGciOi.not.ajwt") == "the bearer token is not a well-formed JWT"
    hs256 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo"
    assert await check(hs256) == "the token is not signed with RS256"
    # One fetch for all of them (cached).
    assert jwks_server.fetches == 1


async def test_googles_own_tokens_must_come_from_googles_issuer(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    key = rsa_key()
    jwks_server.keys = [jwk(key, "k1")]
    cache = make_cache()
    # The default JWKS (Google's) is looked up under its own URL: preload the cache's
    # fetch with the local server's document by asking through that URL's entry.
    await cache.key(jwks_server.url, "k1")
    loaded = cache.fetched.cached(jwks_server.url)
    assert loaded is not None
    cache.fetched.keep("https://www.googleapis.com/oauth2/v3/certs", loaded)
    forged = token(key, iss="https://attacker.example.com")
    assert await verify_push_token(forged, AUDIENCE, EMAIL, None, cache) == (
        "the token is not issued by Google"
    )
    assert await verify_push_token(token(key), AUDIENCE, EMAIL, None, cache) is None


async def test_an_unknown_key_id_refetches_once_a_minute(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    old, new = rsa_key(), rsa_key()
    jwks_server.keys = [jwk(old, "old")]
    cache = make_cache(refetch_after_s=0.2)
    assert (
        await verify_push_token(token(old, "old"), AUDIENCE, EMAIL, jwks_server.url, cache) is None
    )
    jwks_server.keys = [jwk(old, "old"), jwk(new, "new")]  # Google rotated
    new_token = token(new, "new")
    # Too soon after the last fetch: not refetched (a flood of made-up key ids costs none).
    assert await verify_push_token(new_token, AUDIENCE, EMAIL, jwks_server.url, cache) == (
        "the token's key 'new' is not in the JWKS"
    )
    assert jwks_server.fetches == 1
    await asyncio.sleep(0.25)
    assert await verify_push_token(new_token, AUDIENCE, EMAIL, jwks_server.url, cache) is None
    assert jwks_server.fetches == 2


async def test_a_hanging_jwks_host_costs_one_bounded_fetch(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    jwks_server.hang = True
    cache = make_cache(timeout_s=0.5, failure_ttl_s=30)
    started = time.monotonic()
    results = await asyncio.gather(
        *(cache.key(jwks_server.url, "k1") for _ in range(20)), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    assert jwks_server.fetches == 1  # twenty requests waited on one fetch
    assert elapsed < 2.0
    assert {str(result) for result in results} == {
        f"the JWKS at {jwks_server.url} failed: no answer within 0.5 s"
    }
    assert all(isinstance(result, JwksUnavailable) for result in results)
    # Remembered: the next request is answered at once, without another fetch.
    started = time.monotonic()
    with pytest.raises(JwksUnavailable):
        await cache.key(jwks_server.url, "k1")
    assert time.monotonic() - started < 0.1 and jwks_server.fetches == 1


async def test_failed_refreshes_keep_the_last_good_keys(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    key = rsa_key()
    jwks_server.keys = [jwk(key, "k1")]
    cache = make_cache(ttl_s=0.1)
    assert await cache.key(jwks_server.url, "k1") is not None
    await asyncio.sleep(0.15)
    jwks_server.status = 500
    assert await cache.key(jwks_server.url, "k1") is not None
    with pytest.raises(JwksUnavailable, match=r"answered 500$"):
        await cache.key(jwks_server.url, "k2")


async def test_private_addresses_are_refused_unless_allowed(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    cache = make_cache(allow=[])
    with pytest.raises(JwksUnavailable) as caught:
        await cache.key(jwks_server.url, "k1")
    assert str(caught.value) == (
        f"the JWKS at {jwks_server.url} failed: 127.0.0.1 is 127.0.0.1, a private, loopback,"
        " link-local or reserved address; the operator has not allowed it"
    )
    assert jwks_server.fetches == 0


async def test_the_cache_is_bounded(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    jwks_server.keys = [jwk(rsa_key(), "k1")]
    cache = make_cache(max_entries=2)
    for index in range(4):
        await cache.key(f"{jwks_server.url}?n={index}", "k1")
    assert cache.fetched.urls() == [f"{jwks_server.url}?n=2", f"{jwks_server.url}?n=3"]


def test_jwt_bearers_are_told_from_flowhooks_tokens() -> None:
    assert is_jwt_bearer("Bearer eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ.c2ln")
    assert not is_jwt_bearer("Bearer fhw_" + "a" * 86)
    assert not is_jwt_bearer("Bearer fhp_abc.def.ghi")
    assert not is_jwt_bearer("Basic eyJhbGciOiJSUzI1NiJ9.eyJhIjoxfQ.c2ln")
    assert not is_jwt_bearer("Bearer eyJ" + "a" * 9000 + ".b.c")
    assert bearer_jwt(CIMultiDict({"Authorization": "Bearer eyJa.b.c"})) == "eyJa.b.c"
    assert bearer_jwt(CIMultiDict()) is None


async def test_signature_checks_answer_401_and_503(
    jwks_server: JwksServer, make_cache: Callable[..., JwksCache]
) -> None:
    key = rsa_key()
    jwks_server.keys = [jwk(key, "k1")]
    checks = SignatureChecks(None, 10, jwks=make_cache())
    flow = FlowWebhookSettings(
        flow_id="f1",
        workspace_id="w1",
        version=1,
        status="live",
        signing=SigningSettings(
            mode="google-pubsub",
            secrets=[],
            audience=AUDIENCE,
            email=EMAIL,
            jwks_url=jwks_server.url,
        ),
    )
    await checks.precheck(flow, CIMultiDict({"Authorization": f"Bearer {token(key)}"}))
    with pytest.raises(Unauthorized) as refused:
        await checks.precheck(flow, CIMultiDict())
    assert refused.value.message == (
        "invalid google-pubsub signature: no Authorization header with a bearer JWT"
        " (the push subscription's token)"
    )
    with pytest.raises(Unauthorized) as refused:
        wrong = token(key, aud="https://elsewhere.example.com")
        await checks.precheck(flow, CIMultiDict({"Authorization": f"Bearer {wrong}"}))
    assert refused.value.message == (
        "invalid google-pubsub signature: the token's aud is not the flow's audience"
    )
    jwks_server.status = 503
    unknown = token(key, "k9")
    checks.jwks.fetched.clear()  # type: ignore[union-attr]
    with pytest.raises(Unavailable) as unavailable:
        await checks.precheck(flow, CIMultiDict({"Authorization": f"Bearer {unknown}"}))
    assert unavailable.value.message == (
        f"cannot check the google-pubsub token now: the JWKS at {jwks_server.url} answered 503"
    )
