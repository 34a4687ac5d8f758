"""Saving flows of the "More verification modes" (runner, services/runner/definition.py):
each mode's own fields, refused naming the field, shown by the modes that use them, and
carried to the ingress in `SigningSettings` (services/runner/access.py)."""

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.runner.access import signing_settings
from services.runner.definition import parse_definition
from services.runner.settings import RunnerSettings
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import held_secrets, public_webhook, seal_secrets
from shared.errors import BadRequest
from shared.secret_box import SecretBox

BOX = SecretBox("unit-test-webhook-secrets-key-0123456789")
WORKSPACE = "00000000-0000-0000-0000-000000000009"
P256 = base64.b64encode(
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
PUBSUB = {
    "mode": "google-pubsub",
    "audience": "https://hooks.example.com/v1/flow-webhook/f1",
    "email": "pusher@my-project.iam.gserviceaccount.com",
}


def flow(auth: dict[str, Any]) -> dict[str, Any]:
    return {"name": "f", "webhook": {"auth": auth}, "steps": []}


def refusal(raw: Any) -> tuple[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse_definition(raw, TemplateEngine(), max_timeout_s=300)
    return caught.value.message, caught.value.data


def save(raw: dict[str, Any]) -> dict[str, Any]:
    definition = parse_definition(raw, TemplateEngine(), max_timeout_s=300)
    seal_secrets(definition, held_secrets(None), BOX, WORKSPACE)
    webhook: dict[str, Any] = definition.public()["webhook"]
    return webhook


@pytest.mark.parametrize(
    ("auth", "field", "message"),
    [
        ({"mode": "twilio"}, "webhook.auth.secrets", "the twilio mode needs one or two secrets"),
        ({"mode": "paddle"}, "webhook.auth.secrets", "the paddle mode needs one or two secrets"),
        (
            {"mode": "sendgrid"},
            "webhook.auth.public_key",
            "the sendgrid mode needs SendGrid's public key",
        ),
        (
            {"mode": "sendgrid", "public_key": "not base64!"},
            "webhook.auth.public_key",
            "the public key is not base64 (SendGrid shows it as base64 DER)",
        ),
        (
            {"mode": "sendgrid", "public_key": base64.b64encode(b"x" * 91).decode()},
            "webhook.auth.public_key",
            "the public key is not a DER SubjectPublicKeyInfo",
        ),
        (
            {"mode": "sendgrid", "public_key": P256, "secrets": ["a-secret-1234"]},
            "webhook.auth.secrets",
            "the sendgrid mode takes no secrets: give public_key",
        ),
        (
            {"mode": "google-pubsub", "email": PUBSUB["email"]},
            "webhook.auth.audience",
            "the google-pubsub mode needs the push token's audience",
        ),
        (
            {"mode": "google-pubsub", "audience": PUBSUB["audience"]},
            "webhook.auth.email",
            "the google-pubsub mode needs the push token's email",
        ),
        (
            {**PUBSUB, "jwks_url": "ftp://keys.example.com/certs"},
            "webhook.auth.jwks_url",
            "only http and https URLs are allowed, not ftp://keys.example.com/certs",
        ),
        (
            {**PUBSUB, "jwks_url": "https://"},
            "webhook.auth.jwks_url",
            "the URL https:// has no host",
        ),
        (
            {**PUBSUB, "secrets": ["a-secret-1234"]},
            "webhook.auth.secrets",
            "the google-pubsub mode takes no secrets: give audience and email",
        ),
        (
            {**PUBSUB, "email": " pusher@example.com"},
            "webhook.auth.email",
            "must be printable text without surrounding spaces",
        ),
        (
            {"mode": "github", "secrets": ["a-secret-1234"], "public_key": P256},
            "webhook.auth.public_key",
            "the github mode does not take it",
        ),
        (
            {"mode": "sendgrid", "public_key": P256, "audience": "x"},
            "webhook.auth.audience",
            "the sendgrid mode does not take it",
        ),
    ],
)
def test_refused_on_save_naming_the_field(auth: dict[str, Any], field: str, message: str) -> None:
    assert refusal(flow(auth)) == (f"{field}: {message}", {"field": field})


def test_sendgrid_public_key_shown_as_saved_and_carried_to_the_ingress() -> None:
    stored = save(flow({"mode": "sendgrid", "public_key": P256}))
    assert public_webhook(stored)["auth"] == {
        "mode": "sendgrid",
        "secrets": [],
        "tolerance_s": 300,
        "header": None,
        "algorithm": "sha256",
        "encoding": "hex",
        "prefix": "",
        "timestamp_header": None,
        "content": None,
        "public_key": P256,
    }
    signing = signing_settings(stored)
    assert signing is not None
    assert (signing.mode, signing.secrets, signing.public_key) == ("sendgrid", [], P256)


def test_pubsub_fields_shown_and_carried() -> None:
    stored = save(flow({**PUBSUB, "jwks_url": "https://keys.example.com/certs"}))
    shown = public_webhook(stored)["auth"]
    assert {name: shown[name] for name in ("audience", "email", "jwks_url")} == {
        "audience": PUBSUB["audience"],
        "email": PUBSUB["email"],
        "jwks_url": "https://keys.example.com/certs",
    }
    assert "public_key" not in shown
    signing = signing_settings(stored)
    assert signing is not None
    assert (signing.audience, signing.email, signing.jwks_url) == (
        PUBSUB["audience"],
        PUBSUB["email"],
        "https://keys.example.com/certs",
    )
    # Without jwks_url: None (Google's), and not shown.
    default = save(flow(PUBSUB))
    assert "jwks_url" not in default["auth"]
    assert signing_settings(default).jwks_url is None  # type: ignore[union-attr]


def test_url_modes_hold_secrets_and_show_hints() -> None:
    for mode in ("twilio", "square", "hubspot", "paddle"):
        stored = save(flow({"mode": mode, "secrets": [f"{mode}-secret-WXYZ"]}))
        assert public_webhook(stored)["auth"]["secrets"] == ["\u2026WXYZ"]
        assert set(stored["auth"]) == {
            "mode", "secrets", "tolerance_s", "header", "algorithm", "encoding", "prefix",
            "timestamp_header", "content",
        }  # fmt: skip


def test_the_webhook_url_base_prefers_the_ingress_public_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWHOOKS_RUNNER_TOKEN_KEYS", "unit-test-token-key-0123456789abcdef")
    monkeypatch.delenv("FLOWHOOKS_INGRESS_PUBLIC_URL", raising=False)
    monkeypatch.setenv("FLOWHOOKS_RUNNER_WEBHOOK_BASE_URL", "https://old.example.com")
    assert RunnerSettings().webhook_base_url() == "https://old.example.com"
    monkeypatch.setenv("FLOWHOOKS_INGRESS_PUBLIC_URL", "https://hooks.example.com")
    assert RunnerSettings().webhook_base_url() == "https://hooks.example.com"
