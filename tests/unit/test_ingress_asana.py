"""The `asana` mode (contract: "Providers that must be answered before they send"; issue
22: "Asana's secret is learned from the first handshake only while the flow holds
none"): its answerer and reader at the ingress, and its `webhook.auth` on save at the
runner (no secret to arm it, one at most, the learned one kept unless `[]` is saved).
Asana publishes no SDK that signs or verifies its webhooks; its documented algorithm is
a hex HMAC-SHA256 of the raw body under the `X-Hook-Secret` of the handshake."""

import hashlib
import hmac
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from services.ingress import handshake
from services.ingress.handshake import HandshakeAnswer, Probe
from services.ingress.signatures import Check, precheck, verify
from services.runner.access import signing_settings
from services.runner.definition import FlowDefinition, check_learned_secret, parse_definition
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import (
    held_secrets,
    keep_learned_secret,
    public_webhook,
    seal_secrets,
)
from shared.errors import BadRequest, Unauthorized
from shared.secret_box import SecretBox

NOW = 1_700_000_000.0
# What Asana sends: 32 hex characters.
SECRET = "8c3f7e0b5d1a49c2b6e4f0a9d7c3b1e5"
BOX = SecretBox("unit-test-webhook-secrets-key-0123456789")
WORKSPACE = "00000000-0000-0000-0000-000000000009"
# An Asana event batch as its documentation shows one.
EVENTS = orjson.dumps(
    {
        "events": [
            {
                "user": {"gid": "1123", "resource_type": "user"},
                "created_at": "2026-12-06T20:00:00.000Z",
                "action": "changed",
                "resource": {"gid": "1234", "resource_type": "task"},
                "change": {"field": "name", "action": "changed"},
            }
        ]
    }
)


def armed(*secrets: str) -> Check:
    return Check(mode="asana", secrets=tuple(secret.encode() for secret in secrets))


def probe(method: str = "POST", body: bytes = b"", **headers: str) -> Probe:
    return Probe(
        method, {}, CIMultiDict((n.replace("_", "-"), v) for n, v in headers.items()), body
    )


