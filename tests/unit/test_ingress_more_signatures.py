"""The "More verification modes" of the contract at the ingress: twilio, square and
hubspot (signed over the public URL), paddle (services/ingress/signatures.py), sendgrid
(public_key_signatures.py), the public-URL rule of signing.py, and the Pub/Sub push
envelope's decoding (normalise.py). Requests are signed with the provider's own SDK
where it signs (twilio's RequestValidator, hubspot-api-client's Signature), and ours
are checked against the SDK's verifier where it only verifies (squareup, sendgrid)."""

import base64
import hashlib
import hmac
import time
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hubspot.utils.signature import Signature
from multidict import CIMultiDict
from paddle_billing.Notifications import PaddleSignature, Secret
from sendgrid.helpers.eventwebhook import EventWebhook
from square.utils.webhooks_helper import verify_signature as square_verify
from twilio.request_validator import RequestValidator

from services.ingress.normalise import BodyLimits, decode_push_data, parse_push_input
from services.ingress.public_key_signatures import precheck_sendgrid, verify_sendgrid
from services.ingress.signatures import Check, RequestLine, precheck, secret_key, verify
from services.ingress.signing import SignatureChecks
from shared.errors import BadRequest, Unauthorized, Unavailable
from shared.public_keys import load_ecdsa_public_key
from shared.schemas.access import FlowWebhookSettings, SigningSettings

NOW = time.time()
URL = "https://hooks.example.com/v1/flow-webhook/f1?source=crm"


def check(mode: str, *secrets: str, **fields: Any) -> Check:
    return Check(
        mode=cast(Any, mode), secrets=tuple(secret_key(mode, s) for s in secrets), **fields
    )


