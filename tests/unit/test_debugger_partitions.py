"""Time-carrying request ids and the partition arithmetic (pure functions)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.debugger.partitions import Range, missing_ranges, partition_name, slot_start
from services.debugger.requests_api import RequestListQuery, RequestsApi
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.http_api import Call
from shared.request_ids import (
    AFTER_ID,
    BEFORE_ID,
    new_request_id,
    received_window,
    request_id_time,
)
from shared.schemas.access import TokenIdentity

DAY = timedelta(days=1)
AT = datetime(2026, 12, 6, 22, 15, 30, 123000, tzinfo=UTC)


def test_a_request_id_is_a_uuid7_carrying_its_time_and_sorting_by_it() -> None:
    first, second = new_request_id(AT), new_request_id(AT + timedelta(milliseconds=1))
    assert len(first) == 32 and uuid.UUID(first).version == 7
    assert uuid.UUID(first).variant == uuid.RFC_4122
    assert request_id_time(first) == AT
    assert first < second  # time-ordered as text
    assert received_window(first) == (AT - BEFORE_ID, AT + AFTER_ID)


def test_ids_without_a_time_are_read_everywhere() -> None:
    for old in (
        uuid.uuid4().hex,
        str(uuid.uuid4()),
        "not-an-id",
        uuid.uuid5(uuid.NAMESPACE_URL, "x").hex,
    ):
        assert request_id_time(old) is None
        assert received_window(old) is None


def test_slots_align_on_the_epoch_and_are_named_by_their_start() -> None:
    assert slot_start(AT, DAY) == datetime(2026, 12, 6, tzinfo=UTC)
    assert slot_start(AT, timedelta(hours=6)) == datetime(2026, 12, 6, 18, tzinfo=UTC)
    assert partition_name(datetime(2026, 12, 6, tzinfo=UTC)) == "requests_p20261206"
    assert partition_name(datetime(2026, 12, 6, 18, tzinfo=UTC)) == "requests_p20261206_180000"


def test_missing_ranges_fill_every_slot_around_what_exists() -> None:
    day = datetime(2026, 12, 6, tzinfo=UTC)
    existing = [Range(day, day + DAY)]
    assert missing_ranges(existing, AT, AT + 2 * DAY, DAY) == [
        Range(day + DAY, day + 2 * DAY),
        Range(day + 2 * DAY, day + 3 * DAY),
    ]
    assert missing_ranges(existing, AT, AT, DAY) == []  # covered: nothing to do
    # The interval changed to 6 hours: the daily partition stays, the next ones are new.
    hours = timedelta(hours=6)
    assert missing_ranges(existing, AT, day + DAY + hours, hours) == [
        Range(day + DAY, day + DAY + hours),
        Range(day + DAY + hours, day + DAY + 2 * hours),
    ]
    # A day partition beside 6-hour ones made earlier: only the gap is created.
    made = [Range(day, day + hours)]
    assert missing_ranges(made, day, day, DAY) == [Range(day + hours, day + DAY)]


class Listings:
    """A store that remembers the window each listing asked for."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.pool = None  # the API's charts are built on it; never queried here

    async def list_for_flow(self, *_: Any, **query: Any) -> list[Any]:
        self.asked.append(query)
        return []


@pytest.mark.parametrize(
    ("given", "window"),
    [
        ({"match": '{"a": 1}'}, "default"),
        ({"header": ["X-Event:push"]}, "default"),
        ({"match": '{"a": 1}', "since": "2026-01-01T00:00:00Z"}, "given"),
        ({}, None),  # a plain listing covers everything retained
    ],
)
async def test_a_search_without_since_covers_the_search_window(
    given: dict[str, Any], window: str | None
) -> None:
    store = Listings()
    api = RequestsApi(
        store,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        limiter=WorkspaceLimiter(total=1, per_workspace=1, max_waiting=0, wait_s=0),
        statement_timeout_ms=1000,
        search_window_s=3600,
    )
    call: Call[RequestListQuery, None] = Call(
        request=None,  # type: ignore[arg-type]
        query=RequestListQuery.model_validate(given),
        body=None,
        resource=uuid.uuid4(),
        identity=TokenIdentity(token_id="t", workspace_id=str(uuid.uuid4()), scopes=[]),
    )
    before = datetime.now(UTC)
    await api.list(call)
    since = store.asked[0]["since"]
    if window == "default":
        assert before - timedelta(seconds=3601) < since <= datetime.now(UTC) - timedelta(hours=1)
    elif window == "given":
        assert since == datetime(2026, 1, 1, tzinfo=UTC)
    else:
        assert since is None
