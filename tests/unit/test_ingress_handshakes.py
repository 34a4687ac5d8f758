"""The handshake modes (contract: "Providers that must be answered before they send"):
each mode's pure answerer (services/ingress/handshake.py), its event reader
(services/ingress/signatures.py), and its `webhook.auth` fields on save (runner).
Signed with the providers' own SDKs where they publish one (slack_sdk; PyNaCl for
Discord's Ed25519 keys), else with each provider's documented algorithm."""

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict
from nacl.signing import SigningKey
from slack_sdk.signature import SignatureVerifier

from services.ingress import handshake
from services.ingress.handshake import HandshakeAnswer, Probe
from services.ingress.signatures import Check, precheck, verify
from services.runner.access import signing_settings
from services.runner.definition import parse_definition
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_secrets,
    held_verify_token,
    public_webhook,
    seal_secrets,
    seal_verify_token,
)
from shared.errors import BadRequest, Unauthorized
from shared.schemas.vocabulary import RECORDED_OUTCOMES, Outcome
from shared.secret_box import SecretBox

NOW = 1_700_000_000.0
SECRET = "handshake-test-secret-0001"
BOX = SecretBox("unit-test-webhook-secrets-key-0123456789")
WORKSPACE = "00000000-0000-0000-0000-000000000009"


def check(mode: str, *secrets: str, **fields: Any) -> Check:
    return Check(mode=mode, secrets=tuple(s.encode() for s in secrets), **fields)  # type: ignore[arg-type]


def probe(
    method: str = "POST", body: Any = b"", query: dict[str, str] | None = None, **headers: str
) -> Probe:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    named = CIMultiDict((name.replace("_", "-"), value) for name, value in headers.items())
    return Probe(method, query or {}, named, raw)


def json_answer(document: dict[str, Any]) -> HandshakeAnswer:
    return HandshakeAnswer(200, "application/json", orjson.dumps(document))