def headers(values: dict[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(values)


# --- twilio ----------------------------------------------------------------------------

TWILIO_TOKEN = "12345-twilio-auth-token"
TWILIO_FORM = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234"}
TWILIO_BODY = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234"


def test_twilio_form_signed_by_its_sdk() -> None:
    twilio = check("twilio", TWILIO_TOKEN)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(URL, TWILIO_FORM)
    line = RequestLine("POST", URL)
    signed = headers({"X-Twilio-Signature": signature})
    assert precheck(twilio, signed, NOW, line) is None
    assert verify(twilio, signed, TWILIO_BODY, NOW, line) is None
    # Parameters in another order are the same parameters.
    reordered = b"Digits=1234&Caller=%2B12349013030&CallSid=CA1234567890ABCDE"
    assert verify(twilio, signed, reordered, NOW, line) is None
    mismatch = "the X-Twilio-Signature does not match"
    assert verify(twilio, signed, TWILIO_BODY + b"&Extra=1", NOW, line) == mismatch
    other_url = RequestLine("POST", URL.replace("crm", "erp"))
    assert verify(twilio, signed, TWILIO_BODY, NOW, other_url) == mismatch
    wrong = RequestValidator("another-auth-token").compute_signature(URL, TWILIO_FORM)
    assert verify(twilio, headers({"X-Twilio-Signature": wrong}), TWILIO_BODY, NOW, line) == (
        mismatch
    )
    assert precheck(twilio, headers({}), NOW, line) == "no X-Twilio-Signature header"
    assert precheck(twilio, headers({"X-Twilio-Signature": "%%%"}), NOW, line) == mismatch


def test_twilio_signed_with_the_default_port() -> None:
    # Twilio's own validator accepts the URL with and without the scheme's port.
    twilio = check("twilio", TWILIO_TOKEN)
    ported = URL.replace("example.com/", "example.com:443/")
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(ported, TWILIO_FORM)
    signed = headers({"X-Twilio-Signature": signature})
    assert verify(twilio, signed, TWILIO_BODY, NOW, RequestLine("POST", URL)) is None


def test_twilio_json_body_with_body_sha256() -> None:
    twilio = check("twilio", TWILIO_TOKEN)
    validator = RequestValidator(TWILIO_TOKEN)
    body = '{"event": "message.sent", "sid": "SM1"}'
    url = f"{URL}&bodySHA256={validator.compute_hash(body)}"
    signature = validator.compute_signature(url, {})
    assert validator.validate(url, body, signature)  # the SDK's own view
    signed = headers({"X-Twilio-Signature": signature})
    line = RequestLine("POST", url)
    assert verify(twilio, signed, body.encode(), NOW, line) is None
    assert verify(twilio, signed, body.encode() + b" ", NOW, line) == (
        "the body's SHA-256 is not the URL's bodySHA256"
    )


# --- square ----------------------------------------------------------------------------

SQUARE_KEY = "square-signature-key-0123"


def square_signature(key: str, url: str, body: bytes) -> str:
    """Square's documented algorithm: base64 HMAC-SHA256 of the URL + the body."""
    digest = hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_square_agrees_with_its_sdk() -> None:
    square = check("square", SQUARE_KEY)
    body = b'{"merchant_id": "6SSW7HV8K2ST5", "type": "payment.created"}'
    signature = square_signature(SQUARE_KEY, URL, body)
    assert square_verify(
        request_body=body.decode(),
        signature_header=signature,
        signature_key=SQUARE_KEY,
        notification_url=URL,
    )
    signed = headers({"x-square-hmacsha256-signature": signature})
    line = RequestLine("POST", URL)
    assert verify(square, signed, body, NOW, line) is None
    mismatch = "the x-square-hmacsha256-signature does not match"
    assert verify(square, signed, body, NOW, RequestLine("POST", URL + "&x=1")) == mismatch
    assert verify(square, signed, body[:-1], NOW, line) == mismatch
    assert precheck(square, headers({}), NOW, line) == "no x-square-hmacsha256-signature header"


# --- hubspot ---------------------------------------------------------------------------

HUBSPOT_SECRET = "hubspot-client-secret-0123"


def hubspot_headers(secret: str, method: str, url: str, body: bytes, ms: int) -> dict[str, str]:
    signature = Signature.get_signature(
        secret, body.decode(), "v3", http_uri=url, http_method=method, timestamp=str(ms)
    )
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": str(ms)}


def test_hubspot_v3_signed_by_its_sdk() -> None:
    hubspot = check("hubspot", HUBSPOT_SECRET)
    body = b'[{"eventId": 1, "subscriptionType": "contact.creation"}]'
    ms = int(NOW * 1000)
    signed = headers(hubspot_headers(HUBSPOT_SECRET, "POST", URL, body, ms))
    line = RequestLine("POST", URL)
    assert precheck(hubspot, signed, NOW, line) is None
    assert verify(hubspot, signed, body, NOW, line) is None
    mismatch = "the X-HubSpot-Signature-v3 does not match"
    assert verify(hubspot, signed, body, NOW, RequestLine("PUT", URL)) == mismatch
    assert verify(hubspot, signed, body + b" ", NOW, line) == mismatch
    stale = headers(hubspot_headers(HUBSPOT_SECRET, "POST", URL, body, ms - 301_000))
    assert precheck(hubspot, stale, NOW, line) == (
        "a signature timestamp more than 300 s away from now"
    )
    seconds = headers(hubspot_headers(HUBSPOT_SECRET, "POST", URL, body, int(NOW)))
    assert precheck(hubspot, seconds, NOW, line) == (
        "a signature timestamp more than 300 s away from now"
    )
    for bad in ("", "12.5", "abc"):
        malformed = headers({"X-HubSpot-Request-Timestamp": bad, "X-HubSpot-Signature-v3": "x"})
        assert precheck(hubspot, malformed, NOW, line) == (
            "a missing or malformed X-HubSpot-Request-Timestamp (milliseconds)"
        )


def test_hubspot_signs_the_url_with_some_characters_decoded() -> None:
    # HubSpot's v3 documentation: %3A, %2F, %3F, %40, ... are decoded in the signed URL.
    hubspot = check("hubspot", HUBSPOT_SECRET)
    sent = URL + "&next=https%3A%2F%2Fapp.example.com"
    signed_url = URL + "&next=https://app.example.com"
    ms = int(NOW * 1000)
    signed = headers(hubspot_headers(HUBSPOT_SECRET, "POST", signed_url, b"[]", ms))
    assert verify(hubspot, signed, b"[]", NOW, RequestLine("POST", sent)) is None


# --- paddle ----------------------------------------------------------------------------


def paddle_header(secret: str, body: bytes, ts: int) -> str:
    """Paddle's documented algorithm: `ts=<t>;h1=<hex HMAC-SHA256 of "<t>:<body>">`."""
    h1 = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return f"ts={ts};h1={h1}"


def test_paddle() -> None:
    secret = "pdl_ntfset_01h8secret"
    paddle = check("paddle", secret)
    body = b'{"event_id": "evt_01h8", "event_type": "transaction.completed"}'
    signed = headers({"Paddle-Signature": paddle_header(secret, body, int(NOW))})
    assert verify(paddle, signed, body, NOW) is None
    assert verify(paddle, signed, body + b" ", NOW) == "the Paddle-Signature does not match"
    # Several h1 (Paddle rotating the secret): any one matching is enough.
    other = paddle_header("pdl_other_secret", body, int(NOW)).split(";")[1]
    rotating = headers({"Paddle-Signature": f"{paddle_header(secret, body, int(NOW))};{other}"})
    assert verify(paddle, rotating, body, NOW) is None
    stale = headers({"Paddle-Signature": paddle_header(secret, body, int(NOW) - 301)})
    assert precheck(paddle, stale, NOW) == "a signature timestamp more than 300 s away from now"
    assert precheck(paddle, headers({}), NOW) == "no Paddle-Signature header"
    assert precheck(paddle, headers({"Paddle-Signature": "h1=00"}), NOW) == (
        "a missing or malformed signature timestamp"
    )


def test_paddle_headers_are_judged_as_paddles_own_sdk_judges_them() -> None:
    """paddle-python-sdk's `PaddleSignature.verify` (its webhook Verifier's check) and ours
    agree: on the header as we sign it, on a changed body, on another secret."""
    secret = "pdl_ntfset_01h8secret"
    body = b'{"event_id": "evt_01h8", "event_type": "transaction.completed"}'
    cases = [(body, secret, True), (body + b" ", secret, False), (body, "pdl_other", False)]
    for signed_body, key, holds in cases:
        header = paddle_header(key, signed_body, int(NOW))
        assert PaddleSignature().verify(header, body.decode(), Secret(secret)) is holds
        ours = verify(check("paddle", secret), headers({"Paddle-Signature": header}), body, NOW)
        assert (ours is None) is holds


# --- sendgrid --------------------------------------------------------------------------


def sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key pair, the public half as SendGrid shows it (base64 DER)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode()


def sendgrid_headers(private: ec.EllipticCurvePrivateKey, body: bytes, ts: int) -> dict[str, str]:
    signature = private.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(ts),
    }


def test_sendgrid_agrees_with_its_sdk() -> None:
    private, public = sendgrid_key()
    key = load_ecdsa_public_key(public)
    body = b'[{"email": "a@example.com", "event": "delivered"}]'
    signed = sendgrid_headers(private, body, int(NOW))
    assert EventWebhook(public).verify_signature(
        body.decode(),
        signed["X-Twilio-Email-Event-Webhook-Signature"],
        signed["X-Twilio-Email-Event-Webhook-Timestamp"],
    )
    assert precheck_sendgrid(headers(signed), 300, NOW) is None
    assert verify_sendgrid(key, headers(signed), body, 300, NOW) is None
    mismatch = "the X-Twilio-Email-Event-Webhook-Signature does not match"
    assert verify_sendgrid(key, headers(signed), body + b" ", 300, NOW) == mismatch
    _, other_public = sendgrid_key()
    other = load_ecdsa_public_key(other_public)
    assert verify_sendgrid(other, headers(signed), body, 300, NOW) == mismatch
    stale = sendgrid_headers(private, body, int(NOW) - 301)
    assert verify_sendgrid(key, headers(stale), body, 300, NOW) == (
        "a signature timestamp more than 300 s away from now"
    )
    # Malformed signatures, refused in bounded time before any check.
    ts = signed["X-Twilio-Email-Event-Webhook-Timestamp"]
    for value, refusal in (
        ("not base64!", "the X-Twilio-Email-Event-Webhook-Signature is not base64"),
        (
            "A" * 10_000,
            "the X-Twilio-Email-Event-Webhook-Signature is longer than 256 characters",
        ),
    ):
        bad = headers(
            {
                "X-Twilio-Email-Event-Webhook-Signature": value,
                "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            }
        )
        assert precheck_sendgrid(bad, 300, NOW) == refusal
    garbage = headers(
        {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"\x30\x02").decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }
    )
    assert verify_sendgrid(key, garbage, body, 300, NOW) == mismatch
    assert precheck_sendgrid(headers({}), 300, NOW) == "a missing or malformed signature timestamp"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "the public key is not base64 (SendGrid shows it as base64 DER)"),
        (base64.b64encode(b"not DER").decode(), "the public key is not a DER SubjectPublicKeyInfo"),
        ("A" * 2000, "a public key has at most 1024 characters"),
    ],
)
def test_public_keys_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_ecdsa_public_key(text)
    assert str(caught.value) == message


