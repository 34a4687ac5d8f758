"""BatchIngest's failure handling against a fake store: refused rows are found by
halving and stored reduced (or dropped), PostgreSQL away is waited out without losing
anything, unknown failures are retried a bounded number of times."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from harness.factories import webhook_request
from services.debugger.ingest import BatchIngest, classify
from services.debugger.records import Redaction
from services.debugger.store import FlowRow, RequestRow
from shared.messaging import naming
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    RunsProgressed,
    WebhookRequest,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Channel:
    """A consumer's channel as the broker sees it: delivery tags in order, and what
    settles them (an ack, `multiple` or not, or a reject). Settling a tag that is not
    outstanding is a channel error on a real broker (PRECONDITION_FAILED)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.settled: dict[int, str] = {}
        self.frames: list[tuple[str, int, bool]] = []

    def deliver(self) -> int:
        self.delivered += 1
        return self.delivered

    def settle(self, how: str, tag: int, multiple: bool) -> None:
        self.frames.append((how, tag, multiple))
        tags = range(1, tag + 1) if multiple else [tag]
        if not multiple and tag in self.settled:
            raise AssertionError(f"tag {tag} settled twice")
        for each in tags:
            self.settled.setdefault(each, how)


CHANNEL = [Channel()]


@pytest.fixture(autouse=True)
def fresh_channel() -> None:
    CHANNEL[0] = Channel()


class Message:
    def __init__(
        self, body: bytes, routing_key: str = naming.RUN_FINISHED, channel: Channel | None = None
    ) -> None:
        self.body = body
        self.routing_key = routing_key
        self.headers: dict[str, Any] = {}
        self.content_encoding: str | None = None  # sent as it is (shared/messaging/encoding.py)
        self.channel = channel or CHANNEL[0]
        self.delivery_tag = self.channel.deliver()

    @property
    def acked(self) -> bool:
        return self.channel.settled.get(self.delivery_tag) == "ack"

    @property
    def rejected(self) -> bool:
        return self.channel.settled.get(self.delivery_tag) == "reject"

    async def ack(self, multiple: bool = False) -> None:
        self.channel.settle("ack", self.delivery_tag, multiple)

    async def reject(self, requeue: bool = False) -> None:
        self.channel.settle("reject", self.delivery_tag, False)


class FakeStore:
    """Refuses (DataError) any batch holding a row with status 999, or a row whose id
    starts with "never"; raises `outage` for the first `outage_writes` writes."""

    def __init__(self, outage: BaseException | None = None, outage_writes: int = 0) -> None:
        self.rows: dict[str, RequestRow] = {}
        self.writes = 0
        self.outage = outage
        self.outage_writes = outage_writes

    async def write(self, rows: Sequence[RequestRow], flows: Sequence[FlowRow] = ()) -> None:
        self.writes += 1
        if self.outage is not None and self.writes <= self.outage_writes:
            raise self.outage
        for row in rows:
            if row.status_code == 999 or str(row.id).startswith("never"):
                raise asyncpg.DataError(f"invalid input for query argument: {row.id}")
        self.rows.update({row.id: row for row in rows})


def request_of(request_id: str, **fields: Any) -> WebhookRequest:
    """The events' request: one flow of one workspace, received at NOW."""
    return webhook_request(
        {"a": 1},
        request_id=request_id,
        flow_id="00000000-0000-0000-0000-000000000001",
        workspace_id="00000000-0000-0000-0000-000000000002",
        received_at=NOW,
        **fields,
    )


