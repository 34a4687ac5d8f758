"""Provider-default dedup keys (issue 22): the one table of where each provider mode's
delivery id is, `"dedup": null` kept apart from no `dedup` on save and in what the
ingress receives, and the ingress's resolution (`FlowWebhookSettings.dedup_of`)."""

from datetime import UTC, datetime
from typing import Any, cast, get_args

import orjson
import pytest

from services.ingress.dedup import request_key
from services.runner.access import FlowAccess
from services.runner.definition import parse_definition
from services.runner.store import FlowRow, FlowStore
from services.runner.templates import TemplateEngine
from services.runner.token_keys import TokenKey, TokenKeyRing
from shared.dedup_keys import PROVIDER_DEFAULT_KEYS, extract_key, parse_key_spec
from shared.messaging.connection import Broker
from shared.schemas.access import DedupSettings, FlowWebhookSettings, SigningSettings
from shared.schemas.runs import WebhookRequest
from shared.schemas.vocabulary import SigningMode

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def test_the_table_is_the_contracts() -> None:
    assert PROVIDER_DEFAULT_KEYS == {
        "github": "header:X-GitHub-Delivery",
        "stripe": "json:/id",
        "standard-webhooks": "header:webhook-id",
        "shopify": "header:X-Shopify-Webhook-Id",
        "slack": "json:/event_id",
        "twitch": "header:Twitch-Eventsub-Message-Id",
        "sns": "json:/MessageId",
        "zoom": "json:/event + json:/event_ts",
        "paddle": "json:/event_id",
    }


def test_every_entry_is_a_mode_and_a_valid_key() -> None:
    for mode, key in PROVIDER_DEFAULT_KEYS.items():
        assert mode in get_args(SigningMode), mode
        parse_key_spec(key)
    # The generic mode's senders have no common delivery id.
    assert "hmac" not in PROVIDER_DEFAULT_KEYS


@pytest.mark.parametrize(
    ("mode", "headers", "document", "key"),
    [
        ("github", {"x-github-delivery": "72d3162e-cc78-11e3"}, {}, "72d3162e-cc78-11e3"),
        ("stripe", {}, {"id": "evt_1NG8", "object": "event"}, "evt_1NG8"),
        ("standard-webhooks", {"webhook-id": "msg_2KW"}, {}, "msg_2KW"),
        ("shopify", {"x-shopify-webhook-id": "b54557e4"}, {}, "b54557e4"),
        ("slack", {}, {"type": "event_callback", "event_id": "Ev08MFMKH6"}, "Ev08MFMKH6"),
        ("twitch", {"twitch-eventsub-message-id": "befa7b53"}, {}, "befa7b53"),
        ("sns", {}, {"Type": "Notification", "MessageId": "22b80b92"}, "22b80b92"),
        (
            "zoom",
            {},
            {"event": "meeting.started", "event_ts": 1626230691572, "payload": {}},
            '["meeting.started","1626230691572"]',
        ),
        ("paddle", {}, {"event_id": "evt_01h8", "event_type": "x"}, "evt_01h8"),
    ],
)
def test_each_default_reads_the_providers_delivery_id(
    mode: str, headers: dict[str, str], document: dict[str, Any], key: str
) -> None:
    assert extract_key(parse_key_spec(PROVIDER_DEFAULT_KEYS[mode]), headers, document) == key


def test_a_slack_handshake_has_no_key() -> None:
    # url_verification carries no event_id: it is never a duplicate.
    spec = parse_key_spec(PROVIDER_DEFAULT_KEYS["slack"])
    assert extract_key(spec, {}, {"type": "url_verification", "challenge": "c"}) is None


def signed_webhook(mode: str = "github", **webhook: Any) -> dict[str, Any]:
    return {"auth": {"mode": mode, "secrets": ["secret-0123456789"]}, **webhook}


def saved_webhook(webhook: dict[str, Any]) -> dict[str, Any]:
    raw = {"name": "f", "webhook": webhook, "steps": []}
    saved = parse_definition(raw, TemplateEngine(), max_timeout_s=300).public()["webhook"]
    return cast(dict[str, Any], saved)


def test_no_dedup_and_dedup_null_are_stored_apart() -> None:
    assert "dedup" not in saved_webhook(signed_webhook())
    off = saved_webhook(signed_webhook(dedup=None))
    assert "dedup" in off and off["dedup"] is None
    own = saved_webhook(signed_webhook(dedup={"key": "json:/delivery"}))
    assert own["dedup"] == {"key": "json:/delivery", "window_s": 86_400}
    # Saved again as stored (a PATCH merges into it; a token rotation saves it whole):
    # the null stays.
    again = saved_webhook({**off, "auth": signed_webhook()["auth"]})
    assert "dedup" in again and again["dedup"] is None
    # Bearer flows too (null simply says "no dedup" there).
    assert saved_webhook({"dedup": None}) == {**saved_webhook({}), "dedup": None}


