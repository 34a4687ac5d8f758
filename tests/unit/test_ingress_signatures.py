"""The signature check of each verification mode (services/ingress/signatures.py):
published examples where the provider's documentation gives one, signatures computed
here with each provider's documented algorithm, and signatures made (or checked) by
the provider's own SDK where one is on the package index (`standardwebhooks`,
`stripe`)."""

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
import stripe
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.ingress.signatures import Check, precheck, secret_key, verify
from shared.secret_box import SealError, SecretBox

NOW = 1_700_000_000.0


def hex_hmac(key: bytes, message: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(key, message, getattr(hashlib, algorithm)).hexdigest()


def b64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def check(mode: str, *secrets: str, **fields: object) -> Check:
    return Check(
        mode=mode,
        secrets=tuple(secret_key(mode, secret) for secret in secrets),
        **fields,  # type: ignore[arg-type]
    )


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-"), value) for name, value in values.items())


# Published examples -------------------------------------------------------------------


def test_github_published_example() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    # ("Testing the webhook payload validation").
    github = check("github", "It's a Secret to Everybody")
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify(github, headers(X_Hub_Signature_256=signature), b"Hello, World!", NOW) is None
    assert verify(github, headers(X_Hub_Signature_256=signature), b"Hello, World?", NOW) == (
        "the X-Hub-Signature-256 does not match"
    )


SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
    b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def test_slack_published_example() -> None:
    # https://api.slack.com/authentication/verifying-requests-from-slack (the worked
    # example: signing secret, timestamp 1531420618, a slash command's body).
    slack = check("slack", "8f742231b10e8888abcd99yyyzzz85a5")
    sent = headers(
        X_Slack_Request_Timestamp="1531420618",
        X_Slack_Signature="v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
    )
    assert verify(slack, sent, SLACK_BODY, 1531420618 + 60) is None
    assert verify(slack, sent, SLACK_BODY, 1531420618 + 301) == (
        "a signature timestamp more than 300 s away from now"
    )


def test_standard_webhooks_published_example() -> None:
    # https://github.com/standard-webhooks/standard-webhooks (the libraries' shared test
    # vector, e.g. libraries/python/standardwebhooks/tests/test_webhooks.py).
    standard = check("standard-webhooks", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    sent = headers(
        webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        webhook_timestamp="1614265330",
        webhook_signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    )
    body = b'{"test": 2432232314}'
    assert verify(standard, sent, body, 1614265330) is None
    # Several signatures, space separated; other versions (v1a) are skipped.
    sent["webhook-signature"] = (
        "v1a,aGVsbG8= v1,Zm9v v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    assert verify(standard, sent, body, 1614265330) is None
    assert verify(standard, sent, body + b" ", 1614265330) == "the webhook-signature does not match"


# Computed with the documented algorithms ---------------------------------------------


def stripe_header(secret: str, body: bytes, timestamp: int) -> str:
    # https://docs.stripe.com/webhooks#verify-manually: HMAC-SHA256 of "<t>.<body>" with
    # the endpoint secret (its whsec_ text) as the key, hex in v1. Stripe publishes no
    # secret with its example header, so the signature is computed here.
    signed = hex_hmac(secret.encode(), f"{timestamp}.".encode() + body)
    # A v0 (test-mode, SHA-1 era) signature beside it is ignored.
    return f"t={timestamp},v1={signed},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07"


def test_stripe() -> None:
    secret, old = "whsec_test_current_0123456789", "whsec_test_previous_987654"
    body = b'{"id": "evt_1", "type": "charge.succeeded"}'
    stripe = check("stripe", old, secret)
    good = headers(Stripe_Signature=stripe_header(secret, body, int(NOW)))
    assert verify(stripe, good, body, NOW) is None
    assert verify(stripe, good, body + b"x", NOW) == "the Stripe-Signature does not match"
    assert verify(check("stripe", old), good, body, NOW) == "the Stripe-Signature does not match"
    stale = headers(Stripe_Signature=stripe_header(secret, body, int(NOW) - 301))
    assert verify(stripe, stale, body, NOW) == (
        "a signature timestamp more than 300 s away from now"
    )
    assert verify(check("stripe", secret, tolerance_s=600), stale, body, NOW) is None
    # Any of several v1 signatures (Stripe sends two while its secret rolls).
    wrong = hex_hmac(b"other", f"{int(NOW)}.".encode() + body)
    right = stripe_header(secret, body, int(NOW)).split(",")[1]
    both = headers(Stripe_Signature=f"t={int(NOW)},v1={wrong},{right}")
    assert verify(stripe, both, body, NOW) is None
    assert verify(stripe, headers(), body, NOW) == "no Stripe-Signature header"
    assert verify(stripe, headers(Stripe_Signature="v1=00"), body, NOW) == (
        "a missing or malformed signature timestamp"
    )


def test_github_computed_and_rotation() -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    first, second = "first-secret-1234", "second-secret-5678"
    signature = "sha256=" + hex_hmac(second.encode(), body)
    assert (
        verify(check("github", first, second), headers(X_Hub_Signature_256=signature), body, NOW)
        is None
    )
    assert verify(check("github", first), headers(X_Hub_Signature_256=signature), body, NOW) == (
        "the X-Hub-Signature-256 does not match"
    )
    assert verify(check("github", first), headers(X_Hub_Signature_256="sha1=ab"), body, NOW) == (
        "no X-Hub-Signature-256 header of the form sha256=<hex>"
    )


def test_shopify() -> None:
    # https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-2-validate-the-origin-of-your-webhook-to-ensure-its-coming-from-shopify:
    # base64 of HMAC-SHA256 of the raw body with the app's client secret.
    secret = "shpss_0123456789abcdef"
    body = b'{"id": 820982911946154508, "email": "jon@example.com"}'
    shopify = check("shopify", secret)
    good = headers(X_Shopify_Hmac_Sha256=b64_hmac(secret.encode(), body))
    assert verify(shopify, good, body, NOW) is None
    assert verify(shopify, good, body[:-1], NOW) == "the X-Shopify-Hmac-Sha256 does not match"
    assert verify(shopify, headers(X_Shopify_Hmac_Sha256="%%%"), body, NOW) == (
        "the X-Shopify-Hmac-Sha256 does not match"
    )


def test_slack_computed_missing_timestamp() -> None:
    secret = "slack-signing-secret-1"
    body = b"payload=%7B%7D"
    signature = "v0=" + hex_hmac(secret.encode(), f"v0:{int(NOW)}:".encode() + body)
    slack = check("slack", secret)
    sent = headers(X_Slack_Signature=signature, X_Slack_Request_Timestamp=str(int(NOW)))
    assert verify(slack, sent, body, NOW) is None
    del sent["X-Slack-Request-Timestamp"]
    assert verify(slack, sent, body, NOW) == "a missing or malformed signature timestamp"


def test_standard_webhooks_computed_stale() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b"\xff\xfe not UTF-8"
    timestamp = int(NOW) - 400
    signed = b64_hmac(key, f"msg_1.{timestamp}.".encode() + body)
    sent = headers(
        webhook_id="msg_1", webhook_timestamp=str(timestamp), webhook_signature=f"v1,{signed}"
    )
    assert verify(check("standard-webhooks", secret), sent, body, NOW) == (
        "a signature timestamp more than 300 s away from now"
    )
    assert verify(check("standard-webhooks", secret, tolerance_s=500), sent, body, NOW) is None


@pytest.mark.parametrize(
    ("algorithm", "encoding", "prefix"),
    [("sha1", "hex", "sha1="), ("sha256", "base64", ""), ("sha512", "hex", "")],
)
def test_generic_hmac(algorithm: str, encoding: str, prefix: str) -> None:
    secret = "generic-secret-42"
    body = b'{"a": 1}'
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()
    encoded = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    generic = check(
        "hmac", secret, header="X-Signature", algorithm=algorithm, encoding=encoding, prefix=prefix
    )
    assert verify(generic, headers(X_Signature=prefix + encoded), body, NOW) is None
    assert verify(generic, headers(X_Signature=prefix + encoded), body + b"\n", NOW) == (
        "the X-Signature signature does not match"
    )


def test_generic_hmac_with_timestamp_and_content() -> None:
    secret = "generic-secret-42"
    body = b"<xml/>"
    generic = check(
        "hmac",
        secret,
        header="X-Sig",
        timestamp_header="X-Sig-Time",
        content="v2:{timestamp}:{body}:end",
        tolerance_s=60,
    )
    signed = hex_hmac(secret.encode(), f"v2:{int(NOW)}:".encode() + body + b":end")
    sent = headers(X_Sig=signed, X_Sig_Time=str(int(NOW)))
    assert verify(generic, sent, body, NOW) is None
    assert verify(generic, sent, body, NOW + 61) == (
        "a signature timestamp more than 60 s away from now"
    )


def test_secret_box_round_trip_and_binding() -> None:
    box = SecretBox("a" * 32 + ",older-key-material-of-32-characters")
    sealed = box.seal("whsec_secret", "workspace-1")
    assert "whsec_secret" not in sealed and sealed.startswith("fhs1.")
    assert box.open(sealed, "workspace-1") == "whsec_secret"
    with pytest.raises(SealError):
        box.open(sealed, "workspace-2")  # bound to its workspace
    # A ring whose current key is new still opens what the previous key sealed.
    rotated = SecretBox("n" * 32 + "," + "a" * 32)
    assert rotated.open(sealed, "workspace-1") == "whsec_secret"
    with pytest.raises(SealError):
        SecretBox("z" * 32).open(sealed, "workspace-1")
    with pytest.raises(ValueError, match="32 characters"):
        SecretBox("short")


# Timestamps and what is refused before the body is read -------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "\u00b9\u00b2\u00b3",
        "\u0661\u0662\u0663",
        "\uff11\uff12\uff13",
        "17\u00b9",
        " ",
        "-1",
        "1e9",
    ],
)
def test_timestamps_are_ascii_digits_only(timestamp: str) -> None:
    """`str.isdigit` accepts superscripts and other scripts' digits, which `int()` then
    refused with a traceback (500): each is a malformed timestamp (401) instead."""
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    malformed = "a missing or malformed signature timestamp"
    stripe = check("stripe", "sk_test_secret")
    signed = headers(Stripe_Signature=f"t={timestamp},v1=00")
    assert verify(stripe, signed, b"{}", NOW) == malformed
    slack = check("slack", "slack-secret")
    slack_headers = headers(X_Slack_Request_Timestamp=timestamp, X_Slack_Signature="v0=00")
    assert verify(slack, slack_headers, b"{}", NOW) == malformed
    standard = check("standard-webhooks", secret)
    standard_headers = headers(
        webhook_id="msg_1", webhook_timestamp=timestamp, webhook_signature="v1,AA=="
    )
    assert verify(standard, standard_headers, b"{}", NOW) == malformed
    generic = check(
        "hmac",
        "hmac-secret",
        header="X-Sig",
        timestamp_header="X-Ts",
        content="{timestamp}.{body}",
    )
    assert verify(generic, headers(X_Sig="00", X_Ts=timestamp), b"{}", NOW) == malformed
    for mode_check, mode_headers in (
        (stripe, signed),
        (slack, slack_headers),
        (standard, standard_headers),
    ):
        assert precheck(mode_check, mode_headers, NOW) == malformed


def test_precheck_refuses_from_the_headers_alone() -> None:
    secret = "github-secret"
    github = check("github", secret)
    body = b'{"big": "body"}'
    good = headers(X_Hub_Signature_256="sha256=" + hex_hmac(secret.encode(), body))
    # A well-formed signature needs the body: only verify can tell.
    assert precheck(github, good, NOW) is None
    forged = headers(X_Hub_Signature_256="sha256=" + "00" * 32)
    assert precheck(github, forged, NOW) is None
    assert verify(github, forged, body, NOW) == "the X-Hub-Signature-256 does not match"
    # No header, the wrong form, nothing decodable: refused before any body.
    assert precheck(github, headers(), NOW) == (
        "no X-Hub-Signature-256 header of the form sha256=<hex>"
    )
    assert precheck(github, headers(X_Hub_Signature_256="sha256=zz"), NOW) == (
        "the X-Hub-Signature-256 does not match"
    )
    stripe = check("stripe", "sk_test_secret")
    stale = headers(Stripe_Signature=f"t={int(NOW) - 301},v1={'00' * 32}")
    assert precheck(stripe, stale, NOW) == "a signature timestamp more than 300 s away from now"
    assert precheck(stripe, headers(Stripe_Signature=f"t={int(NOW)}"), NOW) == (
        "the Stripe-Signature does not match"
    )


# Signed, or checked, with the providers' own SDKs -----------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"type": "invoice.paid", "amount": 4200}', "Zoë ✓".encode(), b"\xff\xfe not UTF-8"],
)
def test_standard_webhooks_signed_by_its_sdk(body: bytes) -> None:
    """`standardwebhooks.Webhook.sign`, as Svix and the other senders sign: the ingress
    verifies it, byte for byte (a body that is not UTF-8 too), and refuses it once the
    body, the id or the timestamp changed."""
    secret = "whsec_" + base64.b64encode(b"standard-sdk-key-0123456789abcd").decode()
    msg_id, timestamp = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", int(NOW)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    sent = headers(webhook_id=msg_id, webhook_timestamp=str(timestamp), webhook_signature=signature)
    standard = check("standard-webhooks", secret)
    assert verify(standard, sent, body, NOW) is None
    mismatch = "the webhook-signature does not match"
    assert verify(standard, sent, body + b" ", NOW) == mismatch
    assert verify(standard, {**sent, "webhook-id": "msg_other"}, body, NOW) == mismatch
    later = {**sent, "webhook-timestamp": str(timestamp + 1)}
    assert verify(standard, later, body, NOW) == mismatch
    # The SDK signs with the key the secret's base64 holds, as the ingress does.
    other = "whsec_" + base64.b64encode(b"another-sdk-key-0123456789abcde").decode()
    assert verify(check("standard-webhooks", other), sent, body, NOW) == mismatch