def event(*request_ids: str, status: int = 200) -> Message:
    items = [
        RunFinished(
            request=request_of(request_id, raw_body="body"),
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
    assert reduced.status_code is None
    assert reduced.error.startswith("not storable: DataError: invalid input")
    assert orjson.loads(reduced.truncated)["reduced"] is True
    assert store.rows["r17c"].status_code == 200 and store.rows["r17a"].error is None
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
    assert all(row.error is None for row in store.rows.values())  # nothing reduced
    assert store.writes == 9 and intake.write_failures == 8


async def test_an_unknown_failure_is_retried_a_bounded_number_of_times() -> None:
    class Flaky(FakeStore):
        async def write(self, rows: Sequence[RequestRow], flows: Sequence[FlowRow] = ()) -> None:
            if any(row.id == "odd" for row in rows) and not all(
                str(row.error).startswith("not storable") for row in rows
            ):
                self.writes += 1
                raise asyncpg.exceptions.QueryCanceledError("canceling statement")
            await super().write(rows, flows)

    store = Flaky()
    intake = ingest(store, retry_delay_s=0.001, unknown_retries=2)
    messages = [event("a"), event("odd"), event("b")]
    await asyncio.wait_for(feed(intake, messages), 5)
    assert sorted(store.rows) == ["a", "b", "odd"]
    assert store.rows["odd"].error.startswith("not storable: QueryCanceledError")
    # Retried for the whole batch only (twice), never again for its halves.
    assert intake.write_failures == 2


async def test_an_unreadable_message_is_rejected_alone() -> None:
    store = FakeStore()
    intake = ingest(store)
    first, bad, good = event("a"), Message(b"{not json"), event("b")
    await feed(intake, [first, bad, good])
    assert bad.rejected and not bad.acked
    assert first.acked and good.acked and sorted(store.rows) == ["a", "b"]
    # Rejected before the batch's multiple ack, which then leaves it alone.
    assert CHANNEL[0].frames == [("reject", 2, False), ("ack", 3, True)]


async def test_a_batch_is_acked_with_one_frame_after_its_commit() -> None:
    store = FakeStore()
    intake = BatchIngest(store, Redaction(), batch_size=10, linger_s=60)  # type: ignore[arg-type]
    messages = [event(f"r{n}") for n in range(25)]
    for message in messages[:10]:
        await intake.on_event(message)  # type: ignore[arg-type]
    # The first ten filled a batch: written, then acked up to the tenth at once.
    assert CHANNEL[0].frames == [("ack", 10, True)] and store.writes == 1
    for message in messages[10:]:
        await intake.on_event(message)  # type: ignore[arg-type]
    assert not messages[24].acked  # five wait for the next batch, unacked
    await intake.close(5)
    assert CHANNEL[0].frames == [("ack", 10, True), ("ack", 20, True), ("ack", 25, True)]
    assert all(m.acked for m in messages) and len(store.rows) == 25


async def test_a_batch_spanning_channels_acks_each_channel() -> None:
    store = FakeStore()
    intake = ingest(store)
    old, new = Channel(), Channel()  # a reconnect: deliveries on a new channel
    messages = [Message(event(f"o{n}").body, channel=old) for n in range(3)]
    messages += [Message(event(f"n{n}").body, channel=new) for n in range(2)]
    await feed(intake, messages)
    assert old.frames == [("ack", 3, True)] and new.frames == [("ack", 2, True)]
    assert all(m.acked for m in messages)


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


def progress(routing_key: str, *request_ids: str, resume_at: datetime | None = None) -> Message:
    items = [
        RunProgress(
            request=request_of(request_id, mode="async"),
            at=NOW,
            resume_at=resume_at,
        )
        for request_id in request_ids
    ]
    return Message(RunsProgressed(items=items).model_dump_json().encode(), routing_key)


async def test_progress_rows_are_written_whole_unless_the_outcome_is_in_the_batch() -> None:
    """`queued` and `running` are held unbuilt until the batch is written: where the
    run's outcome came in the same batch only the outcome is written; alone, they are
    written whole (the request's contents, for the listing and search while it runs)."""
    store = FakeStore()
    intake = ingest(store)
    messages = [
        progress(naming.REQUEST_QUEUED, "both", "queued-only", "running-only"),
        progress(naming.RUN_STARTED, "both", "running-only"),
        progress(naming.RUN_STARTED, "waiting", resume_at=NOW),
        event("both"),
    ]
    await feed(intake, messages)
    assert all(m.acked for m in messages) and store.writes == 1
    outcomes = {request_id: row.outcome for request_id, row in store.rows.items()}
    assert outcomes == {
        "both": "succeeded",
        "queued-only": "queued",
        "running-only": "running",
        "waiting": "waiting",
    }
    running = store.rows["running-only"]
    assert (running.source_rank, running.started_at, running.mode) == (1, NOW, "async")
    assert (running.raw_body, running.input) == ('{"a":1}', '{"a":1}')
    assert store.rows["waiting"].resume_at == NOW and store.rows["queued-only"].source_rank == 0


async def test_a_refused_progress_row_is_stored_reduced() -> None:
    store = FakeStore()
    intake = ingest(store)
    messages = [progress(naming.REQUEST_QUEUED, "fine", "never-storable"), event("other")]
    await feed(intake, messages)
    assert all(m.acked for m in messages)
    assert store.rows["fine"].outcome == "queued" and store.rows["other"].outcome == "succeeded"
    # The fake refuses any row of that id, the reduced one too: dropped, with a log.
    assert "never-storable" not in store.rows and (intake.reduced, intake.dropped) == (0, 1)


class CountingStore(FakeStore):
    """A FakeStore that also keeps each write's rows (id, outcome), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[list[tuple[str, str]]] = []

    async def write(self, rows: Sequence[RequestRow], flows: Sequence[FlowRow] = ()) -> None:
        await super().write(rows, flows)
        self.written.append([(row.id, row.outcome) for row in rows])


async def test_a_queued_row_waits_one_batch_for_its_outcome_and_is_never_written() -> None:
    """A batch written while an async request's `request.queued` is within its hold (a
    batch's linger) leaves it for the next batch; its `run.finished` comes in that one,
    so the request is written once, with its outcome. Nothing is acked before the write
    that holds it: the written messages after a held one wait for a later ack."""
    store = CountingStore()
    intake = BatchIngest(store, Redaction(), batch_size=4, linger_s=60)  # type: ignore[arg-type]
    queued = progress(naming.REQUEST_QUEUED, "async-1", "async-2")
    finished_before, finished_after = event("sync-1"), event("sync-2")
    for message in (queued, finished_before, finished_after):
        await intake.on_event(message)  # type: ignore[arg-type]
    # The batch size was reached: written without the held queued rows.
    assert store.written == [[("sync-1", "succeeded"), ("sync-2", "succeeded")]]
    # Written, but a multiple ack would settle the held message too: not acked yet.
    assert CHANNEL[0].frames == [] and intake.pending == 1
    outcome = event("async-1")
    await intake.on_event(outcome)  # type: ignore[arg-type]
    await intake.close(5)  # the end of the hold (shutdown: everything is written)
    assert store.written[1:] == [[("async-1", "succeeded"), ("async-2", "queued")]]
    assert CHANNEL[0].frames == [("ack", 4, True)] and intake.pending == 0
    assert all(m.acked for m in (queued, finished_before, finished_after, outcome))


async def test_a_held_queued_row_is_written_when_its_hold_ends() -> None:
    """With nothing else coming in, a held `queued` row is written (and acked) once its
    hold is over, in a batch of its own."""
    store = CountingStore()
    intake = BatchIngest(store, Redaction(), batch_size=1, linger_s=0.01)  # type: ignore[arg-type]
    queued = progress(naming.REQUEST_QUEUED, "alone")
    await intake.on_event(queued)  # type: ignore[arg-type]
    assert store.written == [] and not queued.acked  # the batch size was reached: held
    for _ in range(1000):
        if queued.acked:
            break
        await asyncio.sleep(0.005)
    assert store.written == [[("alone", "queued")]] and queued.acked
    await intake.close(5)


async def test_a_held_message_keeps_only_the_rows_no_outcome_replaced() -> None:
    """A `request.queued` message whose requests partly finished in the batch: the
    finished ones are written with their outcome now, the rest wait (and are written
    queued when nothing came for them)."""
    store = CountingStore()
    intake = BatchIngest(store, Redaction(), batch_size=4, linger_s=60)  # type: ignore[arg-type]
    queued = progress(naming.REQUEST_QUEUED, "done", "open")
    started = progress(naming.RUN_STARTED, "done")
    await intake.on_event(queued)  # type: ignore[arg-type]
    await intake.on_event(started)  # type: ignore[arg-type]
    await intake.on_event(event("done"))  # type: ignore[arg-type]
    assert store.written == [[("done", "succeeded")]] and CHANNEL[0].frames == []
    await intake.close(5)
    assert store.written[1:] == [[("open", "queued")]]
    assert store.rows["done"].outcome == "succeeded" and queued.acked and started.acked


async def test_written_messages_before_a_held_one_are_acked_at_once() -> None:
    """Only what comes after a held message on its channel waits: the batch's messages
    before it are acked with the batch, on every channel."""
    store = CountingStore()
    intake = BatchIngest(store, Redaction(), batch_size=4, linger_s=60)  # type: ignore[arg-type]
    other = Channel()
    elsewhere = Message(event("sync-2").body, channel=other)
    CHANNEL[0] = Channel()  # without the delivery that made the body
    first = event("sync-1")
    queued = progress(naming.REQUEST_QUEUED, "async-1")
    after = event("sync-3")
    for message in (first, elsewhere, queued, after):
        await intake.on_event(message)  # type: ignore[arg-type]
    assert CHANNEL[0].frames == [("ack", 1, True)] and other.frames == [("ack", 1, True)]
    assert not queued.acked and not after.acked
    await intake.close(5)
    assert CHANNEL[0].frames == [("ack", 1, True), ("ack", 3, True)]
    assert store.written[1:] == [[("async-1", "queued")]]
