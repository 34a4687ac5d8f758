"""`webhook.dedup.key`: parsing the spec and reading the key from a request."""

import pytest

from shared.dedup_keys import MAX_KEY_CHARS, extract_key, parse_key_spec, resolve_pointer


def test_header_key_is_case_insensitive() -> None:
    spec = parse_key_spec("header:X-GitHub-Delivery")
    assert extract_key(spec, {"x-github-delivery": "72d3162e"}, {}) == "72d3162e"


def test_json_pointer_keys() -> None:
    document = {"event": {"id": "evt_1", "n": 7, "ok": True, "none": None, "l": [1, {"a/b": 2}]}}
    assert extract_key(parse_key_spec("json:/event/id"), {}, document) == "evt_1"
    assert extract_key(parse_key_spec("json:/event/n"), {}, document) == "7"
    assert extract_key(parse_key_spec("json:/event/ok"), {}, document) == "true"
    assert extract_key(parse_key_spec("json:/event/l/1/a~1b"), {}, document) == "2"
    assert resolve_pointer({"~x": 1}, parse_key_spec("json:/~0x").tokens) == 1


@pytest.mark.parametrize(
    ("spec", "headers", "document"),
    [
        ("header:Idempotency-Key", {}, {}),
        ("header:Idempotency-Key", {"idempotency-key": "  "}, {}),
        ("json:/event/id", {}, {"event": {}}),
        ("json:/event/id", {}, {"event": {"id": None}}),
        ("json:/event/id", {}, {"event": {"id": {"nested": 1}}}),
        ("json:/event/id", {}, {"event": ["x"]}),
        ("json:/list/01", {}, {"list": ["a", "b"]}),
        ("json:/list/5", {}, {"list": ["a"]}),
        ("json:/id", {}, "a string body"),
    ],
)
def test_a_request_without_its_key_has_none(
    spec: str, headers: dict[str, str], document: object
) -> None:
    assert extract_key(parse_key_spec(spec), headers, document) is None


def test_long_keys_are_hashed() -> None:
    key = extract_key(parse_key_spec("json:/id"), {}, {"id": "k" * (MAX_KEY_CHARS + 1)})
    assert key is not None and key.startswith("sha256:") and len(key) == 7 + 64


@pytest.mark.parametrize(
    "spec",
    ["", "header:", "header:bad name", "json:event/id", "json:/a~2", "query:x", "x" * 400],
)
def test_invalid_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_key_spec(spec)


def test_the_flow_definition_checks_dedup_and_on_timeout() -> None:
    from pydantic import ValidationError

    from services.runner.definition import WebhookTrigger

    trigger = WebhookTrigger.model_validate(
        {"dedup": {"key": "json:/id", "window_s": 60}, "on_timeout": "accept"}
    )
    assert trigger.dedup is not None and trigger.dedup.window_s == 60
    assert trigger.on_timeout == "accept"
    for bad in (
        {"dedup": {"key": "body:/id"}},
        {"dedup": {"key": "json:/id", "window_s": 0}},
        {"dedup": {"key": "json:/id", "extra": 1}},
        {"on_timeout": "later"},
    ):
        with pytest.raises(ValidationError):
            WebhookTrigger.model_validate(bad)
