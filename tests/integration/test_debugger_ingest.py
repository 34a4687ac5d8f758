"""The debugger's intake on the real RabbitMQ and PostgreSQL: a batch holding rows that
PostgreSQL refuses stores all the others (and the refused ones reduced, with the
reason), oversized fields are stored cut with their sizes, ingest goes on afterwards,
and dead-lettered runs say why."""

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
import asyncpg
import orjson
import pytest

from services.debugger.app import DATABASE
from services.debugger.ingest import BatchIngest
from services.debugger.records import Redaction
from services.debugger.run_status import RunStatuses
from services.debugger.store import RequestStore
from shared.db import open_pool
from shared.messaging import encoding, naming, topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import FLOW_CHANGED
from shared.schemas.access import FlowChanged, FlowWebhookSettings
from shared.schemas.dedup import GetRunStatus
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    RunsProgressed,
    StartRun,
    StartRuns,
    StepTrace,
    WebhookRequest,
)

pytestmark = pytest.mark.integration

FLOW = "00000000-0000-0000-0000-0000000000f1"
WORKSPACE = "00000000-0000-0000-0000-0000000000a1"
NOW = datetime.now(UTC)
T = TypeVar("T")


def webhook_request(request_id: str, **kw: Any) -> WebhookRequest:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "flow_id": FLOW,
        "workspace_id": WORKSPACE,
        "received_at": NOW,
        "method": "POST",
        "path": f"/v1/flow-webhook/{FLOW}",
        "query": {},
        "headers": {"x-api-key": "s3cret", "content-type": "application/json"},
        "content_type": "application/json",
        "raw_body": '{"a": 1}',
        "input": {"a": 1},
        "mode": "async",
    }
    return WebhookRequest(**{**fields, **kw})


def finished(request: WebhookRequest, **kw: Any) -> RunFinished:
    fields: dict[str, Any] = {
        "request_id": request.request_id,
        "outcome": "succeeded",
        "status_code": 200,
        "content_type": "application/json",
        "body": "{}",
        "started_at": NOW,
        "finished_at": NOW,
    }
    return RunFinished(request=request, result=RunResult(**{**fields, **kw}))


@dataclass
class Debugger:
    broker: Broker
    pool: asyncpg.Pool
    ingest: BatchIngest

    async def publish(self, *items: RunFinished) -> None:
        body = RunsFinished(items=list(items)).model_dump_json().encode()
        await self.broker.publish(body, routing_key=naming.RUN_FINISHED, to_events=True)

    async def consume(self) -> None:
        await self.broker.consume(topology.DEBUGGER_EVENTS, self.ingest.on_event, prefetch=1000)

    async def row(self, request_id: str) -> dict[str, Any] | None:
        record = await self.pool.fetchrow(
            "SELECT *, truncated::text AS truncated_text FROM debugger.requests WHERE id = $1",
            request_id,
        )
        return dict(record) if record else None


@asynccontextmanager
async def debugger(
    amqp_url: str,
    database_url: str,
    redaction: Redaction,
    batch_size: int = 500,
    runner_user: str | None = None,
) -> AsyncIterator[Debugger]:
    pool = await open_pool(database_url, 4, DATABASE.schema, DATABASE.migrations)
    broker = Broker(amqp_url, "debugger-test")
    await broker.connect()
    intake = BatchIngest(
        RequestStore(pool),
        redaction,
        batch_size,
        linger_s=0.3,
        retry_delay_s=0.05,
        runner_user=runner_user,
    )
    try:
        yield Debugger(broker, pool, intake)
    finally:
        await broker.stop_consuming()
        await intake.close(5)
        await broker.close()
        await pool.close()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 15) -> T:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


CAPS = Redaction(
    max_raw_body_bytes=1000,
    max_input_bytes=4096,
    max_trace_bytes=65_536,
    max_step_value_bytes=4096,
    max_response_body_bytes=2000,
    max_error_bytes=500,
)


