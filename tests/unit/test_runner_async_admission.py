"""How `RunService` admits async runs at the prefetch window (services/runner/runs.py):
a run whose workspace is at its share is held in memory only within that workspace's
part of the window, else parked (published to the wait queue, its message settled);
runs delivered again are marked repeated and never run twice from their message; the
finished ones are reported to the ingress that queued them. The pool, the broker and
the database are fakes here; tests/integration/test_parked_runs.py uses the broker."""

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.drain_reports import DrainReports
from services.runner.flow_cache import CachedFlow
from services.runner.runs import (
    REPEATED_AFTER_CRASH,
    RunService,
    async_window,
    park_mark,
)
from services.runner.worker_protocol import FlowSnapshot, RunOutput
from shared.errors import Unavailable
from shared.messaging import naming
from shared.schemas.runs import RunFinished, RunResult, StartRun, StartRuns
from shared.service import Delivery, Retry

A, B = "workspace-a", "workspace-b"


class FakePool:
    """A workspace at its share (`full`) must wait; each run ends when the test says."""

    def __init__(self) -> None:
        self.full: set[str] = set()
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.asked: Counter[str] = Counter()

    def must_wait(self, workspace_id: str) -> bool:
        self.asked[workspace_id] += 1
        return workspace_id in self.full

    async def run_encoded(
        self, request_id: str, request: bytes, flow: FlowSnapshot, *_: Any
    ) -> RunOutput:
        self.started.append(request_id)
        gate = self.gates.setdefault(request_id, asyncio.Event())
        await gate.wait()
        now = datetime.now(UTC)
        result = RunResult(
            request_id=request_id,
            outcome="succeeded",
            status_code=200,
            content_type="application/json",
            body="{}",
            started_at=now,
            finished_at=now,
        )
        return RunOutput.of(result)

    def finish(self, request_id: str) -> None:
        self.gates.setdefault(request_id, asyncio.Event()).set()


class FakeFlows:
    def cached(self, flow_id: str, min_version: int) -> None:
        return None  # sync runs go the way of any run here (the direct path: elsewhere)

    async def get(self, flow_id: str, min_version: int) -> CachedFlow:
        snapshot = FlowSnapshot(id=flow_id, workspace_id="?", version=1, definition={})
        return CachedFlow(snapshot, snapshot.model_dump_json().encode(), timeout_s=30.0)


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.refuse = False
        # A message holding any of these is nacked (the batch publisher splits it).
        self.refuse_ids: set[str] = set()
        self.confirm_s = 0.0
        self.instance = "runner-1"

    async def publish(self, body: bytes, *, routing_key: str, **_: Any) -> None:
        await asyncio.sleep(self.confirm_s)
        if self.refuse:
            raise Unavailable("the message broker did not accept the request")
        if any(request_id.encode() in body for request_id in self.refuse_ids):
            raise Unavailable("nacked") from RuntimeError("Basic.Nack")
        self.published.append((routing_key, orjson.loads(body)))