def test_a_combined_key_is_validated_on_save() -> None:
    from shared.errors import BadRequest

    combined = saved_webhook({"dedup": {"key": "json:/event + json:/event_ts"}})
    assert combined["dedup"]["key"] == "json:/event + json:/event_ts"
    with pytest.raises(BadRequest) as refused:
        saved_webhook({"dedup": {"key": "json:/event + json:event_ts"}})
    assert refused.value.data == {"field": "webhook.dedup.key"}
    assert "JSON pointer" in refused.value.message


def row(webhook: dict[str, Any]) -> FlowRow:
    return FlowRow(
        id="6f1c1a5e-0000-4000-8000-000000000001",
        workspace_id="6f1c1a5e-0000-4000-8000-000000000002",
        name="f",
        status="live",
        definition={"webhook": webhook, "steps": []},
        version=1,
        token_nonce="nonce",
        token_key_id=None,
        created_at=NOW,
        updated_at=NOW,
    )


def settings_sent(webhook: dict[str, Any]) -> FlowWebhookSettings:
    """What the runner tells auth (and so the ingress) about a flow stored so."""
    access = FlowAccess(
        cast(FlowStore, None), cast(Broker, None), TokenKeyRing((TokenKey.of("k"),)), 1
    )
    return access.changed(row(webhook)).settings


def sealed(mode: str) -> dict[str, Any]:
    return {"mode": mode, "secrets": [{"sealed": "fhs1.x.y", "hint": "\u2026abcd"}]}


def test_the_runner_says_whether_the_default_applies() -> None:
    default = settings_sent({"auth": sealed("github")})
    assert (default.dedup, default.dedup_default) == (None, True)
    off = settings_sent({"auth": sealed("github"), "dedup": None})
    assert (off.dedup, off.dedup_default) == (None, False)
    own = settings_sent({"auth": sealed("github"), "dedup": {"key": "json:/x", "window_s": 60}})
    assert (own.dedup, own.dedup_default) == (DedupSettings(key="json:/x", window_s=60), True)


def flow_settings(mode: str | None, **fields: Any) -> FlowWebhookSettings:
    signing = SigningSettings(mode=cast(SigningMode, mode), secrets=["s"]) if mode else None
    return FlowWebhookSettings(
        flow_id="f", workspace_id="w", version=1, status="live", signing=signing, **fields
    )


def test_the_ingress_resolves_the_default() -> None:
    assert flow_settings("github").dedup_of() == DedupSettings(
        key="header:X-GitHub-Delivery", window_s=86_400
    )
    assert flow_settings("stripe").dedup_of() == DedupSettings(key="json:/id", window_s=86_400)
    assert flow_settings("github", dedup_default=False).dedup_of() is None
    own = DedupSettings(key="header:Idempotency-Key", window_s=5)
    assert flow_settings("github", dedup=own).dedup_of() == own
    assert flow_settings("hmac").dedup_of() is None
    assert flow_settings(None).dedup_of() is None
    assert flow_settings(None, dedup=own).dedup_of() == own


def test_an_access_answer_stored_before_the_defaults_gets_them() -> None:
    # auth's copy of a flow saved by an older runner has no `dedup_default`: such a
    # runner never stored a null, so the mode's default applies at once.
    stored = orjson.loads(flow_settings("shopify").model_dump_json(exclude={"dedup_default"}))
    assert "dedup_default" not in stored
    settings = FlowWebhookSettings.model_validate(stored)
    assert settings.dedup_of() == DedupSettings(key="header:X-Shopify-Webhook-Id")


def request(headers: dict[str, str], document: Any) -> WebhookRequest:
    return WebhookRequest(
        request_id="r",
        flow_id="f",
        workspace_id="w",
        received_at=NOW,
        method="POST",
        path="/",
        query={},
        headers=headers,
        content_type="application/json",
        raw_body="{}",
        input=document,
    )


def test_request_key_uses_the_default() -> None:
    delivery = {"x-github-delivery": "d-1"}
    assert request_key(flow_settings("github"), request(delivery, {})) == "d-1"
    assert request_key(flow_settings("github", dedup_default=False), request(delivery, {})) is None
    assert request_key(flow_settings("github"), request({}, {})) is None
