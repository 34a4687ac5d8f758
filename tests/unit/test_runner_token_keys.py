"""The flow-token key ring: parsing FLOWHOOKS_RUNNER_TOKEN_KEYS, which keys' hashes a
flow publishes, and which of them auth accepts."""

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from pydantic import ValidationError

from services.auth.store import FlowAccess as AuthFlowAccess
from services.runner.access import FlowAccess
from services.runner.flow_tokens import flow_token
from services.runner.settings import RunnerSettings
from services.runner.store import FlowRow, FlowStore
from services.runner.token_keys import TokenKey, TokenKeyRing, key_id, parse_ring
from shared.bearer import hash_token
from shared.messaging.connection import Broker
from shared.schemas.access import FlowWebhookSettings, TokenKeyState, TokenRingState

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_ring_lists_the_current_key_first_then_previous_ones() -> None:
    ring = parse_ring(" key-b , key-a@2030-01-31T00:00:00Z,key-old")
    assert [key.secret for key in ring.keys] == ["key-b", "key-a", "key-old"]
    assert ring.current.secret == "key-b"
    assert [key.not_after for key in ring.keys] == [
        None,
        datetime(2030, 1, 31, tzinfo=UTC),
        None,
    ]
    assert [key.key_id for key in ring.keys] == [
        key_id("key-b"),
        key_id("key-a"),
        key_id("key-old"),
    ]
    # A key id names a key without revealing it, and differs per key.
    assert len({key.key_id for key in ring.keys}) == 3
    assert all("key" not in key.key_id for key in ring.keys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "key 1 of the key ring is empty"),
        ("key-b,", "key 2 of the key ring is empty"),
        ("key-b,,key-a", "key 2 of the key ring is empty"),
        ("@2030-01-01T00:00Z", "key 1 of the key ring is empty"),
        ("key-b@2030-01-01T00:00Z,key-a", "the current (first) key cannot have an end time"),
        ("key-b,key-a@tomorrow", "key 2: the end time after '@' is not an ISO 8601 time"),
        ("key-b,key-a@2030-01-01T00:00", "key 2: the end time needs a zone"),
        ("key-b,key-a,key-b", "a key appears twice in the key ring"),
    ],
)
def test_a_bad_ring_is_refused_without_showing_a_key(text: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_ring(text)
    assert str(refused.value).startswith(message)
    assert "key-b" not in str(refused.value) and "key-a" not in str(refused.value)


def test_a_key_never_shows_in_a_repr() -> None:
    assert "sekrit" not in repr(parse_ring("sekrit-current,sekrit-previous"))


def test_the_fingerprint_changes_with_keys_order_and_end_times() -> None:
    base = parse_ring("b,a").fingerprint
    assert parse_ring("b, a").fingerprint == base
    others = {
        parse_ring("a,b").fingerprint,
        parse_ring("b").fingerprint,
        parse_ring("c,b,a").fingerprint,
        parse_ring("b,a@2030-01-01T00:00Z").fingerprint,
        parse_ring("b,a@2030-01-02T00:00Z").fingerprint,
    }
    assert base not in others and len(others) == 5


def test_issuers_since_the_key_a_nonce_was_picked_under() -> None:
    ring = parse_ring("c,b,a")
    ids = {key.secret: key.key_id for key in ring.keys}
    assert [k.secret for k in ring.issuers_since(ids["c"])] == ["c"]
    assert [k.secret for k in ring.issuers_since(ids["b"])] == ["c", "b"]
    assert [k.secret for k in ring.issuers_since(ids["a"])] == ["c", "b", "a"]
    # Before the ring existed, or under a key since dropped: every key of the ring.
    assert [k.secret for k in ring.issuers_since(None)] == ["c", "b", "a"]
    assert [k.secret for k in ring.issuers_since(key_id("dropped"))] == ["c", "b", "a"]


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWHOOKS_RUNNER_TOKEN_KEYS", raising=False)
    monkeypatch.delenv("FLOWHOOKS_RUNNER_TOKEN_KEY", raising=False)


@pytest.mark.usefixtures("no_key_env")
def test_settings_take_the_ring_or_the_former_single_key() -> None:
    ring = RunnerSettings(runner_token_keys="b,a").token_ring()
    assert [key.secret for key in ring.keys] == ["b", "a"]
    # The former variable is one key, taken whole (it never had the ring's syntax).
    single = RunnerSettings(runner_token_key="one,key@x").token_ring()
    assert [key.secret for key in single.keys] == ["one,key@x"]


@pytest.mark.usefixtures("no_key_env")
def test_settings_refuse_both_variables_none_or_a_bad_ring() -> None:
    with pytest.raises(ValidationError, match="not both"):
        RunnerSettings(runner_token_keys="b,a", runner_token_key="a")
    with pytest.raises(ValidationError, match="FLOWHOOKS_RUNNER_TOKEN_KEYS is required"):
        RunnerSettings()
    with pytest.raises(ValidationError, match="cannot have an end time") as refused:
        RunnerSettings(runner_token_keys="sekrit-current@2030-01-01T00:00Z,sekrit-previous")
    # Not even pydantic's shortened input ('se...ious'), which shows a key's ends.
    assert "sekrit" not in str(refused.value) and "input_value" not in str(refused.value)


def flow(token_key_id: str | None) -> FlowRow:
    return FlowRow(
        id="6f1c1a5e-0000-4000-8000-000000000001",
        workspace_id="6f1c1a5e-0000-4000-8000-000000000002",
        name="f",
        status="live",
        definition={"webhook": {}, "steps": []},
        version=3,
        token_nonce="nonce",
        token_key_id=token_key_id,
        created_at=NOW,
        updated_at=NOW,
    )


def access(ring: TokenKeyRing) -> FlowAccess:
    # changed() and token() use neither the store nor the broker.
    return FlowAccess(cast(FlowStore, None), cast(Broker, None), ring, generation=7)


def test_a_change_carries_the_hash_under_each_key_that_may_have_shown_a_token() -> None:
    ring = TokenKeyRing(
        (TokenKey.of("c"), TokenKey.of("b", NOW), TokenKey.of("a")),
    )
    runner = access(ring)

    legacy = runner.changed(flow(None))
    shown = flow_token("c", legacy.flow_id, "nonce")
    assert runner.token(flow(None)) == shown
    assert legacy.token_hash == hash_token(shown)
    assert legacy.token_hashes == {
        key.key_id: hash_token(flow_token(key.secret, legacy.flow_id, "nonce")) for key in ring.keys
    }
    assert legacy.ring == TokenRingState(
        generation=7,
        keys=[
            TokenKeyState(key_id=key_id("c")),
            TokenKeyState(key_id=key_id("b"), not_after=NOW),
            TokenKeyState(key_id=key_id("a")),
        ],
    )
    # A nonce picked under the current key: no previous key's token was ever shown.
    fresh = runner.changed(flow(key_id("c")))
    assert fresh.token_hashes == {key_id("c"): hash_token(shown)}


def auth_view(hashes: dict[str, str], ring: TokenRingState | None) -> AuthFlowAccess:
    settings = FlowWebhookSettings(flow_id="f", workspace_id="w", version=1, status="live")
    return AuthFlowAccess(hashes, settings, ring)


def test_auth_accepts_only_the_ring_keys_hashes_until_their_end() -> None:
    hashes = {"": "h-legacy", "k-new": "h-new", "k-old": "h-old", "k-dropped": "h-dropped"}
    # No ring announced yet (an upgrade in progress): every hash counts.
    assert sorted(auth_view(hashes, None).accepted_hashes(NOW)) == [
        ("h-dropped", None),
        ("h-legacy", None),
        ("h-new", None),
        ("h-old", None),
    ]
    later = NOW + timedelta(seconds=1)
    ring = TokenRingState(
        generation=2,
        keys=[TokenKeyState(key_id="k-new"), TokenKeyState(key_id="k-old", not_after=later)],
    )
    view = auth_view(hashes, ring)
    assert sorted(view.accepted_hashes(NOW)) == [("h-new", None), ("h-old", later)]
    # From its end time on, the previous key's token is refused.
    assert view.accepted_hashes(later) == [("h-new", None)]
