"""What a signature check costs the ingress per request, for each verification mode and
for 1 KiB and 1 MiB bodies, in-process (no HTTP, no broker): the pure check of
`services/ingress/signatures.py` with the flow's secrets already opened (the usual
case: they are opened once per flow version), the cached lookup in front of it, and
the one-off opening of two sealed secrets. `sendgrid` is measured through
`public_key_signatures.py` (an ECDSA P-256 verification), `google-pubsub` through
`pubsub.py` (an RS256 JWT check with its JWKS cached: the token signs no body, so both
sizes cost the same), `sns` through `sns.py` (the message read from its JSON body and
its RSA signature checked, versions 1 and 2, the certificate cached; the body just
under sns.py's 1 MiB cap, though SNS itself sends at most 256 KiB). Beside them, the
public-key verifications these modes rest on, measured on `cryptography`'s primitives
directly (Ed25519: Discord; ECDSA P-256: SendGrid; RSA-SHA256 and RSA-SHA1: AWS SNS's
signature versions 2 and 1, Google Pub/Sub's RS256 token), so the figures exist
whatever reads the headers around them,
and what loading each kind of key costs (once per key: it is cached).

Every figure is also a ratio to the bearer baseline of the same run: what a request
that sends `Authorization: Bearer` costs in place of a signature check (the header read
and the token's SHA-256, which is all the bearer path does before the cached access
lookup that both paths share). Each figure is measured for at most `--seconds`
and `--rounds` calls, so a run takes a few seconds (30 at most by default).

    .venv/bin/python -m bench.signatures [--seconds 0.5] [--rounds 2000]
"""

import argparse
import asyncio
import base64
import datetime
import functools
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import get_args

import jwt
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from harness import sns as aws
from services.ingress import pubsub
from services.ingress.public_key_signatures import verify_sendgrid
from services.ingress.signatures import URL_READERS, Check, RequestLine, secret_key, verify
from services.ingress.signing import SignatureChecks
from services.ingress.sns import DEFAULT_CERT_URL_PATTERN, SnsCertificates, read_message
from services.ingress.sns import verify_signature as verify_sns
from shared.bearer import bearer_from_header, hash_token
from shared.schemas.access import FlowWebhookSettings, SigningSettings
from shared.schemas.vocabulary import SigningMode
from shared.secret_box import SecretBox

SECRET = "bench-secret-0123456789"
STANDARD = "whsec_" + base64.b64encode(b"bench-standard-key-0123456789ab").decode()
SIZES = {"1 KiB": 1024, "1 MiB": 1024 * 1024}
# A flow webhook token's length (`fhw_` + base64url of HMAC-SHA512).
BEARER = "Bearer fhw_" + "x" * 86
PUBLIC_URL = "https://hooks.example.com/v1/flow-webhook/00000000-0000-0000-0000-000000000001"
# The header names the flow chooses in the modes that have one.
HEADERS: dict[str, str] = {"hmac": "X-Signature", "okta": "X-Okta-Secret"}


@functools.cache
def _discord_key() -> ed25519.Ed25519PrivateKey:
    """The application's key pair (Discord signs; the flow holds the public key)."""
    return ed25519.Ed25519PrivateKey.generate()


def _body(mode: str, size: int) -> bytes:
    """Random bytes; form data for Twilio (it signs the form's parameters); for
    Microsoft Graph, a notification carrying the subscription's clientState."""
    if mode == "twilio":
        return b"Body=" + base64.urlsafe_b64encode(os.urandom(size))[: size - 5]
    if mode == "microsoft-graph":
        notification = {"clientState": SECRET, "resource": ""}
        padding_chars = size - len(orjson.dumps({"value": [notification]}))
        notification["resource"] = base64.urlsafe_b64encode(os.urandom(size)).decode()[
            :padding_chars
        ]
        return orjson.dumps({"value": [notification]})
    return os.urandom(size)


def _check(mode: SigningMode) -> Check:
    """The flow's check: two secrets, the signing one second (a rotation's worst case)."""
    if mode == "discord":
        public = _discord_key().public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return Check(mode=mode, secrets=(), public_key=raw)
    secret = STANDARD if mode == "standard-webhooks" else SECRET
    return Check(
        mode=mode,
        secrets=(b"previous-secret-xyz", secret_key(mode, secret)),
        header=HEADERS.get(mode),
    )


