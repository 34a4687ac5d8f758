"""shared/standard_webhooks.py against the Standard Webhooks reference vector.

The vector is the reference Python library's `test_sign_function`
(github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
commit 33d368b20c5543357f4f27fd13bed0703b8c5204): secret
whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp
1614265330, payload {"test": 2432232314}. The scheme (`{msg_id}.{timestamp}.{payload}`,
HMAC-SHA256, `v1,<base64>`, space-separated list) is spec/standard-webhooks.md of the
same repository."""

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared import standard_webhooks as sw

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = EXPECTED, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_sign_matches_the_reference_vector() -> None:
    assert sw.sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD) == EXPECTED
    # The prefix is optional on the key, as in the reference libraries.
    assert sw.sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, PAYLOAD) == EXPECTED


def test_signed_headers() -> None:
    assert sw.signed_headers(SECRET, MSG_ID, PAYLOAD, TIMESTAMP) == headers()


def test_verify_accepts_the_vector_within_tolerance() -> None:
    sw.verify(SECRET, headers(), PAYLOAD, now=TIMESTAMP + 299)
    sw.verify(SECRET, headers(), PAYLOAD, now=TIMESTAMP - 299)
    # Header names in any case (HTTP headers are case-insensitive).
    upper = {name.upper(): value for name, value in headers().items()}
    sw.verify(SECRET, upper, PAYLOAD, now=TIMESTAMP)


def test_verify_finds_the_valid_one_among_several_signatures() -> None:
    listed = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            EXPECTED,
        ]
    )
    sw.verify(SECRET, headers(listed), PAYLOAD, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="}, "no signature"),
        ({"webhook-signature": "v1a," + EXPECTED[3:]}, "no signature"),
        ({"webhook-timestamp": "1614265331"}, "no signature"),
        ({"webhook-id": "msg_other"}, "no signature"),
        ({"webhook-timestamp": "hello"}, "whole seconds"),
        ({"webhook-id": "msg.a"}, "contain no '.'"),
    ],
)
def test_verify_refuses_what_does_not_match(changed: dict[str, str], message: str) -> None:
    with pytest.raises(sw.SignatureError, match=message):
        sw.verify(SECRET, {**headers(), **changed}, PAYLOAD, now=TIMESTAMP)


def test_verify_refuses_a_changed_body_and_another_secret() -> None:
    with pytest.raises(sw.SignatureError, match="no signature"):
        sw.verify(SECRET, headers(), b'{"test": 2432232315}', now=TIMESTAMP)
    with pytest.raises(sw.SignatureError, match="no signature"):
        sw.verify(sw.new_secret(), headers(), PAYLOAD, now=TIMESTAMP)


def test_verify_refuses_old_and_future_timestamps_and_missing_headers() -> None:
    with pytest.raises(sw.SignatureError, match="tolerance"):
        sw.verify(SECRET, headers(), PAYLOAD, now=TIMESTAMP + 301)
    with pytest.raises(sw.SignatureError, match="tolerance"):
        sw.verify(SECRET, headers(), PAYLOAD, now=TIMESTAMP - 301)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers().items() if k != name}
        with pytest.raises(sw.SignatureError, match="missing"):
            sw.verify(SECRET, partial, PAYLOAD, now=TIMESTAMP)


def test_new_secrets_round_trip() -> None:
    secret = sw.new_secret()
    assert secret.startswith("whsec_")
    assert len(sw.secret_key(secret)) == 32
    assert sw.new_secret() != secret
    signed = sw.signed_headers(secret, "msg_1", b"{}")
    sw.verify(secret, signed, b"{}")


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not base64!", "base64"),
        ("whsec_" + "A" * 28, "24 to 64 bytes, not 21"),  # 21 bytes: under 192 bits
        ("whsec_" + "A" * 88, "24 to 64 bytes, not 66"),
    ],
)
def test_bad_secrets_are_refused(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sw.secret_key(secret)


def test_the_reference_sdk_agrees_both_ways() -> None:
    """The `standardwebhooks` package (the reference library): it accepts what we sign
    (our completion callbacks and alert notices), and we accept what it signs."""
    secret, body = sw.new_secret(), b'{"request_id": "r1", "outcome": "succeeded"}'
    sdk = Webhook(secret)
    assert sdk.verify(body, sw.signed_headers(secret, "msg_1", body)) == {
        "request_id": "r1",
        "outcome": "succeeded",
    }
    with pytest.raises(WebhookVerificationError):
        sdk.verify(body, sw.signed_headers(sw.new_secret(), "msg_1", body))
    now = datetime.now(UTC)
    theirs = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sdk.sign("msg_2", now, body),
    }
    assert sw.sign(secret, "msg_2", int(now.timestamp()), body) == theirs["webhook-signature"]
    sw.verify(secret, theirs, body)
