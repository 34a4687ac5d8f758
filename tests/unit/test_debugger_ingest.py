"""BatchIngest's failure handling against a fake store: refused rows are found by
halving and stored reduced (or dropped), PostgreSQL away is waited out without losing
anything, unknown failures are retried a bounded number of times."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.debugger.ingest import BatchIngest, classify
from services.debugger.records import Redaction
from services.debugger.store import COLUMNS
from shared.messaging import naming
from shared.schemas.runs import RunFinished, RunResult, RunsFinished, WebhookRequest

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STATUS = COLUMNS.index("status_code")
ERROR = COLUMNS.index("error")


class Message:
    def __init__(self, body: bytes, routing_key: str = naming.RUN_FINISHED) -> None:
        self.body = body
        self.routing_key = routing_key
        self.headers: dict[str, Any] = {}
        self.acked = self.rejected = False

    async def ack(self) -> None:
        self.acked = True

    async def reject(self, requeue: bool = False) -> None:
        self.rejected = True


class FakeStore:
    """Refuses (DataError) any batch holding a row with status 999, or a row whose id
    starts with "never"; raises `outage` for the first `outage_writes` writes."""

    def __init__(self, outage: BaseException | None = None, outage_writes: int = 0) -> None:
        self.rows: dict[str, tuple[Any, ...]] = {}
        self.writes = 0
        self.outage = outage
        self.outage_writes = outage_writes

    async def write(
        self, rows: Sequence[tuple[Any, ...]], flows: Sequence[tuple[Any, ...]] = ()
    ) -> None:
        self.writes += 1
        if self.outage is not None and self.writes <= self.outage_writes:
            raise self.outage
        for row in rows:
            if row[STATUS] == 999 or str(row[0]).startswith("never"):
                raise asyncpg.DataError(f"invalid input for query argument: {row[0]}")
        self.rows.update({row[0]: row for row in rows})


def event(*request_ids: str, status: int = 200) -> Message:
    items = [
        RunFinished(
            request=WebhookRequest(
                request_id=request_id,
                flow_id="00000000-0000-0000-0000-000000000001",
                workspace_id="00000000-0000-0000-0000-000000000002",
                received_at=NOW,
                method="POST",
                path="/",
                query={},
                headers={},
                content_type=None,
                raw_body="body",
                input={"a": 1},
            ),
            result=RunResult(
                request_id=request_id,
                outcome="succeeded",
                status_code=999 if request_id.startswith("poison") else status,
                content_type="application/json",
                body="{}",
                started_at=NOW,
                finished_at=NOW,
            ),
        )
        for request_id in request_ids
    ]
    return Message(RunsFinished(items=items).model_dump_json().encode())


def ingest(store: FakeStore, **kw: Any) -> BatchIngest:
    return BatchIngest(store, Redaction(), batch_size=1000, linger_s=60, **kw)  # type: ignore[arg-type]


async def feed(intake: BatchIngest, messages: list[Message]) -> None:
    for message in messages:
        await intake.on_event(message)  # type: ignore[arg-type]
    await intake.close(5)


async def test_a_refused_row_is_found_and_stored_reduced() -> None:
    store = FakeStore()
    intake = ingest(store)
    messages = [event(f"r{n}a", f"r{n}b") for n in range(40)]
    messages[17] = event("r17a", "poison-1", "r17c")
    await feed(intake, messages)
    assert all(m.acked for m in messages)
    assert len(store.rows) == 81
    reduced = store.rows["poison-1"]
    assert reduced[STATUS] is None
    assert reduced[ERROR].startswith("not storable: DataError: invalid input")
    assert orjson.loads(reduced[COLUMNS.index("truncated")])["reduced"] is True
    assert store.rows["r17c"][STATUS] == 200 and store.rows["r17a"][ERROR] is None
    assert (intake.reduced, intake.dropped) == (1, 0)
    # Halving: a few writes, not one per message.
    assert store.writes < 30


async def test_a_row_refused_even_reduced_is_dropped_and_the_rest_stored() -> None:
    store = FakeStore()
    intake = ingest(store)
    messages = [event("a"), event("never-1", "b"), event("c")]
    await feed(intake, messages)
    assert sorted(store.rows) == ["a", "b", "c"]
    assert (intake.reduced, intake.dropped) == (0, 1)
    assert all(m.acked for m in messages)
    # Ingest goes on afterwards.
    later = event("d")
    await feed(intake, [later])
    assert "d" in store.rows and later.acked


async def test_postgres_away_is_waited_out_without_losing_or_splitting() -> None:
    outage = ConnectionRefusedError("connection refused")
    store = FakeStore(outage=outage, outage_writes=8)
    intake = ingest(store, retry_delay_s=0.001, max_retry_delay_s=0.002, unknown_retries=1)
    messages = [event("a", "b"), event("c")]
    await feed(intake, messages)
    assert sorted(store.rows) == ["a", "b", "c"]
    assert all(row[ERROR] is None for row in store.rows.values())  # nothing reduced
    assert store.writes == 9 and intake.write_failures == 8


async def test_an_unknown_failure_is_retried_a_bounded_number_of_times() -> None:
    class Flaky(FakeStore):
        async def write(
            self, rows: Sequence[tuple[Any, ...]], flows: Sequence[tuple[Any, ...]] = ()
        ) -> None:
            if any(row[0] == "odd" for row in rows) and not all(
                str(row[ERROR]).startswith("not storable") for row in rows
            ):
                self.writes += 1
                raise asyncpg.exceptions.QueryCanceledError("canceling statement")
            await super().write(rows, flows)

    store = Flaky()
    intake = ingest(store, retry_delay_s=0.001, unknown_retries=2)
    messages = [event("a"), event("odd"), event("b")]
    await asyncio.wait_for(feed(intake, messages), 5)
    assert sorted(store.rows) == ["a", "b", "odd"]
    assert store.rows["odd"][ERROR].startswith("not storable: QueryCanceledError")
    # Retried for the whole batch only (twice), never again for its halves.
    assert intake.write_failures == 2


async def test_an_unreadable_message_is_rejected_alone() -> None:
    store = FakeStore()
    intake = ingest(store)
    bad, good = Message(b"{not json"), event("a")
    await feed(intake, [bad, good])
    assert bad.rejected and not bad.acked
    assert good.acked and list(store.rows) == ["a"]


def test_classification() -> None:
    assert classify(asyncpg.DataError("x")) == "data"
    assert classify(asyncpg.exceptions.CharacterNotInRepertoireError("x")) == "data"
    assert classify(asyncpg.exceptions.StatementTooComplexError("x")) == "data"
    assert classify(asyncpg.exceptions.UniqueViolationError("x")) == "data"
    assert classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates")) == "data"
    assert classify(ConnectionRefusedError()) == "unavailable"
    assert classify(TimeoutError()) == "unavailable"
    assert classify(asyncpg.exceptions.ConnectionDoesNotExistError("x")) == "unavailable"
    assert classify(asyncpg.exceptions.CannotConnectNowError("x")) == "unavailable"
    assert classify(asyncpg.exceptions.AdminShutdownError("x")) == "unavailable"
    assert classify(asyncpg.exceptions.ReadOnlySQLTransactionError("x")) == "unavailable"
    assert classify(asyncpg.exceptions.UndefinedTableError("x")) == "unavailable"
    assert classify(asyncpg.InterfaceError("x")) == "unavailable"
    assert classify(asyncpg.exceptions.QueryCanceledError("x")) == "unknown"
    assert classify(asyncpg.exceptions.OutOfMemoryError("x")) == "unknown"
    assert classify(RuntimeError("x")) == "unknown"