def signature(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# The handshake ------------------------------------------------------------------------


def test_the_first_handshake_is_echoed_and_names_the_secret_to_learn() -> None:
    answered = handshake.answer(armed(), probe(X_Hook_Secret=SECRET), NOW)
    assert answered == HandshakeAnswer(
        200, None, b"", {"X-Hook-Secret": SECRET}, learned_secret=SECRET
    )


def test_a_handshake_to_a_flow_that_holds_a_secret_is_refused() -> None:
    with pytest.raises(Unauthorized) as refused:
        handshake.answer(armed(SECRET), probe(X_Hook_Secret="another-secret-0001"), NOW)
    assert refused.value.message == (
        "invalid asana handshake: this flow already holds a secret (a later handshake"
        " cannot replace it; to re-arm the flow, save its webhook.auth.secrets as []"
        " through the flows API, then create the webhook again)"
    )
    assert "another-secret-0001" not in refused.value.message


def test_only_a_post_with_the_header_is_the_handshake() -> None:
    # An event (signed or not) is not one: the reader judges it.
    assert handshake.answer(armed(SECRET), probe(body=EVENTS), NOW) is None
    assert handshake.answer(armed(), probe("GET", X_Hook_Secret=SECRET), NOW) is None
    recognised = handshake.arrives_unsigned
    headers = CIMultiDict({"X-Hook-Secret": SECRET})
    assert recognised("asana", "POST", {}, headers, 0, False) is True
    assert recognised("asana", "POST", {}, CIMultiDict({"x-hook-secret": SECRET}), 0, False)
    assert recognised("asana", "GET", {}, headers, None, False) is False
    assert recognised("asana", "POST", {}, CIMultiDict(), 10, True) is False
    # A large or chunked body is judged as an event (unsigned: 401), not a handshake.
    limit = handshake.MAX_HANDSHAKE_BODY_BYTES
    assert recognised("asana", "POST", {}, headers, limit + 1, True) is False
    assert recognised("asana", "POST", {}, headers, None, True) is False
    # The header means nothing to the other modes.
    assert recognised("github", "POST", {}, headers, 0, False) is False


def test_an_empty_or_oversized_secret_is_refused_400() -> None:
    with pytest.raises(BadRequest, match="handshake: no X-Hook-Secret, or not a string"):
        handshake.answer(armed(), probe(X_Hook_Secret=""), NOW)
    with pytest.raises(
        BadRequest, match="handshake: the X-Hook-Secret is longer than 4096 characters"
    ):
        handshake.answer(armed(), probe(X_Hook_Secret="s" * 4097), NOW)
    # Bytes that are not UTF-8 reach the handler as lone surrogates: neither sealed nor
    # echoed (no 500), and no other control or non-ASCII character either.
    for odd in ("secret-\udcff-0001", "secret-\u00e9-00001", "secret\twith-tab"):
        with pytest.raises(BadRequest, match="handshake: the X-Hook-Secret is not printable ASCII"):
            handshake.answer(armed(), probe(X_Hook_Secret=odd), NOW)


# Events -------------------------------------------------------------------------------


def test_events_are_the_hex_hmac_of_the_body_under_the_learned_secret() -> None:
    headers = CIMultiDict({"X-Hook-Signature": signature(EVENTS)})
    assert precheck(armed(SECRET), headers, NOW) is None
    assert verify(armed(SECRET), headers, EVENTS, NOW) is None
    # Asana's heartbeat: an empty batch, signed like any.
    heartbeat = b'{"events":[]}'
    assert verify(armed(SECRET), {"X-Hook-Signature": signature(heartbeat)}, heartbeat, NOW) is None
    forged = {"X-Hook-Signature": signature(EVENTS, "forged-secret-0001")}
    assert verify(armed(SECRET), forged, EVENTS, NOW) == "the X-Hook-Signature does not match"
    assert verify(armed(SECRET), {}, EVENTS, NOW) == "no X-Hook-Signature header"
    assert precheck(armed(SECRET), {"X-Hook-Signature": "zz"}, NOW) == (
        "the X-Hook-Signature does not match"
    )
    oversized = {"X-Hook-Signature": "a" * 5000}
    assert precheck(armed(SECRET), oversized, NOW) == "no X-Hook-Signature header"


def test_an_unarmed_flow_takes_nothing_but_the_handshake() -> None:
    """Before its handshake the flow holds no secret: every event is 401 from the headers
    alone, signed or not, so the URL is good for nothing but arming it."""
    headers = {"X-Hook-Signature": signature(EVENTS)}
    expected = (
        "this asana flow holds no secret yet: only Asana's handshake (X-Hook-Secret) is"
        " accepted until one arms it"
    )
    assert precheck(armed(), headers, NOW) == expected
    assert verify(armed(), headers, EVENTS, NOW) == expected


# On save (runner) ---------------------------------------------------------------------


def save(auth: dict[str, Any], stored: dict[str, Any] | None = None) -> FlowDefinition:
    """parse, keep the learned secret, seal: what the flows API does (flows_api._save)."""
    definition = parse_definition(
        {"name": "asana", "webhook": {"auth": auth}}, TemplateEngine(), 60
    )
    keep_learned_secret(definition, stored)
    seal_secrets(definition, held_secrets(stored), BOX, WORKSPACE)
    return definition


def stored_of(definition: FlowDefinition) -> dict[str, Any]:
    return dict(definition.public()["webhook"])


def test_an_asana_flow_is_saved_without_secrets_and_reaches_the_ingress_unarmed() -> None:
    definition = save({"mode": "asana"})
    webhook = stored_of(definition)
    assert webhook["auth"]["secrets"] == []
    assert public_webhook(webhook)["auth"]["secrets"] == []
    signing = signing_settings(webhook)
    assert signing is not None
    assert (signing.mode, signing.secrets) == ("asana", [])


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            {"mode": "asana", "secrets": [SECRET, "second-secret-0001"]},
            "webhook.auth.secrets: the asana mode holds one secret, the one its handshake"
            " gave: there is no rotation (save [] to re-arm the flow, then create the"
            " webhook again)",
        ),
        (
            {"mode": "asana", "secrets": ["short"]},
            "webhook.auth.secrets[0]: a secret has 8 to 512 characters",
        ),
        (
            {"mode": "asana", "verify_token": "v" * 10},
            "webhook.auth.verify_token: the asana mode does not take it",
        ),
        (
            {"mode": "asana", "header": "X-Hook-Signature"},
            "webhook.auth.header: only the hmac mode takes it",
        ),
    ],
)
def test_asana_fields_refused_on_save(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        save(auth)
    assert refused.value.message == message


def test_a_secret_given_on_save_is_sealed_and_hinted() -> None:
    """Moving a webhook whose secret was kept elsewhere: the secret itself, once."""
    webhook = stored_of(save({"mode": "asana", "secrets": [SECRET]}))
    (held,) = webhook["auth"]["secrets"]
    assert BOX.open(held["sealed"], WORKSPACE) == SECRET
    assert public_webhook(webhook)["auth"]["secrets"] == ["\u2026" + SECRET[-4:]]


def test_the_learned_secret_is_kept_unless_an_empty_list_is_saved() -> None:
    learned = stored_of(save({"mode": "asana", "secrets": [SECRET]}))
    held = learned["auth"]["secrets"]
    # Left out (a PUT from a file, a PATCH of webhook.auth without it): kept as is.
    assert stored_of(save({"mode": "asana"}, learned))["auth"]["secrets"] == held
    assert stored_of(save({"mode": "asana", "tolerance_s": 60}, learned))["auth"]["secrets"] == held
    # Its hint, as GET shows it: kept.
    hint = ["\u2026" + SECRET[-4:]]
    assert stored_of(save({"mode": "asana", "secrets": hint}, learned))["auth"]["secrets"] == held
    # `[]` given: cleared, so that the next handshake arms the flow again.
    assert stored_of(save({"mode": "asana", "secrets": []}, learned))["auth"]["secrets"] == []
    # Another mode's secret is never taken over by an asana flow.
    github = {"auth": {"mode": "github", "secrets": held}}
    assert stored_of(save({"mode": "asana"}, github))["auth"]["secrets"] == []


def test_a_learned_secret_follows_the_save_rules() -> None:
    check_learned_secret("asana", SECRET, "X-Hook-Secret")
    for bad, reason in (("short", "8 to 512 characters"), ("tab\tin-it-0001", "printable ASCII")):
        with pytest.raises(BadRequest, match=f"X-Hook-Secret: a secret (has|is) .*{reason}"):
            check_learned_secret("asana", bad, "X-Hook-Secret")
