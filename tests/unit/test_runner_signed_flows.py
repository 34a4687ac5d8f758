"""Saving a flow's `webhook.auth` and `webhook.response.headers` (runner), the secrets'
sealing and hints, what the ingress receives of them, and the raw body's encoding."""

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from services.debugger.records import stored_raw_body
from services.ingress.normalise import raw_body_fields
from services.runner.access import signing_settings
from services.runner.definition import parse_definition
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import held_secrets, public_webhook, seal_secrets
from shared.errors import BadRequest
from shared.schemas.runs import WebhookRequest
from shared.secret_box import SecretBox

BOX = SecretBox("unit-test-webhook-secrets-key-0123456789")
WORKSPACE = "00000000-0000-0000-0000-000000000009"


def flow(**webhook: Any) -> dict[str, Any]:
    return {"name": "f", "webhook": webhook, "steps": []}


def refusal(raw: Any) -> tuple[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse_definition(raw, TemplateEngine(), max_timeout_s=300)
    return caught.value.message, caught.value.data


@pytest.mark.parametrize(
    ("auth", "field", "message"),
    [
        ({"mode": "github"}, "webhook.auth.secrets", "the github mode needs one or two secrets"),
        (
            {"mode": "github", "secrets": ["a" * 8, "b" * 8, "c" * 8]},
            "webhook.auth.secrets",
            "List should have at most 2 items after validation, not 3",
        ),
        (
            {"mode": "github", "secrets": ["short"]},
            "webhook.auth.secrets[0]",
            "a secret has 8 to 512 characters",
        ),
        (
            {"mode": "standard-webhooks", "secrets": ["not-whsec-secret"]},
            "webhook.auth.secrets[0]",
            "a Standard Webhooks secret is whsec_<base64>",
        ),
        (
            {"mode": "bearer", "secrets": ["a" * 8]},
            "webhook.auth.secrets",
            "the bearer mode takes no secrets",
        ),
        (
            {"mode": "slack", "secrets": ["a" * 8], "header": "X-S"},
            "webhook.auth.header",
            "only the hmac mode takes it",
        ),
        (
            {"mode": "hmac", "secrets": ["a" * 8]},
            "webhook.auth.header",
            "the hmac mode needs the signature's header name",
        ),
        (
            {"mode": "hmac", "secrets": ["a" * 8], "header": "X-S", "content": "{timestamp}{body}"},
            "webhook.auth.content",
            "{timestamp} goes with timestamp_header: give both or neither",
        ),
        (
            {"mode": "hmac", "secrets": ["a" * 8], "header": "X-S", "content": "{body}{body}"},
            "webhook.auth.content",
            "must hold {body} exactly once",
        ),
    ],
)
def test_auth_refused_on_save(auth: dict[str, Any], field: str, message: str) -> None:
    assert refusal(flow(auth=auth)) == (f"{field}: {message}", {"field": field})


def test_response_headers_refused_on_save() -> None:
    assert refusal(flow(response={"headers": {"Proxy-Authorization": "x"}})) == (
        "webhook.response.headers.Proxy-Authorization: the header Proxy-Authorization cannot be"
        " set by a flow (hop-by-hop, a cookie, or set by the ingress itself)",
        {"field": "webhook.response.headers.Proxy-Authorization"},
    )
    assert refusal(flow(response={"headers": {"Content-Type": "x"}}))[0].endswith(
        "(use webhook.response.content_type)"
    )
    assert refusal(flow(response={"headers": {"Bad Name": "x"}}))[0] == (
        "webhook.response.headers.Bad Name: not a valid header name"
    )
    many = {f"X-H{i}": "v" for i in range(21)}
    assert refusal(flow(response={"headers": many}))[0] == (
        "webhook.response.headers: at most 20 headers"
    )
    assert refusal(flow(response={"headers": {"X-A": "{{ nope.x }}"}}))[1] == {
        "field": "webhook.response.headers.X-A"
    }


def save(raw: dict[str, Any], stored_webhook: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the flows API stores for `raw` (given the flow's stored webhook before)."""
    definition = parse_definition(raw, TemplateEngine(), max_timeout_s=300)
    seal_secrets(definition, held_secrets(stored_webhook), BOX, WORKSPACE)
    webhook: dict[str, Any] = definition.public()["webhook"]
    return webhook


def test_secrets_sealed_hinted_kept_by_hint_and_rotated() -> None:
    first = save(flow(auth={"mode": "stripe", "secrets": ["whsec_first_secret_AAAA"]}))
    [stored] = first["auth"]["secrets"]
    assert stored["hint"] == "\u2026AAAA" and "whsec_first" not in str(first)
    assert BOX.open(stored["sealed"], WORKSPACE) == "whsec_first_secret_AAAA"
    assert public_webhook(first)["auth"]["secrets"] == ["\u2026AAAA"]

    rotated = save(
        flow(auth={"mode": "stripe", "secrets": ["\u2026AAAA", "whsec_second_secret_BBBB"]}), first
    )
    assert rotated["auth"]["secrets"][0] == stored  # kept as it was, not sealed again
    assert public_webhook(rotated)["auth"]["secrets"] == ["\u2026AAAA", "\u2026BBBB"]
    # A PATCH merges the stored form back in: kept.
    assert save(flow(auth=rotated["auth"]), rotated)["auth"] == rotated["auth"]
    # Another flow's sealed secret, or an unknown hint, is refused.
    with pytest.raises(BadRequest, match=r"webhook.auth.secrets\[0\]: not a secret of this flow"):
        save(flow(auth=rotated["auth"]), None)
    with pytest.raises(BadRequest, match="names no secret this flow holds"):
        save(flow(auth={"mode": "stripe", "secrets": ["\u2026ZZZZ"]}), first)

    # What the ingress receives: the sealed values only.
    signing = signing_settings(rotated)
    assert signing is not None
    assert signing.mode == "stripe" and signing.tolerance_s == 300
    assert signing.secrets == [item["sealed"] for item in rotated["auth"]["secrets"]]
    assert signing_settings({"auth": {"mode": "bearer"}}) is None
    assert signing_settings({}) is None


def test_signing_modes_need_the_key() -> None:
    definition = parse_definition(
        flow(auth={"mode": "github", "secrets": ["a" * 8]}), TemplateEngine(), max_timeout_s=300
    )
    with pytest.raises(BadRequest, match="FLOWHOOKS_WEBHOOK_SECRETS_KEY"):
        seal_secrets(definition, [], None, WORKSPACE)


def request(body: bytes) -> WebhookRequest:
    return WebhookRequest(
        request_id="r",
        flow_id="f",
        workspace_id=WORKSPACE,
        received_at=datetime.now(UTC),
        method="POST",
        path="/",
        query={},
        headers={},
        content_type=None,
        input={},
        **raw_body_fields(body),
    )


def test_raw_body_kept_byte_for_byte() -> None:
    text = request('{"a": "é"}'.encode())
    assert (text.raw_body, text.raw_body_encoding) == ('{"a": "é"}', "utf-8")
    assert text.raw_body_text() == '{"a": "é"}'
    binary = request(b"\xff\xfeab")
    assert (binary.raw_body, binary.raw_body_encoding) == (
        base64.b64encode(b"\xff\xfeab").decode(),
        "base64",
    )
    assert binary.raw_body_bytes() == b"\xff\xfeab"
    # Flows read what they always did: the text, undecodable bytes replaced.
    assert binary.raw_body_text() == "\ufffd\ufffdab"
    # The debugger: base64 cut at the byte bound; UTF-8 text as text.
    assert stored_raw_body(binary, 3) == (
        base64.b64encode(b"\xff\xfea").decode(),
        True,
        "base64",
        4,
    )
    assert stored_raw_body(text, 100) == ('{"a": "é"}', False, "utf-8", 0)
    assert stored_raw_body(request(b"a\x00b"), 100) == (
        base64.b64encode(b"a\x00b").decode(),
        False,
        "base64",
        3,
    )
