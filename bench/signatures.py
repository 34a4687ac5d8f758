"""What a signature check costs the ingress per request, for each verification mode and
for 1 KiB and 1 MiB bodies, in-process (no HTTP, no broker): the pure check of
`services/ingress/signatures.py` with the flow's secrets already opened (the usual
case: they are opened once per flow version), the cached lookup in front of it, and
the one-off opening of two sealed secrets. The bearer path's added cost is the test
that sends it past all of this. `sendgrid` is an ECDSA P-256 verification
(public_key_signatures.py); `google-pubsub` an RS256 JWT check with its JWKS cached
(pubsub.py: the token signs no body, so both sizes cost the same).

    .venv/bin/python -m bench.signatures [--rounds N]
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import get_args

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from multidict import CIMultiDict

from services.ingress import pubsub
from services.ingress.public_key_signatures import verify_sendgrid
from services.ingress.signatures import URL_READERS, Check, RequestLine, secret_key, verify
from services.ingress.signing import SignatureChecks
from shared.schemas.access import FlowWebhookSettings, SigningSettings
from shared.schemas.vocabulary import SigningMode
from shared.secret_box import SecretBox

SECRET = "bench-secret-0123456789"
STANDARD = "whsec_" + base64.b64encode(b"bench-standard-key-0123456789ab").decode()
PUBLIC_URL = "https://hooks.example.com/v1/flow-webhook/00000000-0000-0000-0000-000000000001"


def _body(mode: str, size: int) -> bytes:
    """Random bytes; form data for Twilio (it signs the form's parameters)."""
    if mode == "twilio":
        return b"Body=" + base64.urlsafe_b64encode(os.urandom(size))[: size - 5]
    return os.urandom(size)


def _signed_headers(mode: str, body: bytes, now: int) -> CIMultiDict[str]:
    key = SECRET.encode()

    def mac(message: bytes, algorithm: str = "sha256") -> bytes:
        return hmac.new(key, message, getattr(hashlib, algorithm)).digest()

    if mode == "stripe":
        return CIMultiDict(
            {"Stripe-Signature": f"t={now},v1={mac(f'{now}.'.encode() + body).hex()}"}
        )
    if mode == "github":
        return CIMultiDict({"X-Hub-Signature-256": "sha256=" + mac(body).hex()})
    if mode == "shopify":
        return CIMultiDict({"X-Shopify-Hmac-Sha256": base64.b64encode(mac(body)).decode()})
    if mode == "slack":
        signature = mac(f"v0:{now}:".encode() + body).hex()
        return CIMultiDict(
            {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": f"v0={signature}"}
        )
    if mode == "standard-webhooks":
        raw = base64.b64decode(STANDARD.removeprefix("whsec_"))
        signed = hmac.new(raw, f"m.{now}.".encode() + body, hashlib.sha256).digest()
        return CIMultiDict(
            {
                "webhook-id": "m",
                "webhook-timestamp": str(now),
                "webhook-signature": "v1," + base64.b64encode(signed).decode(),
            }
        )
    if mode == "paddle":
        signature = mac(f"{now}:".encode() + body).hex()
        return CIMultiDict({"Paddle-Signature": f"ts={now};h1={signature}"})
    if mode == "twilio":
        params = "Body" + body.decode().removeprefix("Body=")
        signature = mac((PUBLIC_URL + params).encode(), "sha1")
        return CIMultiDict({"X-Twilio-Signature": base64.b64encode(signature).decode()})
    if mode == "square":
        signature = mac(PUBLIC_URL.encode() + body)
        return CIMultiDict({"x-square-hmacsha256-signature": base64.b64encode(signature).decode()})
    if mode == "hubspot":
        ms = str(now * 1000)
        signature = mac(f"POST{PUBLIC_URL}".encode() + body + ms.encode())
        return CIMultiDict(
            {
                "X-HubSpot-Signature-v3": base64.b64encode(signature).decode(),
                "X-HubSpot-Request-Timestamp": ms,
            }
        )
    return CIMultiDict({"X-Signature": mac(body).hex()})


def _sendgrid_us(rounds: int, now: int) -> list[float]:
    private = ec.generate_private_key(ec.SECP256R1())
    figures = []
    for size in (1024, 1024 * 1024):
        body = os.urandom(size)
        signature = private.sign(str(now).encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = CIMultiDict(
            {
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": str(now),
            }
        )
        key = private.public_key()
        assert verify_sendgrid(key, headers, body, 300, now) is None
        figures.append(
            _per_call_us(
                lambda k=key, h=headers, b=body: verify_sendgrid(k, h, b, 300, now),  # type: ignore[misc]
                rounds if size == 1024 else max(20, rounds // 100),
            )
        )
    return figures


def _pubsub_us(rounds: int, now: int) -> float:
    """One push token's check, its JWKS already cached (a 2048-bit RSA key, as Google's)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"aud": "a", "email": "e@example.com", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k"})
    url = "https://keys.example.com/certs"
    cache = pubsub.JwksCache(None, max_entries=1, ttl_s=3600, timeout_s=5, max_bytes=65536)  # type: ignore[arg-type]
    cache._entries[url] = pubsub._Keys({"k": private.public_key()}, time.monotonic(), 0.0)

    async def run(count: int) -> float:
        assert await pubsub.verify_push_token(token, "a", "e@example.com", url, cache) is None
        started = time.perf_counter()
        for _ in range(count):
            await pubsub.verify_push_token(token, "a", "e@example.com", url, cache)
        return (time.perf_counter() - started) / count * 1e6

    return asyncio.run(run(rounds))


def _per_call_us(call: Callable[[], object], rounds: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    now = int(time.time())
    print(f"{'mode':<18} {'1 KiB':>10} {'1 MiB':>10}   (µs per request, secrets opened)")
    for mode in get_args(SigningMode):
        if mode == "sendgrid":
            figures = _sendgrid_us(args.rounds, now)
            print(f"{mode:<18} {figures[0]:>10.1f} {figures[1]:>10.1f}   (ECDSA P-256)")
            continue
        if mode == "google-pubsub":
            cost = _pubsub_us(args.rounds, now)
            print(f"{mode:<18} {cost:>10.1f} {cost:>10.1f}   (RS256 JWT, JWKS cached)")
            continue
        line = RequestLine("POST", PUBLIC_URL) if mode in URL_READERS else None
        secret = STANDARD if mode == "standard-webhooks" else SECRET
        # Two secrets, the signing one second: the worst case of a rotation.
        check = Check(
            mode=mode,
            secrets=(b"previous-secret-xyz", secret_key(mode, secret)),
            header="X-Signature" if mode == "hmac" else None,
        )
        figures = []
        for size in (1024, 1024 * 1024):
            body = _body(mode, size)
            headers = _signed_headers(mode, body, now)
            assert verify(check, headers, body, now, line) is None, mode
            rounds = args.rounds if size == 1024 else max(20, args.rounds // 100)
            figures.append(
                _per_call_us(
                    lambda c=check, h=headers, b=body, r=line: verify(c, h, b, now, r),  # type: ignore[misc]
                    rounds,
                )
            )
        print(f"{mode:<18} {figures[0]:>10.1f} {figures[1]:>10.1f}")

    box = SecretBox("bench-webhook-secrets-key-0123456789abcdef")
    workspace = "00000000-0000-0000-0000-000000000001"
    signing = SigningSettings(
        mode="github", secrets=[box.seal(SECRET, workspace), box.seal("second-secret", workspace)]
    )
    flow = FlowWebhookSettings(
        flow_id="f", workspace_id=workspace, version=1, status="live", signing=signing
    )
    checks = SignatureChecks(box, 10_000)
    cached = _per_call_us(lambda: checks.check_for(flow, signing), args.rounds)
    opened = _per_call_us(lambda: SignatureChecks(box, 1).check_for(flow, signing), args.rounds)
    print(f"cached lookup of a flow's opened secrets: {cached:.2f} µs")
    print(f"opening two sealed secrets (once per flow version): {opened:.1f} µs")
    bearer_headers = CIMultiDict({"Authorization": "Bearer x", "Content-Type": "application/json"})
    bearer_flow = FlowWebhookSettings(flow_id="f", workspace_id=workspace, version=1, status="live")
    bearer = _per_call_us(
        lambda: bearer_flow.signing is not None and "Authorization" not in bearer_headers,
        args.rounds * 10,
    )
    print(f"bearer flow: the test that skips verification: {bearer * 1000:.0f} ns")


if __name__ == "__main__":
    main()