class FakeFinishedRuns:
    def __init__(self) -> None:
        self.marked: set[str] = set()

    async def mark(self, request_id: str) -> None:
        self.marked.add(request_id)

    async def mark_all(self, request_ids: list[str]) -> None:
        self.marked.update(request_ids)

    def mark_soon(self, request_id: str) -> "asyncio.Future[None]":
        self.marked.add(request_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def settle(self, marks: list["asyncio.Future[None]"]) -> None:
        await asyncio.gather(*marks)

    async def which(self, request_ids: list[str]) -> set[str]:
        return self.marked & set(request_ids)


class FakeRecords:
    def __init__(self) -> None:
        self.finished: list[RunFinished] = []

    async def publish(self, item: RunFinished) -> None:
        self.finished.append(item)

    async def publish_encoded(self, encoded: bytes) -> None:
        self.finished.append(RunFinished.model_validate_json(encoded))


class Runner:
    def __init__(self, waiting_messages: int = 1, waiting_max: int = 16) -> None:
        self.pool = FakePool()
        self.broker = FakeBroker()
        self.finished_runs = FakeFinishedRuns()
        self.records = FakeRecords()
        self.drain = DrainReports(self.broker)  # type: ignore[arg-type]
        self.service = RunService(
            self.broker,  # type: ignore[arg-type]
            FakeFlows(),  # type: ignore[arg-type]
            self.pool,  # type: ignore[arg-type]
            self.records,  # type: ignore[arg-type]
            None,
            None,  # type: ignore[arg-type]
            self.finished_runs,  # type: ignore[arg-type]
            drain_reports=self.drain,
            waiting_messages_per_workspace=waiting_messages,
            waiting_messages_max=waiting_max,
        )

    def take(self, starts: list[StartRun], redelivered: bool = False) -> "asyncio.Task[None]":
        delivery = Delivery(redelivered, None, naming.ASYNC_RUNS_QUEUE, "StartRuns")
        return asyncio.create_task(self.service.on_async_runs(_runs(starts), delivery))

    def parked(self) -> list[dict[str, Any]]:
        """The runs published to the wait queue, in order."""
        return [
            item
            for key, body in self.broker.published
            if key == naming.ASYNC_RUNS_WAIT_QUEUE
            for item in body["items"]
        ]

    def recorded(self) -> dict[str, RunResult]:
        return {f.request.request_id: f.result for f in self.records.finished}


def _runs(starts: list[StartRun]) -> StartRuns:
    return StartRuns(items=starts)


def start(workspace: str, **fields: Any) -> StartRun:
    return StartRun(
        request=webhook_request(workspace_id=workspace, mode="async"),
        flow_version=1,
        origin=fields.pop("origin", "ingress-1"),
        **fields,
    )


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_runs_of_a_workspace_at_its_share_are_parked_at_once_and_the_others_run() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    a1, a2, b1 = start(A), start(A), start(B)
    handling = runner.take([a1, b1, a2])
    await settle()
    # A's two runs left in one message, while B's run (same message) still runs.
    assert runner.pool.started == [b1.request.request_id]
    parked = runner.parked()
    assert [p["request"]["request_id"] for p in parked] == [
        a1.request.request_id,
        a2.request.request_id,
    ]
    assert [p["parked"] for p in parked] == [1, 1]
    assert [p["origin"] for p in parked] == ["ingress-1", "ingress-1"]
    # Their message stays unacked for B's run: marked, so a redelivery skips them.
    assert runner.finished_runs.marked == {
        park_mark(a1.request.request_id, 1),
        park_mark(a2.request.request_id, 1),
    }
    assert not handling.done()
    runner.pool.finish(b1.request.request_id)
    await asyncio.wait_for(handling, 1)  # acked: every run recorded or parked
    assert set(runner.recorded()) == {b1.request.request_id}
    assert runner.service.runs_parked == 2


async def test_a_message_of_parked_runs_only_is_not_marked() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    once_parked = start(A, parked=3)
    await asyncio.wait_for(runner.take([once_parked, start(A)]), 1)
    assert [p["parked"] for p in runner.parked()] == [4, 1]
    assert runner.finished_runs.marked == set()  # acked right after the confirmed publish
    assert runner.pool.started == []


async def test_a_workspace_at_its_share_may_hold_one_message_of_the_window_waiting() -> None:
    runner = Runner(waiting_messages=1)
    runner.pool.full.add(A)
    first = [start(A), start(A)]
    holding = runner.take(first)
    await settle()
    # The first message waits in the pool for A's turn (both its runs: one message).
    assert runner.pool.started == [s.request.request_id for s in first]
    second = start(A)
    await asyncio.wait_for(runner.take([second]), 1)
    assert [p["request"]["request_id"] for p in runner.parked()] == [second.request.request_id]
    # B is not at its share: its run starts whatever A holds.
    b1 = start(B)
    b_handling = runner.take([b1])
    await settle()
    assert b1.request.request_id in runner.pool.started
    runner.pool.finish(b1.request.request_id)
    await asyncio.wait_for(b_handling, 1)
    # Once the held runs finished, the next A message may wait in memory again.
    for s in first:
        runner.pool.finish(s.request.request_id)
    await asyncio.wait_for(holding, 1)
    third = start(A)
    runner.take([third])
    await settle()
    assert runner.pool.started[-1] == third.request.request_id
    assert len(runner.parked()) == 1


async def test_all_workspaces_together_hold_at_most_the_cap_of_waiting_messages() -> None:
    runner = Runner(waiting_messages=5, waiting_max=2)
    workspaces = ["w1", "w2", "w3"]
    runner.pool.full.update(workspaces)
    starts = [start(w) for w in workspaces]
    for s in starts:
        runner.take([s])
    await settle()
    assert runner.pool.started == [s.request.request_id for s in starts[:2]]
    assert [p["request"]["request_id"] for p in runner.parked()] == [starts[2].request.request_id]


async def test_a_redelivered_message_runs_only_what_it_did_not_finish_or_park_marked_repeated() -> (
    None
):
    runner = Runner()
    done, parked_from_it, left = start(A), start(A), start(A)
    runner.finished_runs.marked = {
        done.request.request_id,
        park_mark(parked_from_it.request.request_id, 1),
    }
    runner.pool.finish(left.request.request_id)
    await asyncio.wait_for(runner.take([done, parked_from_it, left], redelivered=True), 1)
    assert runner.pool.started == [left.request.request_id]
    assert runner.recorded()[left.request.request_id].repeated == REPEATED_AFTER_CRASH


async def test_a_redelivered_message_is_split_and_each_copy_carries_the_repeat() -> None:
    runner = Runner()
    first, second = start(A), start(B)
    await asyncio.wait_for(runner.take([first, second], redelivered=True), 1)
    assert runner.pool.started == []
    split = [body["items"][0] for key, body in runner.broker.published]
    assert [s["request"]["request_id"] for s in split] == [
        first.request.request_id,
        second.request.request_id,
    ]
    assert {s["repeated"] for s in split} == {REPEATED_AFTER_CRASH}
    # A copy of it taken later (not redelivered itself) still says so in its result.
    copy = StartRun.model_validate(split[0])
    runner.pool.finish(first.request.request_id)
    await asyncio.wait_for(runner.take([copy]), 1)
    assert runner.recorded()[first.request.request_id].repeated == REPEATED_AFTER_CRASH


async def test_a_run_delivered_once_is_not_marked_repeated() -> None:
    runner = Runner()
    once = start(A)
    runner.pool.finish(once.request.request_id)
    await asyncio.wait_for(runner.take([once]), 1)
    assert runner.recorded()[once.request.request_id].repeated is None


async def test_runs_the_broker_would_not_park_make_the_message_come_again() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    runner.broker.refuse = True
    b1 = start(B)
    runner.pool.finish(b1.request.request_id)
    with pytest.raises(Retry, match="not parked"):
        await asyncio.wait_for(runner.take([start(A), b1]), 1)
    # B's run was recorded (and marked): the message delivered again will not run it.
    assert b1.request.request_id in runner.finished_runs.marked


async def test_runs_parked_before_the_broker_refused_are_marked_so_the_retry_skips_them() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    first, second, third = start(A), start(A), start(A)
    runner.broker.refuse_ids = {second.request.request_id}
    with pytest.raises(Retry, match="not parked"):
        await asyncio.wait_for(runner.take([first, second, third]), 1)
    # The refused message was split until the refused run stood alone: the others went.
    parked = {p["request"]["request_id"] for p in runner.parked()}
    assert parked == {first.request.request_id, third.request.request_id}
    assert runner.finished_runs.marked == {
        park_mark(first.request.request_id, 1),
        park_mark(third.request.request_id, 1),
    }
    runner.broker.refuse_ids = set()
    runner.broker.published.clear()
    second_done = runner.take([first, second, third], redelivered=True)
    await asyncio.wait_for(second_done, 1)
    # Delivered again: only the run that was not parked is handled (on its own: parked).
    assert [p["request"]["request_id"] for p in runner.parked()] == [second.request.request_id]


async def test_parked_runs_of_messages_handled_together_share_a_message() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    runner.broker.confirm_s = 0.05
    starts = [start(A) for _ in range(5)]
    first = runner.take(starts[:1])
    await asyncio.sleep(0.01)  # its parked run is being published
    rest = [runner.take([s]) for s in starts[1:]]
    await asyncio.wait_for(asyncio.gather(first, *rest), 1)
    sizes = [len(body["items"]) for _, body in runner.broker.published]
    assert sizes == [1, 4]  # the first alone, the rest while its confirm was awaited
    assert [p["request"]["request_id"] for p in runner.parked()] == [
        s.request.request_id for s in starts
    ]


async def test_finished_runs_are_reported_to_their_ingress_and_parked_ones_are_not() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    b1, b2, other = start(B), start(B), start(B, origin="ingress-2")
    replay = start(B, origin=None)
    for s in (b1, b2, other, replay):
        runner.pool.finish(s.request.request_id)
    await asyncio.wait_for(runner.take([b1, start(A), b2, other, replay]), 1)
    runner.broker.published.clear()
    await runner.drain.flush()
    reports = {key: body["request_ids"] for key, body in runner.broker.published}
    assert reports == {
        naming.runs_drained_key("ingress-1"): [b1.request.request_id, b2.request.request_id],
        naming.runs_drained_key("ingress-2"): [other.request.request_id],
    }
    await runner.drain.flush()  # nothing more to say
    assert len(runner.broker.published) == 2


async def test_sync_runs_are_never_parked() -> None:
    runner = Runner(waiting_messages=0)
    runner.pool.full.add(A)
    sync = StartRun(request=webhook_request(workspace_id=A), flow_version=1)
    runner.pool.finish(sync.request.request_id)

    class Replies:
        sent: list[str] = []

        def send(self, reply_to: str, correlation_id: str, kind: str, body: bytes) -> None:
            self.sent.append(correlation_id)

    runner.service.replies = Replies()  # type: ignore[assignment]
    delivery = Delivery(False, "reply-queue", naming.SYNC_RUNS_QUEUE, "StartRuns")
    await asyncio.wait_for(runner.service.on_sync_runs(_runs([sync]), delivery), 1)
    assert runner.pool.started == [sync.request.request_id]
    assert runner.pool.asked == Counter()
    assert runner.parked() == []


def test_the_derived_async_window_holds_every_running_run_and_room_besides() -> None:
    assert async_window(8 * 16) == 192  # 128 running, 48 waiting at most, 16 for arrivals
    assert async_window(2 * 16) == 64  # never below the former default