def test_public_key_of_another_curve_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match=r"^the public key is not an ECDSA P-256 key$"):
        load_ecdsa_public_key(base64.b64encode(der).decode())


# --- the ingress's side: the public URL ------------------------------------------------


def flow(mode: str, **signing: Any) -> FlowWebhookSettings:
    return FlowWebhookSettings(
        flow_id="f1",
        workspace_id="w1",
        version=1,
        status="live",
        signing=SigningSettings(mode=cast(Any, mode), secrets=[], **signing),
    )


async def test_url_modes_without_a_public_url_are_answered_503_naming_the_setting() -> None:
    checks = SignatureChecks(None, 10)
    with pytest.raises(Unavailable) as caught:
        await checks.precheck(flow("square"), headers({}), RequestLine("POST", "/v1/x"))
    assert caught.value.message == (
        "this ingress cannot check square signatures: they sign the URL the sender called,"
        " and FLOWHOOKS_INGRESS_PUBLIC_URL is not set"
    )


async def test_the_public_url_is_the_setting_and_the_path_and_query_as_received() -> None:
    private, public = sendgrid_key()
    checks = SignatureChecks(None, 10, public_url="https://hooks.example.com/")
    assert checks._public_line("square", RequestLine("POST", "/v1/flow-webhook/f1?a=%2F")) == (
        RequestLine("POST", "https://hooks.example.com/v1/flow-webhook/f1?a=%2F")
    )
    assert checks._public_line("paddle", RequestLine("POST", "/x")) is None
    # sendgrid through SignatureChecks: 401 with the mode named.
    sendgrid = flow("sendgrid", public_key=public)
    body = b"[]"
    good = headers(sendgrid_headers(private, body, int(time.time())))
    await checks.precheck(sendgrid, good, None)
    await checks.verify(sendgrid, good, body, cast(Any, None), 1_000_000)
    with pytest.raises(Unauthorized) as caught:
        await checks.verify(sendgrid, good, b"[1]", cast(Any, None), 1_000_000)
    assert caught.value.message == (
        "invalid sendgrid signature: the X-Twilio-Email-Event-Webhook-Signature does not match"
    )