def hex_hmac(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def b64_hmac(key: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


def test_handshake_is_an_outcome_the_debugger_records() -> None:
    assert str(Outcome.HANDSHAKE) == "handshake" and "handshake" in RECORDED_OUTCOMES


# Slack ---------------------------------------------------------------------------------


def test_slack_url_verification_signed_with_slack_sdk() -> None:
    body = orjson.dumps(
        {
            "token": "t",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    )
    timestamp = str(int(time.time()))
    slack_signer = SignatureVerifier(SECRET)
    signature = slack_signer.generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    slack = check("slack", SECRET)
    sent = CIMultiDict({"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature})
    assert verify(slack, sent, body, time.time()) is None
    assert handshake.answer(slack, Probe("POST", {}, sent, body), NOW) == json_answer(
        {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    )
    # An event is not a handshake: the flow runs.
    assert handshake.answer(slack, probe(body={"type": "event_callback"}), NOW) is None
    # A forged one never reaches the answerer: the verify stage refuses it.
    forged = CIMultiDict(
        {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": "v0=" + "0" * 64}
    )
    assert verify(slack, forged, body, time.time()) == "the X-Slack-Signature does not match"
    assert not slack_signer.is_valid(body, timestamp, "v0=" + "0" * 64)


def test_challenges_are_capped() -> None:
    slack = check("slack", SECRET)
    long = {"type": "url_verification", "challenge": "c" * 4097}
    with pytest.raises(BadRequest) as caught:
        handshake.answer(slack, probe(body=long), NOW)
    assert caught.value.message == "handshake: the challenge is longer than 4096 characters"
    with pytest.raises(BadRequest) as caught:
        handshake.answer(slack, probe(body={"type": "url_verification", "challenge": 5}), NOW)
    assert caught.value.message == "handshake: no challenge, or not a string"
    # A body larger than any handshake is an event.
    big = {"type": "url_verification", "challenge": "c", "pad": "x" * 70_000}
    assert handshake.answer(slack, probe(body=big), NOW) is None


# Zoom ----------------------------------------------------------------------------------


def zoom_headers(body: bytes, secret: str = SECRET, timestamp: int = int(NOW)) -> CIMultiDict[str]:
    signature = "v0=" + hex_hmac(secret, f"v0:{timestamp}:".encode() + body)
    return CIMultiDict({"x-zm-request-timestamp": str(timestamp), "x-zm-signature": signature})


def test_zoom_url_validation_and_events() -> None:
    body = orjson.dumps(
        {
            "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"},
            "event_ts": 1654503849680,
            "event": "endpoint.url_validation",
        }
    )
    zoom = check("zoom", "older-zoom-secret", SECRET)
    sent = zoom_headers(body)
    assert verify(zoom, sent, body, NOW) is None
    # Answered with the secret that signed it (here the second of a rotation).
    assert handshake.answer(zoom, Probe("POST", {}, sent, body), NOW) == json_answer(
        {
            "plainToken": "qgg8vlvZRS6UYooatFL8Aw",
            "encryptedToken": hex_hmac(SECRET, b"qgg8vlvZRS6UYooatFL8Aw"),
        }
    )
    event = b'{"event": "meeting.started"}'
    assert verify(zoom, zoom_headers(event), event, NOW) is None
    assert (
        verify(zoom, zoom_headers(event, "wrong-secret-0"), event, NOW)
        == "the x-zm-signature does not match"
    )
    assert verify(zoom, zoom_headers(event, timestamp=int(NOW) - 301), event, NOW) == (
        "a signature timestamp more than 300 s away from now"
    )
    assert precheck(zoom, CIMultiDict({"x-zm-request-timestamp": str(int(NOW))}), NOW) == (
        "no x-zm-signature header of the form v0=<hex>"
    )
    assert handshake.answer(zoom, Probe("POST", {}, zoom_headers(event), event), NOW) is None


# Microsoft Graph -----------------------------------------------------------------------


def test_microsoft_graph_validation_and_client_state() -> None:
    graph = check("microsoft-graph", SECRET)
    token = "Validation: Testing client application reachability for subscription Request-Id: 1"
    assert handshake.answer(graph, probe(query={"validationToken": token}), NOW) == HandshakeAnswer(
        200, "text/plain", token.encode()
    )
    assert handshake.arrives_unsigned(
        "microsoft-graph", "POST", {"validationToken": "t"}, {}, 0, False
    )
    assert not handshake.arrives_unsigned("microsoft-graph", "POST", {}, {}, 10, True)
    # A large or chunked body is no handshake: it must pass the check.
    assert not handshake.arrives_unsigned(
        "microsoft-graph", "POST", {"validationToken": "t"}, {}, None, True
    )
    good = orjson.dumps({"value": [{"clientState": SECRET}, {"clientState": SECRET}]})
    assert precheck(graph, CIMultiDict(), NOW) is None
    assert verify(graph, CIMultiDict(), good, NOW) is None
    one_wrong = orjson.dumps({"value": [{"clientState": SECRET}, {"clientState": "other-secret"}]})
    assert (
        verify(graph, CIMultiDict(), one_wrong, NOW)
        == "a notification's clientState does not match"
    )
    assert (
        verify(graph, CIMultiDict(), b'{"value": [{}]}', NOW) == "a notification has no clientState"
    )
    assert (
        verify(graph, CIMultiDict(), b'{"value": []}', NOW)
        == "the body has no value[] of notifications"
    )
    assert (
        verify(graph, CIMultiDict(), b"not json", NOW)
        == 'the body is not JSON (notifications are {"value": [...]})'
    )


# Meta ----------------------------------------------------------------------------------


def test_meta_verify_token_and_signature() -> None:
    meta = check("meta", SECRET, verify_token=b"my-verify-token")
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": "my-verify-token",
        "hub.challenge": "1158201444",
    }
    assert handshake.arrives_unsigned("meta", "GET", query, {}, None, False)
    assert handshake.answer(meta, probe("GET", query=query), NOW) == HandshakeAnswer(
        200, "text/plain", b"1158201444"
    )
    with pytest.raises(Unauthorized) as refused:
        handshake.answer(meta, probe("GET", query={**query, "hub.verify_token": "guess"}), NOW)
    assert refused.value.message == "invalid meta handshake: the hub.verify_token is not the flow's"
    with pytest.raises(BadRequest) as bad:
        handshake.answer(meta, probe("GET", query={**query, "hub.mode": "unsubscribe"}), NOW)
    assert bad.value.message == "handshake: hub.mode must be subscribe"
    body = b'{"object": "page", "entry": []}'
    signed = CIMultiDict({"X-Hub-Signature-256": "sha256=" + hex_hmac(SECRET, body)})
    assert verify(meta, signed, body, NOW) is None
    assert verify(meta, signed, body + b" ", NOW) == "the X-Hub-Signature-256 does not match"


# Twitter (X) ---------------------------------------------------------------------------


def test_twitter_crc_and_signature() -> None:
    twitter = check("twitter", "older-consumer-secret", SECRET)
    assert handshake.answer(
        twitter, probe("GET", query={"crc_token": "abc123"}), NOW
    ) == json_answer({"response_token": "sha256=" + b64_hmac(SECRET, b"abc123")})
    body = b'{"for_user_id": "2244994945"}'
    signed = CIMultiDict({"x-twitter-webhooks-signature": "sha256=" + b64_hmac(SECRET, body)})
    assert verify(twitter, signed, body, NOW) is None
    assert precheck(twitter, CIMultiDict({"x-twitter-webhooks-signature": "abc"}), NOW) == (
        "no x-twitter-webhooks-signature header of the form sha256=<base64>"
    )


# Dropbox -------------------------------------------------------------------------------


def test_dropbox_challenge_and_signature() -> None:
    dropbox = check("dropbox", SECRET)
    assert handshake.answer(
        dropbox, probe("GET", query={"challenge": "a1b2"}), NOW
    ) == HandshakeAnswer(200, "text/plain", b"a1b2", {"X-Content-Type-Options": "nosniff"})
    with pytest.raises(BadRequest) as caught:
        handshake.answer(dropbox, probe("GET", query={"challenge": "x" * 5000}), NOW)
    assert caught.value.message == "handshake: the challenge is longer than 4096 characters"
    body = b'{"list_folder": {"accounts": ["dbid:AAH4f99"]}}'
    assert (
        verify(dropbox, CIMultiDict({"X-Dropbox-Signature": hex_hmac(SECRET, body)}), body, NOW)
        is None
    )
    assert precheck(dropbox, CIMultiDict(), NOW) == "no X-Dropbox-Signature header"


# Okta ----------------------------------------------------------------------------------


def test_okta_verification_and_header_secret() -> None:
    okta = check("okta", SECRET, header="X-Okta-Secret")
    challenge = CIMultiDict({"X-Okta-Verification-Challenge": "vOzjYqT2CqUmSk3tFYvU"})
    assert handshake.arrives_unsigned("okta", "GET", {}, challenge, None, False)
    assert handshake.answer(okta, Probe("GET", {}, challenge, b""), NOW) == json_answer(
        {"verification": "vOzjYqT2CqUmSk3tFYvU"}
    )
    assert verify(okta, CIMultiDict({"X-Okta-Secret": SECRET}), b"{}", NOW) is None
    assert (
        verify(okta, CIMultiDict({"X-Okta-Secret": "nope"}), b"{}", NOW)
        == "the X-Okta-Secret header does not match"
    )
    assert precheck(okta, CIMultiDict(), NOW) == "no X-Okta-Secret header"


# Twitch --------------------------------------------------------------------------------


def twitch_headers(
    body: bytes, kind: str, timestamp: str, secret: str = SECRET
) -> CIMultiDict[str]:
    message_id = "e76c6bd4-55c9-4987-8304-da1588d8988b"
    signature = "sha256=" + hex_hmac(secret, message_id.encode() + timestamp.encode() + body)
    return CIMultiDict(
        {
            "Twitch-Eventsub-Message-Id": message_id,
            "Twitch-Eventsub-Message-Timestamp": timestamp,
            "Twitch-Eventsub-Message-Signature": signature,
            "Twitch-Eventsub-Message-Type": kind,
        }
    )


def test_twitch_verification_revocation_and_events() -> None:
    twitch = check("twitch", SECRET)
    # RFC 3339 with nanoseconds, as Twitch sends it.
    timestamp = datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    body = b'{"challenge": "pogchamp-kappa-360noscope-vohiyo", "subscription": {}}'
    sent = twitch_headers(body, "webhook_callback_verification", timestamp)
    assert verify(twitch, sent, body, NOW) is None
    assert handshake.answer(twitch, Probe("POST", {}, sent, body), NOW) == HandshakeAnswer(
        200, "text/plain", b"pogchamp-kappa-360noscope-vohiyo"
    )
    revoked = twitch_headers(b"{}", "revocation", timestamp)
    assert handshake.answer(twitch, Probe("POST", {}, revoked, b"{}"), NOW) == HandshakeAnswer(
        204, None, b""
    )
    event = twitch_headers(b'{"event": {}}', "notification", timestamp)
    assert handshake.answer(twitch, Probe("POST", {}, event, b'{"event": {}}'), NOW) is None
    assert verify(
        twitch, twitch_headers(body, "notification", timestamp, "wrong-secret"), body, NOW
    ) == ("the Twitch-Eventsub-Message-Signature does not match")
    stale = datetime.fromtimestamp(NOW - 601, UTC).isoformat()
    assert verify(
        check("twitch", SECRET, tolerance_s=600), twitch_headers(body, "x", stale), body, NOW
    ) == ("a signature timestamp more than 600 s away from now")
    assert (
        precheck(twitch, twitch_headers(body, "x", "yesterday"), NOW)
        == "a missing or malformed signature timestamp"
    )


# Discord -------------------------------------------------------------------------------


def discord_signed(
    key: SigningKey, body: bytes, timestamp: str = str(int(NOW))
) -> CIMultiDict[str]:
    signature = key.sign(timestamp.encode() + body).signature.hex()
    return CIMultiDict({"X-Signature-Ed25519": signature, "X-Signature-Timestamp": timestamp})


def test_discord_ping_signed_with_pynacl() -> None:
    key = SigningKey.generate()
    discord = check("discord", public_key=bytes(key.verify_key))
    ping = b'{"type": 1, "id": "1", "application_id": "2"}'
    sent = discord_signed(key, ping)
    assert verify(discord, sent, ping, NOW) is None
    assert handshake.answer(discord, Probe("POST", {}, sent, ping), NOW) == json_answer({"type": 1})
    interaction = b'{"type": 2}'
    assert handshake.answer(discord, Probe("POST", {}, sent, interaction), NOW) is None
    # Signed by another key, or over another body: refused.
    assert (
        verify(discord, discord_signed(SigningKey.generate(), ping), ping, NOW)
        == "the X-Signature-Ed25519 does not match"
    )
    assert verify(discord, sent, interaction, NOW) == "the X-Signature-Ed25519 does not match"
    malformed = CIMultiDict(
        {"X-Signature-Ed25519": "zz" * 64, "X-Signature-Timestamp": str(int(NOW))}
    )
    assert (
        precheck(discord, malformed, NOW)
        == "the X-Signature-Ed25519 header is not a 64-byte signature in hex"
    )
    oversized = CIMultiDict(
        {"X-Signature-Ed25519": "ab" * 5000, "X-Signature-Timestamp": str(int(NOW))}
    )
    assert precheck(discord, oversized, NOW) == "no X-Signature-Ed25519 header"


# Saving the modes' fields (runner) ----------------------------------------------------


def refusal(auth: dict[str, Any]) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_definition(
            {"name": "f", "webhook": {"auth": auth}}, TemplateEngine(), max_timeout_s=300
        )
    return caught.value.message


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            {"mode": "meta", "secrets": ["a" * 8]},
            "webhook.auth.verify_token: the meta mode needs the verify token you give"
            " Meta's console",
        ),
        (
            {"mode": "github", "secrets": ["a" * 8], "verify_token": "b" * 8},
            "webhook.auth.verify_token: the github mode does not take it",
        ),
        (
            {"mode": "meta", "secrets": ["a" * 8], "verify_token": "short"},
            "webhook.auth.verify_token: a secret has 8 to 512 characters",
        ),
        (
            {"mode": "okta", "secrets": ["a" * 8]},
            "webhook.auth.header: the okta mode needs the name of the header Okta sends the"
            " secret in (the event hook's authentication field, e.g. X-Okta-Secret)",
        ),
        (
            {"mode": "okta", "secrets": ["a" * 8], "header": "Authorization"},
            "webhook.auth.header: Authorization is read as a bearer token: name another"
            " header in Okta's console, e.g. X-Okta-Secret",
        ),
        (
            {"mode": "discord"},
            "webhook.auth.public_key: the discord mode needs the application's public key"
            " (hex), as the Developer Portal shows it",
        ),
        (
            {"mode": "discord", "public_key": "ab" * 31},
            "webhook.auth.public_key: an Ed25519 public key is 64 hex characters",
        ),
        (
            {"mode": "discord", "public_key": "xy" * 32},
            "webhook.auth.public_key: an Ed25519 public key is 64 hex characters",
        ),
        (
            {"mode": "discord", "public_key": "ab" * 32, "secrets": ["a" * 8]},
            "webhook.auth.secrets: the discord mode takes public_key instead of secrets",
        ),
        (
            {"mode": "slack", "secrets": ["a" * 8], "public_key": "ab" * 32},
            "webhook.auth.public_key: the slack mode does not take it",
        ),
        ({"mode": "zoom"}, "webhook.auth.secrets: the zoom mode needs one or two secrets"),
    ],
)
def test_handshake_fields_refused_on_save(auth: dict[str, Any], message: str) -> None:
    assert refusal(auth) == message


def save(auth: dict[str, Any], stored: dict[str, Any] | None = None) -> dict[str, Any]:
    definition = parse_definition(
        {"name": "f", "webhook": {"auth": auth}}, TemplateEngine(), max_timeout_s=300
    )
    seal_secrets(definition, held_secrets(stored), BOX, WORKSPACE)
    seal_verify_token(definition, held_verify_token(stored), BOX, WORKSPACE)
    webhook: dict[str, Any] = definition.public()["webhook"]
    return webhook


def test_meta_verify_token_sealed_hinted_and_kept() -> None:
    stored = save(
        {"mode": "meta", "secrets": ["app-secret-AAAA"], "verify_token": "verify-token-VVVV"}
    )
    token = stored["auth"]["verify_token"]
    assert token["hint"] == "\u2026VVVV" and "verify-token-VVVV" not in str(stored)
    assert BOX.open(token["sealed"], WORKSPACE) == "verify-token-VVVV"
    assert public_webhook(stored)["auth"] == {
        **stored["auth"],
        "secrets": ["\u2026AAAA"],
        "verify_token": "\u2026VVVV",
    }
    # Saved back by its hint: kept as it was.
    again = save({"mode": "meta", "secrets": ["\u2026AAAA"], "verify_token": "\u2026VVVV"}, stored)
    assert again["auth"]["verify_token"] == token
    with pytest.raises(BadRequest, match="names no verify token this flow holds"):
        save({"mode": "meta", "secrets": ["app-secret-AAAA"], "verify_token": "\u2026ZZZZ"}, stored)
    signing = signing_settings(stored)
    assert signing is not None and signing.verify_token == token["sealed"]


def test_discord_public_key_and_okta_header_reach_the_ingress() -> None:
    key = SigningKey.generate()
    public_key = bytes(key.verify_key).hex().upper()
    stored = save({"mode": "discord", "public_key": public_key})
    assert stored["auth"]["public_key"] == public_key.lower() and stored["auth"]["secrets"] == []
    signing = signing_settings(stored)
    assert (
        signing is not None and signing.public_key == public_key.lower() and signing.secrets == []
    )
    okta = signing_settings(
        save({"mode": "okta", "secrets": ["okta-secret-1"], "header": "X-Okta-Secret"})
    )
    assert okta is not None and okta.header == "X-Okta-Secret"
    # Modes without them store neither field (flows saved before read the same).
    assert "verify_token" not in save({"mode": "github", "secrets": ["a" * 8]})["auth"]