async def test_one_refused_row_does_not_cost_the_batch(amqp_url: str, database_url: str) -> None:
    async with debugger(amqp_url, database_url, CAPS) as dbg:
        # Everything is queued before the intake starts: one batch holds it all.
        ordinary = [f"ok-{n}" for n in range(30)]
        for request_id in ordinary[:15]:
            await dbg.publish(finished(webhook_request(request_id)))
        # A status code PostgreSQL's integer cannot hold: the row is refused whole.
        await dbg.publish(
            finished(webhook_request("poison-status"), status_code=2**40, error="odd"),
            finished(webhook_request("beside-poison")),
        )
        # An id too large for the primary key's index: refused even reduced -> dropped.
        huge_id = secrets.token_hex(10_000)
        await dbg.publish(finished(webhook_request(huge_id)))
        # NULs everywhere and every field over its cap: stored cleaned and cut.
        steps = [
            StepTrace(
                ref_id=f"s{n}",
                type="template",
                input={"template": "x\x00"},
                output={"value": [0] * 5000},
                started_at=NOW,
                duration_ms=1,
            )
            for n in range(40)
        ]
        big = webhook_request(
            "big",
            raw_body="\x00" + "b" * 100_000,
            input={"k\x00": ["v" * 100] * 1000},
            headers={"x-n\x00": "\x00", "cookie": "s3cret"},
        )
        await dbg.publish(
            finished(big, body="r\x00" * 1_000_000, error="e\x00" * 10_000, steps=steps)
        )
        for request_id in ordinary[15:]:
            await dbg.publish(finished(webhook_request(request_id)))
        await dbg.consume()

        async def all_written() -> bool:
            count = await dbg.pool.fetchval("SELECT count(*) FROM debugger.requests")
            return bool(count == len(ordinary) + 3 and dbg.ingest.dropped == 1)

        await eventually(all_written)
        for request_id in [*ordinary, "beside-poison"]:
            row = await dbg.row(request_id)
            assert row is not None and row["status_code"] == 200 and row["error"] is None
            assert orjson.loads(row["headers"])["x-api-key"] == "[redacted]"
        poisoned = await dbg.row("poison-status")
        assert poisoned is not None
        assert poisoned["outcome"] == "succeeded" and poisoned["status_code"] is None
        # Found while encoding the batch (asyncpg's words, with the column's name).
        assert poisoned["error"].startswith(
            "not storable: DataError: status_code: OverflowError: value out of int32"
        )
        assert poisoned["error"].endswith("; the run's error: odd")
        assert (poisoned["raw_body"], poisoned["input"], poisoned["steps"]) == ("", None, "[]")
        assert orjson.loads(poisoned["truncated_text"])["reduced"] is True
        assert await dbg.row(huge_id) is None
        assert (dbg.ingest.reduced, dbg.ingest.dropped) == (1, 1)

        row = await dbg.row("big")
        assert row is not None
        sizes = orjson.loads(row["truncated_text"])
        assert set(sizes) == {"raw_body", "input", "steps", "response_body", "error"}
        assert sizes["response_body"] == 2_000_000 and sizes["raw_body"] == 100_001
        assert len(row["response_body"].encode()) <= 2000 and "\x00" not in row["response_body"]
        # NUL cannot be in a text column: the body is kept byte for byte, in base64.
        assert row["raw_body_encoding"] == "base64" and row["raw_body_truncated"]
        assert base64.b64decode(row["raw_body"]) == b"\x00" + b"b" * 999
        stored_input = orjson.loads(row["input"])
        assert stored_input["truncated"] is True and stored_input["size"] == sizes["input"]
        trace = orjson.loads(row["steps"])
        assert trace[0]["output"]["truncated"] is True
        assert trace[-1]["type"] == "truncated" and trace[-1]["steps_omitted"] > 0
        assert len(row["steps"].encode()) <= 65_536 * 2  # jsonb text is spaced out
        assert "[truncated, 20000 bytes]" in row["error"]
        assert orjson.loads(row["headers"]) == {"x-n\ufffd": "\ufffd", "cookie": "[redacted]"}

        # Ingest goes on, in new batches.
        await dbg.publish(
            finished(webhook_request("after-1")), finished(webhook_request("after-2"))
        )
        assert await eventually(lambda: dbg.row("after-2"))
        assert await dbg.row("after-1") is not None