def _signed_headers(mode: str, body: bytes, now: int) -> CIMultiDict[str] | None:
    """The headers each provider sends; None for a mode this bench cannot sign yet."""
    key = SECRET.encode()

    def mac(message: bytes, algorithm: str = "sha256") -> bytes:
        return hmac.new(key, message, getattr(hashlib, algorithm)).digest()

    if mode == "stripe":
        return CIMultiDict(
            {"Stripe-Signature": f"t={now},v1={mac(f'{now}.'.encode() + body).hex()}"}
        )
    if mode in ("github", "meta"):
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
    if mode == "hmac":
        return CIMultiDict({"X-Signature": mac(body).hex()})
    if mode == "zoom":
        signature = mac(f"v0:{now}:".encode() + body).hex()
        return CIMultiDict(
            {"x-zm-request-timestamp": str(now), "x-zm-signature": f"v0={signature}"}
        )
    if mode == "microsoft-graph":
        return CIMultiDict()  # the clientState is in the body
    if mode == "twitter":
        signature = base64.b64encode(mac(body)).decode()
        return CIMultiDict({"x-twitter-webhooks-signature": f"sha256={signature}"})
    if mode == "dropbox":
        return CIMultiDict({"X-Dropbox-Signature": mac(body).hex()})
    if mode == "okta":
        return CIMultiDict({"X-Okta-Secret": SECRET})
    if mode == "twitch":
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        timestamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        signature = mac(f"m{timestamp}".encode() + body).hex()
        return CIMultiDict(
            {
                "Twitch-Eventsub-Message-Id": "m",
                "Twitch-Eventsub-Message-Timestamp": timestamp,
                "Twitch-Eventsub-Message-Signature": f"sha256={signature}",
            }
        )
    if mode == "discord":
        signature = _discord_key().sign(str(now).encode() + body).hex()
        return CIMultiDict({"X-Signature-Ed25519": signature, "X-Signature-Timestamp": str(now)})
    if mode == "paddle":
        signature = mac(f"{now}:".encode() + body).hex()
        return CIMultiDict({"Paddle-Signature": f"ts={now};h1={signature}"})
    if mode == "twilio":
        params = "Body" + body.decode().removeprefix("Body=")
        digest = mac((PUBLIC_URL + params).encode(), "sha1")
        return CIMultiDict({"X-Twilio-Signature": base64.b64encode(digest).decode()})
    if mode == "square":
        digest = mac(PUBLIC_URL.encode() + body)
        return CIMultiDict({"x-square-hmacsha256-signature": base64.b64encode(digest).decode()})
    if mode == "asana":
        return CIMultiDict({"X-Hook-Signature": mac(body).hex()})
    if mode == "hubspot":
        ms = str(now * 1000)
        digest = mac(f"POST{PUBLIC_URL}".encode() + body + ms.encode())
        return CIMultiDict(
            {
                "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
                "X-HubSpot-Request-Timestamp": ms,
            }
        )
    return None


def _per_call_us(call: Callable[[], object], rounds: int, seconds: float) -> float:
    """µs per call: `rounds` calls or `seconds`, whichever ends first (at least 3)."""
    call()
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while calls < rounds and (calls < 3 or time.perf_counter() < deadline):
        call()
        calls += 1
    return (time.perf_counter() - started) / calls * 1e6


