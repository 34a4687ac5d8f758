"""What a signature check costs the ingress per request, for each verification mode and
for 1 KiB and 1 MiB bodies, in-process (no HTTP, no broker): the pure check of
`services/ingress/signatures.py` with the flow's secrets already opened (the usual
case: they are opened once per flow version), the cached lookup in front of it, and
the one-off opening of two sealed secrets. The bearer path's added cost is the test
that sends it past all of this.

    .venv/bin/python -m bench.signatures [--rounds N]
"""

import argparse
import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import get_args

from multidict import CIMultiDict

from services.ingress.signatures import Check, secret_key, verify
from services.ingress.signing import SignatureChecks
from shared.schemas.access import FlowWebhookSettings, SigningSettings
from shared.schemas.vocabulary import SigningMode
from shared.secret_box import SecretBox

SECRET = "bench-secret-0123456789"
STANDARD = "whsec_" + base64.b64encode(b"bench-standard-key-0123456789ab").decode()


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
    return CIMultiDict({"X-Signature": mac(body).hex()})


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
        secret = STANDARD if mode == "standard-webhooks" else SECRET
        # Two secrets, the signing one second: the worst case of a rotation.
        check = Check(
            mode=mode,
            secrets=(b"previous-secret-xyz", secret_key(mode, secret)),
            header="X-Signature" if mode == "hmac" else None,
        )
        figures = []
        for size in (1024, 1024 * 1024):
            body = os.urandom(size)
            headers = _signed_headers(mode, body, now)
            assert verify(check, headers, body, now) is None, mode
            rounds = args.rounds if size == 1024 else max(20, args.rounds // 100)
            figures.append(
                _per_call_us(
                    lambda c=check, h=headers, b=body: verify(c, h, b, now),  # type: ignore[misc]
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