def test_standard_webhooks_sdk_and_the_ingress_agree() -> None:
    """What the SDK's own verifier accepts and refuses, the ingress does too (signed
    now: the SDK checks the timestamp against the clock)."""
    secret = "whsec_" + base64.b64encode(b"standard-sdk-key-0123456789abcd").decode()
    body, now = b'{"n": 1}', datetime.now(UTC)
    sdk = Webhook(secret)
    sent = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": "v1,Zm9v " + sdk.sign("msg_1", now, body),  # any of several
    }
    assert sdk.verify(body, sent) == {"n": 1}
    assert (
        verify(check("standard-webhooks", secret), headers(**sent), body, now.timestamp()) is None
    )
    with pytest.raises(WebhookVerificationError):
        sdk.verify(body + b" ", sent)
    assert verify(
        check("standard-webhooks", secret), headers(**sent), body + b" ", now.timestamp()
    ) == ("the webhook-signature does not match")


def test_stripe_header_from_its_sdk() -> None:
    """`stripe.WebhookSignature.generate_signature_header` (the SDK's helper for signing
    test payloads, as Stripe signs events): the ingress verifies it, and the SDK's own
    verifier (`verify_header`, what `construct_event` calls) accepts it too."""
    secret = "whsec_test_sdk_0123456789abcdef"
    body = '{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "charge.succeeded"}'
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=int(NOW))
    assert header.startswith(f"t={int(NOW)},v1=")
    sent = headers(Stripe_Signature=header)
    assert verify(check("stripe", secret), sent, body.encode(), NOW) is None
    assert stripe.WebhookSignature.verify_header(body, header, secret) is True
    # Both refuse a changed body or another secret.
    changed = body.replace("succeeded", "refunded")
    assert verify(check("stripe", secret), sent, changed.encode(), NOW) == (
        "the Stripe-Signature does not match"
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(changed, header, secret)
    assert verify(check("stripe", "whsec_other"), sent, body.encode(), NOW) == (
        "the Stripe-Signature does not match"
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, header, "whsec_other")


def test_stripe_sdk_accepts_the_header_as_stripe_sends_it() -> None:
    """A header as Stripe sends it (documented form: `t`, the `v1` signature, a `v0`
    beside it; two `v1` while a secret rolls), signed here: the SDK's `construct_event`
    accepts it and reads the event, and the ingress agrees."""
    secret, rolled = "whsec_test_current_0123456789", "whsec_test_previous_987654"
    body = b'{"id": "evt_1", "object": "event", "type": "charge.succeeded", "data": {}}'
    timestamp = int(datetime.now(UTC).timestamp())
    header = stripe_header(secret, body, timestamp)
    old_v1 = hex_hmac(rolled.encode(), f"{timestamp}.".encode() + body)
    header = header.replace(",v0=", f",v1={old_v1},v0=")
    event = stripe.Webhook.construct_event(body, header, secret)
    assert (event["id"], event["type"]) == ("evt_1", "charge.succeeded")
    assert stripe.WebhookSignature.verify_header(body, header, rolled, tolerance=300) is True
    sent = headers(Stripe_Signature=header)
    assert verify(check("stripe", secret), sent, body, float(timestamp)) is None
    assert verify(check("stripe", rolled), sent, body, float(timestamp)) is None
    # Stale for both past the tolerance (Stripe's default: 300 s, like ours).
    stale = stripe_header(secret, body, timestamp - 310)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(body, stale, secret)
    assert verify(check("stripe", secret), headers(Stripe_Signature=stale), body, timestamp) == (
        "a signature timestamp more than 300 s away from now"
    )