async def test_dead_lettered_runs_say_why(amqp_url: str, database_url: str) -> None:
    async with debugger(amqp_url, database_url, Redaction()) as dbg:
        await dbg.consume()
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        queue = await channel.get_queue(naming.ASYNC_RUNS_QUEUE)
        try:
            for request_id in ("rejected-run", "looping-run"):
                start = StartRun(request=webhook_request(request_id), flow_version=1)
                await dbg.broker.publish(
                    start.model_dump_json().encode(), routing_key=naming.ASYNC_RUNS_QUEUE
                )
            deliveries = 0
            while True:
                message = await queue.get(fail=False, timeout=5)
                if message is None:
                    break
                if (
                    StartRun.model_validate_json(encoding.body(message)).request.request_id
                    == "rejected-run"
                ):
                    await message.reject(requeue=False)  # what a runner does with a bad run
                else:
                    deliveries += 1  # a runner that dies mid-run, every time
                    await message.nack(requeue=True)
            assert deliveries == 6
        finally:
            await connection.close()

        rejected = await eventually(lambda: dbg.row("rejected-run"))
        looping = await eventually(lambda: dbg.row("looping-run"))
        assert rejected["outcome"] == looping["outcome"] == "failed"
        assert "dead-lettered (rejected)" in rejected["error"]
        assert (
            f"dead-lettered after 6 deliveries (delivery_limit) from {naming.ASYNC_RUNS_QUEUE}"
            in looping["error"]
        )
        # A run's own outcome, arriving later, still wins over the dead-letter record.
        await dbg.publish(finished(webhook_request("looping-run"), outcome="failed", error="own"))

        async def own_outcome() -> bool:
            row = await dbg.row("looping-run")
            return row is not None and row["error"] == "own"

        await eventually(own_outcome)
        assert uuid.UUID(str(looping["flow_id"])) == uuid.UUID(FLOW)


@pytest.mark.parametrize("compress_min_bytes", [0, 1])
async def test_a_dead_lettered_batch_of_runs_is_one_record_per_run(
    amqp_url: str, database_url: str, compress_min_bytes: int
) -> None:
    """Deflated or not (a dead-lettered message keeps its content encoding)."""
    async with debugger(amqp_url, database_url, Redaction()) as dbg:
        await dbg.consume()
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        queue = await channel.get_queue(naming.ASYNC_RUNS_QUEUE)
        try:
            runs = StartRuns(
                items=[
                    StartRun(request=webhook_request(f"batched-{n}"), flow_version=1)
                    for n in range(3)
                ]
            )
            body, content_encoding = encoding.compress(
                runs.model_dump_json().encode(), compress_min_bytes
            )
            await dbg.broker.publish(
                body, routing_key=naming.ASYNC_RUNS_QUEUE, content_encoding=content_encoding
            )
            message = await queue.get(timeout=5)
            assert message.content_encoding == ("deflate" if compress_min_bytes else None)
            await message.reject(requeue=False)  # dead-lettered whole
        finally:
            await connection.close()
        for n in range(3):
            row = await eventually(lambda n=n: dbg.row(f"batched-{n}"))  # type: ignore[misc]
            assert row["outcome"] == "failed" and "dead-lettered (rejected)" in row["error"]


async def test_the_rank_rule_holds_within_and_across_batches(
    amqp_url: str, database_url: str
) -> None:
    async with debugger(amqp_url, database_url, Redaction()) as dbg:
        request = webhook_request("ranked")
        outcome = finished(request, outcome="failed", error="own")
        queued = RunsProgressed(items=[RunProgress(request=request, at=NOW)])
        # In one batch: the outcome, then an older event of the same request.
        await dbg.publish(outcome)
        await dbg.broker.publish(
            queued.model_dump_json().encode(), routing_key=naming.REQUEST_QUEUED, to_events=True
        )
        await dbg.consume()
        row = await eventually(lambda: dbg.row("ranked"))
        assert row["outcome"] == "failed" and row["error"] == "own"
        # In a later batch: the queued event again, then a marker to wait for.
        await dbg.broker.publish(
            queued.model_dump_json().encode(), routing_key=naming.REQUEST_QUEUED, to_events=True
        )
        await dbg.publish(finished(webhook_request("marker")))
        await eventually(lambda: dbg.row("marker"))
        row = await dbg.row("ranked")
        assert row is not None and row["outcome"] == "failed" and row["error"] == "own"
        # A redelivered outcome (same rank) updates in place: still one row.
        await dbg.publish(finished(request, outcome="failed", error="own, again"))

        async def updated() -> bool:
            again = await dbg.row("ranked")
            return again is not None and again["error"] == "own, again"

        await eventually(updated)
        count = await dbg.pool.fetchval("SELECT count(*) FROM debugger.requests")
        assert count == 2


