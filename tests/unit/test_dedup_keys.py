"""`webhook.dedup.key`: parsing the spec (combined keys too) and reading the key from a
request."""

import hashlib

import pytest

from shared.dedup_keys import (
    HASHED_PREFIX,
    MAX_KEY_CHARS,
    CombinedKeySpec,
    extract_key,
    parse_key_spec,
    resolve_pointer,
)


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
    long = "k" * (MAX_KEY_CHARS + 1)
    key = extract_key(parse_key_spec("json:/id"), {}, {"id": long})
    # Unchanged from before: keys stored under it keep working.
    assert key == "sha256:" + hashlib.sha256(long.encode()).hexdigest()


def test_a_literal_hashed_looking_key_cannot_collide_with_a_long_one() -> None:
    spec = parse_key_spec("header:Idempotency-Key")
    long = "k" * (MAX_KEY_CHARS + 1)
    hashed = extract_key(spec, {"idempotency-key": long}, {})
    assert hashed is not None and hashed.startswith(HASHED_PREFIX)
    # Sent literally, the long key's stored form is hashed again: another key.
    literal = extract_key(spec, {"idempotency-key": hashed}, {})
    assert literal == HASHED_PREFIX + hashlib.sha256(hashed.encode()).hexdigest()
    assert literal != hashed
    # Other short keys are stored as they are.
    assert extract_key(spec, {"idempotency-key": "sha1:abc"}, {}) == "sha1:abc"


def test_keys_postgresql_cannot_store_are_hashed_apart() -> None:
    spec = parse_key_spec("json:/id")
    nul = extract_key(spec, {}, {"id": "a\x00b"})
    surrogate = extract_key(spec, {}, {"id": "a\ud800"})
    other_surrogate = extract_key(spec, {}, {"id": "a\ud801"})
    keys = {nul, surrogate, other_surrogate}
    assert len(keys) == 3
    assert all(key is not None and key.startswith(HASHED_PREFIX) for key in keys)


def test_list_indexes_are_ascii_digits() -> None:
    document = {"list": ["a", "b"]}
    assert extract_key(parse_key_spec("json:/list/1"), {}, document) == "b"
    # Superscript and other non-ASCII digits are no index (int() would refuse them).
    assert extract_key(parse_key_spec("json:/list/\u00b9"), {}, document) is None
    assert extract_key(parse_key_spec("json:/list/\u0661"), {}, document) is None


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


def test_a_combined_key_is_every_part_in_order() -> None:
    spec = parse_key_spec("json:/event + json:/event_ts")
    assert isinstance(spec, CombinedKeySpec)
    assert [part.name for part in spec.parts] == ["/event", "/event_ts"]
    zoom = {"event": "meeting.started", "event_ts": 1626230691572}
    assert extract_key(spec, {}, zoom) == '["meeting.started","1626230691572"]'
    # Another event of the same instant is another key.
    other = extract_key(spec, {}, {**zoom, "event": "meeting.ended"})
    assert other == '["meeting.ended","1626230691572"]'
    mixed = parse_key_spec("header:X-Shop + json:/id")
    assert extract_key(mixed, {"x-shop": "s1"}, {"id": 7}) == '["s1","7"]'
    # Parts cannot run into each other: "a + b" and "a" + "b" differ.
    assert extract_key(mixed, {"x-shop": "a,b"}, {"id": "c"}) != extract_key(
        mixed, {"x-shop": "a"}, {"id": "b,c"}
    )


@pytest.mark.parametrize(
    "document", [{"event": "meeting.started"}, {"event_ts": 1}, {"event": "", "event_ts": 1}]
)
def test_a_combined_key_with_a_part_missing_is_no_key(document: dict[str, object]) -> None:
    assert extract_key(parse_key_spec("json:/event + json:/event_ts"), {}, document) is None


def test_combined_keys_are_hashed_like_any_key() -> None:
    spec = parse_key_spec("json:/a + json:/b")
    key = extract_key(spec, {}, {"a": "x" * MAX_KEY_CHARS, "b": "y"})
    expected = '["' + "x" * MAX_KEY_CHARS + '","y"]'
    assert key == HASHED_PREFIX + hashlib.sha256(expected.encode()).hexdigest()
    surrogate = extract_key(spec, {}, {"a": "a\ud800", "b": "y"})
    assert surrogate is not None and surrogate.startswith(HASHED_PREFIX)


def test_a_pointer_holding_a_plus_stays_one_pointer() -> None:
    # Only " + " before another part's `header:` or `json:` combines (stored flows'
    # pointers keep their meaning).
    spec = parse_key_spec("json:/a + b")
    assert not isinstance(spec, CombinedKeySpec)
    assert extract_key(spec, {}, {"a + b": 1}) == "1"
    assert not isinstance(parse_key_spec("header:A+json"), CombinedKeySpec)


@pytest.mark.parametrize(
    "spec",
    [
        "json:/a + json:b",
        "json:/a + header:bad name",
        "header:A + header:B + header:C + header:D + header:E",
    ],
)
def test_invalid_combined_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_key_spec(spec)