# --- the Pub/Sub push envelope ----------------------------------------------------------


def envelope(data: bytes) -> dict[str, Any]:
    return {
        "message": {
            "attributes": {"kind": "order"},
            "data": base64.b64encode(data).decode(),
            "messageId": "2070443601311540",
            "publishTime": "2021-02-26T19:13:55.749Z",
        },
        "subscription": "projects/myproject/subscriptions/mysubscription",
    }


def test_push_data_decoded() -> None:
    limits = BodyLimits()
    parsed = decode_push_data(envelope(b'{"order": {"id": 7}}'), limits)
    assert parsed["message"]["data"] == {"order": {"id": 7}}
    assert parsed["message"]["attributes"] == {"kind": "order"}
    assert parsed["subscription"] == "projects/myproject/subscriptions/mysubscription"
    assert decode_push_data(envelope(b"plain text"), limits)["message"]["data"] == "plain text"
    assert decode_push_data(envelope(b"{not json"), limits)["message"]["data"] == "{not json"
    binary = envelope(b"\xff\xfe")
    assert decode_push_data(binary, limits) == binary  # left in base64
    assert decode_push_data({"no": "message"}, limits) == {"no": "message"}
    deep = b"[" * 100 + b"]" * 100
    assert decode_push_data(envelope(deep), limits)["message"]["data"] == deep.decode()
    with pytest.raises(BadRequest, match=r"^the Pub/Sub message's data is not base64$"):
        decode_push_data({"message": {"data": "not base64!"}}, limits)
    body = b'{"message": {"data": "eyJhIjogMX0="}, "subscription": "s"}'
    assert parse_push_input("POST", {}, "application/json", body, limits) == {
        "message": {"data": {"a": 1}},
        "subscription": "s",
    }


def test_the_public_url_setting() -> None:
    from pydantic import ValidationError

    from services.ingress.settings import IngressSettings

    assert IngressSettings(ingress_public_url="https://hooks.example.com/").ingress_public_url == (
        "https://hooks.example.com"
    )
    assert IngressSettings(ingress_public_url="").ingress_public_url is None
    for bad in ("hooks.example.com", "ftp://hooks.example.com", "https://h.example.com/?a=1"):
        with pytest.raises(ValidationError, match="must be an absolute http"):
            IngressSettings(ingress_public_url=bad)


def test_public_keys_of_other_algorithms_refused() -> None:
    # A SubjectPublicKeyInfo of an unknown algorithm (OID 1.2.3.4): cryptography raises
    # UnsupportedAlgorithm, not ValueError, for it.
    unknown = base64.b64encode(bytes.fromhex("300f300506032a0304050003060004deadbeef")).decode()
    with pytest.raises(ValueError, match=r"^the public key is not a DER SubjectPublicKeyInfo$"):
        load_ecdsa_public_key(unknown)