async def test_an_async_outcome_before_its_queued_event_and_without_started(
    amqp_url: str, database_url: str
) -> None:
    """The runner may send no `run.started` for a run that finished quickly, and the
    ingress's `request.queued` may come after the outcome: the row is the outcome's,
    whole, whatever order the events come in, and the status URL reads it done."""
    async with debugger(amqp_url, database_url, Redaction()) as dbg:
        step = StepTrace(
            ref_id="res1", type="template", output={"value": 1}, started_at=NOW, duration_ms=1
        )

        def events(request_id: str) -> tuple[RunFinished, bytes]:
            request = webhook_request(request_id)
            outcome = finished(request, body='{"done": 1}', steps=[step], answered_at=NOW)
            progress = RunsProgressed(items=[RunProgress(request=request, at=NOW)])
            return outcome, progress.model_dump_json().encode()

        async def progress(body: bytes, key: str = naming.REQUEST_QUEUED) -> None:
            await dbg.broker.publish(body, routing_key=key, to_events=True)

        # Apart: the outcome alone, then (later batches) its queued and started events.
        apart, apart_progress = events("apart")
        await dbg.publish(apart)
        await dbg.consume()
        await eventually(lambda: dbg.row("apart"))
        await progress(apart_progress)
        await dbg.publish(finished(webhook_request("marker-1")))
        await eventually(lambda: dbg.row("marker-1"))
        await progress(apart_progress, naming.RUN_STARTED)
        await dbg.publish(finished(webhook_request("marker-2")))
        await eventually(lambda: dbg.row("marker-2"))
        # Together, in one batch: the outcome, then its queued event.
        together, together_progress = events("together")
        await dbg.publish(together)
        await progress(together_progress)
        await eventually(lambda: dbg.row("together"))
        statuses = RunStatuses(dbg.pool)
        for request_id in ("apart", "together"):
            row = await dbg.row(request_id)
            assert row is not None
            assert (row["outcome"], row["source_rank"], row["status_code"]) == ("succeeded", 3, 200)
            assert (row["started_at"], row["finished_at"], row["answered_at"]) == (NOW, NOW, NOW)
            assert row["response_body"] == '{"done": 1}' and row["mode"] == "async"
            assert [s["ref_id"] for s in orjson.loads(row["steps"])] == ["res1"]
            status = await statuses.get(GetRunStatus(flow_id=FLOW, request_id=request_id))
            assert status.state == "done" and status.outcome == "succeeded"
            assert status.result is not None and status.result.body == '{"done": 1}'
        assert await dbg.pool.fetchval("SELECT count(*) FROM debugger.requests") == 4


async def test_flow_ownership_only_from_the_runners_user(amqp_url: str, database_url: str) -> None:
    """A `flow.changed` from a broker user other than the runners' (this test publishes as
    guest) is dropped, not stored: a forged one cannot hand a flow's records to another
    workspace."""
    forged, genuine = uuid.uuid4(), uuid.uuid4()
    workspace = uuid.uuid4()

    def change(flow_id: uuid.UUID) -> FlowChanged:
        ids = {"flow_id": str(flow_id), "workspace_id": str(workspace), "version": 1}
        settings = FlowWebhookSettings(**ids, status="live")
        return FlowChanged(**ids, token_hash="0" * 64, settings=settings)

    async with debugger(amqp_url, database_url, Redaction(), runner_user="flowhooks-runner") as dbg:
        await dbg.broker.publish_event(FLOW_CHANGED, change(forged))
        await dbg.consume()
        await eventually_rejected(dbg.ingest, 1)
    async with debugger(amqp_url, database_url, Redaction(), runner_user="guest") as dbg:
        await dbg.broker.publish_event(FLOW_CHANGED, change(genuine))
        await dbg.consume()
        stored = await _stored_flows(dbg.pool, 1)
    assert stored == [genuine]
    assert dbg.ingest.rejected == 0


async def eventually_rejected(ingest: BatchIngest, count: int) -> None:
    async with asyncio.timeout(10):
        while ingest.rejected < count:
            await asyncio.sleep(0.05)


async def _stored_flows(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    async with asyncio.timeout(10):
        while True:
            rows = await pool.fetch("SELECT flow_id FROM debugger.flows ORDER BY flow_id")
            if len(rows) >= count:
                return [row["flow_id"] for row in rows]
            await asyncio.sleep(0.05)