def _rounds(args: argparse.Namespace, size: int) -> int:
    rounds = int(args.rounds)
    return rounds if size == 1024 else max(50, rounds // 40)


def _row(name: str, figures: list[float], baseline_us: float) -> str:
    cells = "".join(f" {us:>10,.1f} {us / baseline_us:>9,.0f}x" for us in figures)
    return f"{name:<34}{cells}"


def _header() -> str:
    return f"{'':<34}" + "".join(f" {f'{label}, µs':>10} {'x bearer':>10}" for label in SIZES)


def _sendgrid_us(args: argparse.Namespace, now: int) -> list[float]:
    """`verify_sendgrid` (public_key_signatures.py), the flow's P-256 key loaded."""
    private = ec.generate_private_key(ec.SECP256R1())
    key = private.public_key()
    figures = []
    for size in SIZES.values():
        body = os.urandom(size)
        signature = private.sign(str(now).encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = CIMultiDict(
            {
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": str(now),
            }
        )
        assert verify_sendgrid(key, headers, body, 300, now) is None
        figures.append(
            _per_call_us(
                lambda h=headers, b=body: verify_sendgrid(key, h, b, 300, now),  # type: ignore[misc]
                _rounds(args, size),
                args.seconds,
            )
        )
    return figures


def _pubsub_us(args: argparse.Namespace, now: int) -> float:
    """One push token's check (pubsub.py), its JWKS already cached (a 2048-bit RSA key,
    as Google's): `rounds` checks or `seconds`, whichever ends first (at least 3)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"aud": "a", "email": "e@example.com", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k"})
    url = "https://keys.example.com/certs"
    cache = pubsub.JwksCache(None, max_entries=1, ttl_s=3600, timeout_s=5, max_bytes=65536)  # type: ignore[arg-type]
    cache.fetched.keep(url, pubsub._Keys({"k": private.public_key()}, time.monotonic(), 0.0))

    async def run() -> float:
        assert await pubsub.verify_push_token(token, "a", "e@example.com", url, cache) is None
        calls = 0
        started = time.perf_counter()
        deadline = started + args.seconds
        while calls < args.rounds and (calls < 3 or time.perf_counter() < deadline):
            await pubsub.verify_push_token(token, "a", "e@example.com", url, cache)
            calls += 1
        return (time.perf_counter() - started) / calls * 1e6

    return asyncio.run(run())


def _sns_us(args: argparse.Namespace, version: str) -> list[float]:
    """`read_message` and the signature's check (sns.py), as the verify stage runs them
    with the certificate's key cached (a 2048-bit RSA key, as AWS's)."""
    signer = aws.SnsSigner()
    cert_url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-bench.pem"
    certificates = SnsCertificates(None, DEFAULT_CERT_URL_PATTERN, 1, 3600, 5, 65536)  # type: ignore[arg-type]
    key = signer.key.public_key()
    figures = []
    for size in SIZES.values():
        envelope = aws.notification(cert_url, "")
        overhead = len(orjson.dumps(signer.sign(envelope, version)))
        text = base64.b64encode(os.urandom(size)).decode()[: size - overhead]
        message = signer.sign({**envelope, "Message": text}, version)
        body = orjson.dumps(message)
        headers = CIMultiDict(aws.headers(message))

        def call(b: bytes = body, h: CIMultiDict[str] = headers) -> None:
            read = read_message(b, h, None, certificates, 300, time.time())
            assert not isinstance(read, str), read
            assert verify_sns(key, read) is None

        figures.append(_per_call_us(call, _rounds(args, size), args.seconds))
    return figures


def _modes(args: argparse.Namespace, now: int, baseline_us: float) -> None:
    print("Each mode: services/ingress/signatures.py `verify`, two secrets (the signing one")
    print("second: a rotation's worst case), secrets opened; URL modes with a public URL;")
    print("sendgrid: public_key_signatures.py, google-pubsub: pubsub.py (JWKS cached),")
    print("sns: sns.py (the JSON message read, RSA checked, certificate cached)")
    print(_header())
    for mode in get_args(SigningMode):
        if mode == "sendgrid":
            print(_row("sendgrid (ECDSA P-256)", _sendgrid_us(args, now), baseline_us))
            continue
        if mode == "google-pubsub":
            cost = _pubsub_us(args, now)  # the token signs no body: one figure for both
            print(_row("google-pubsub (RS256 JWT)", [cost] * len(SIZES), baseline_us))
            continue
        if mode == "sns":
            print(_row("sns v1 (SHA1withRSA)", _sns_us(args, "1"), baseline_us))
            print(_row("sns v2 (SHA256withRSA)", _sns_us(args, "2"), baseline_us))
            continue
        line = RequestLine("POST", PUBLIC_URL) if mode in URL_READERS else None
        check = _check(mode)
        figures = []
        for size in SIZES.values():
            body = _body(mode, size)
            headers = _signed_headers(mode, body, now)
            if headers is None:
                break
            assert verify(check, headers, body, now, line) is None, mode
            figures.append(
                _per_call_us(
                    lambda c=check, h=headers, b=body, r=line: verify(c, h, b, now, r),  # type: ignore[misc]
                    _rounds(args, size),
                    args.seconds,
                )
            )
        if figures:
            print(_row(mode, figures, baseline_us))
        else:
            # A mode added since: its check is an HMAC like these, or one of the
            # primitives below; sign it in `_signed_headers` to measure it here.
            print(f"{mode:<34} (not signed by this bench yet)")


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
    """A self-signed certificate in PEM, as SNS's `SigningCertURL` serves one."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.bench.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _public_key_primitives(args: argparse.Namespace, now: int, baseline_us: float) -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ecdsa = ec.ECDSA(hashes.SHA256())
    pkcs1 = padding.PKCS1v15()

    def ed25519_verify(message: bytes) -> Callable[[], None]:
        public, signature = ed_key.public_key(), ed_key.sign(message)
        return lambda: public.verify(signature, message)

    def ecdsa_verify(message: bytes) -> Callable[[], None]:
        public, signature = ec_key.public_key(), ec_key.sign(message, ecdsa)
        return lambda: public.verify(signature, message, ecdsa)

    def rsa_verify(algorithm: hashes.HashAlgorithm) -> Callable[[bytes], Callable[[], None]]:
        def prepared(message: bytes) -> Callable[[], None]:
            public, signature = rsa_key.public_key(), rsa_key.sign(message, pkcs1, algorithm)
            return lambda: public.verify(signature, message, pkcs1, algorithm)

        return prepared

    primitives: list[tuple[str, Callable[[bytes], Callable[[], None]]]] = [
        ("Ed25519 (discord)", ed25519_verify),
        ("ECDSA P-256 SHA-256 (sendgrid)", ecdsa_verify),
        ("RSA-2048 SHA-256 (sns v2, RS256)", rsa_verify(hashes.SHA256())),
        # SNS's signature version 1 is SHA1withRSA: measured because SNS sends it.
        ("RSA-2048 SHA-1 (sns v1)", rsa_verify(hashes.SHA1())),  # noqa: S303
    ]
    print()
    print("Public-key verification (cryptography's primitives, one signature over")
    print("<timestamp><body>; the header reading around them is the modes' above)")
    print(_header())
    for name, prepare in primitives:
        figures = []
        for size in SIZES.values():
            call = prepare(str(now).encode() + os.urandom(size))
            call()  # a valid signature: verify raises InvalidSignature otherwise
            figures.append(_per_call_us(call, _rounds(args, size), args.seconds))
        print(_row(name, figures, baseline_us))
    forged = ed_key.sign(b"another message")

    def refused() -> None:
        try:
            ed_key.public_key().verify(forged, b"x" * 1024)
        except InvalidSignature:
            return
        raise AssertionError("a forged Ed25519 signature verified")

    forged_us = _per_call_us(refused, args.rounds, args.seconds)
    print(f"{'Ed25519, a forged signature, 1 KiB':<34} {forged_us:>10,.1f}")

    # A Google Pub/Sub push token's signed part (header.payload) is small whatever the
    # body: the 1 KiB figure of RSA-SHA256 above is its cost, per request.
    ed_raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    ec_der = ec_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = _certificate(rsa_key)
    ed_hex, ec_base64 = ed_raw.hex(), base64.b64encode(ec_der)

    def load_ed25519() -> object:
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(ed_hex))

    def load_p256() -> object:
        return serialization.load_der_public_key(base64.b64decode(ec_base64))

    def load_certificate() -> object:
        return x509.load_pem_x509_certificate(pem).public_key()

    loads: list[tuple[str, Callable[[], object]]] = [
        ("Ed25519 public key from hex", load_ed25519),
        ("P-256 public key from base64 DER", load_p256),
        ("RSA-2048 certificate from PEM", load_certificate),
    ]
    print()
    print("Loading a key (once per key and flow version: cached like opened secrets)")
    for name, load in loads:
        print(f"{name:<34} {_per_call_us(load, args.rounds, args.seconds):>10,.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="calls per figure, at most")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per figure, at most")
    args = parser.parse_args()
    now = int(time.time())

    bearer_headers = CIMultiDict({"Authorization": BEARER, "Content-Type": "application/json"})
    baseline_us = _per_call_us(
        lambda: hash_token(bearer_from_header(bearer_headers["Authorization"])),
        args.rounds * 10,
        args.seconds,
    )
    print(f"bearer baseline: the header read and the token's SHA-256: {baseline_us:.2f} µs")
    print()
    _modes(args, now, baseline_us)
    _public_key_primitives(args, now, baseline_us)

    box = SecretBox("bench-webhook-secrets-key-0123456789abcdef")
    workspace = "00000000-0000-0000-0000-000000000001"
    signing = SigningSettings(
        mode="github", secrets=[box.seal(SECRET, workspace), box.seal("second-secret", workspace)]
    )
    flow = FlowWebhookSettings(
        flow_id="f", workspace_id=workspace, version=1, status="live", signing=signing
    )
    checks = SignatureChecks(box, 10_000)
    cached = _per_call_us(lambda: checks.check_for(flow, signing), args.rounds, args.seconds)
    opened = _per_call_us(
        lambda: SignatureChecks(box, 1).check_for(flow, signing), args.rounds, args.seconds
    )
    print()
    print(f"cached lookup of a flow's opened secrets: {cached:.2f} µs")
    print(f"opening two sealed secrets (once per flow version): {opened:.1f} µs")
    bearer_flow = FlowWebhookSettings(flow_id="f", workspace_id=workspace, version=1, status="live")
    bearer = _per_call_us(
        lambda: bearer_flow.signing is not None and "Authorization" not in bearer_headers,
        args.rounds * 10,
        args.seconds,
    )
    print(f"bearer flow: the test that skips verification: {bearer * 1000:.0f} ns")


if __name__ == "__main__":
    main()
