"""A sync message's runs on the direct path (services/runner/direct_runs.py, `DirectRuns`):
each is recorded when its result comes, answered once its record is confirmed (not
when the message's other runs are done), marked finished before the message is done;
a record the broker refuses is tried again before the answer; runs the path does not
serve (a dedup key, a flow not cached) and runs the pool fails go the way of any run.
The pool, the broker and the database are fakes; the e2e tests run the real thing."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from harness.factories import webhook_request
from services.runner.flow_cache import CachedFlow
from services.runner.runs import RunService
from services.runner.worker_protocol import FlowSnapshot, RunOutput
from shared.errors import Unavailable
from shared.messaging import naming
from shared.messaging.rpc import ERROR, RESULT
from shared.schemas.runs import RunResult, StartRun, StartRuns, request_json
from shared.service import Delivery

FLOW = FlowSnapshot(id="f1", workspace_id="w1", version=1, definition={})


class Flows:
    def __init__(self) -> None:
        self.cached_ids = {"f1"}
        self.read: list[str] = []

    def cached(self, flow_id: str, min_version: int) -> CachedFlow | None:
        if flow_id not in self.cached_ids:
            return None
        return CachedFlow(FLOW, FLOW.model_dump_json().encode(), timeout_s=30.0)

    async def get(self, flow_id: str, min_version: int) -> CachedFlow:
        self.read.append(flow_id)
        return CachedFlow(FLOW, FLOW.model_dump_json().encode(), timeout_s=30.0)


class Pool:
    """Each run's result comes when the test sets it (`end`)."""

    def __init__(self) -> None:
        self.runs: dict[str, asyncio.Future[Any]] = {}
        self.sent: dict[str, bytes] = {}
        self.awaited: list[str] = []  # runs that went the way of any run

    def submit_encoded(self, request_id: str, request: bytes, *_: Any) -> asyncio.Future[Any]:
        self.sent[request_id] = request
        return self.runs.setdefault(request_id, asyncio.get_running_loop().create_future())

    async def run_encoded(self, request_id: str, request: bytes, *_: Any) -> Any:
        self.awaited.append(request_id)
        return await self.submit_encoded(request_id, request)

    def end(self, request_id: str, error: BaseException | None = None) -> None:
        future = self.runs[request_id]
        if error is not None:
            future.set_exception(error)
            return
        now = datetime.now(UTC)
        future.set_result(
            RunOutput.of(
                RunResult(
                    request_id=request_id,
                    outcome="succeeded",
                    status_code=200,
                    content_type="application/json",
                    body=orjson.dumps({"id": request_id}).decode(),
                    started_at=now,
                    finished_at=now,
                )
            )
        )


class Records:
    """`run.finished`: confirmed at once, or refused while `refuse` is set."""

    def __init__(self) -> None:
        self.confirmed: list[dict[str, Any]] = []
        self.refuse = False

    def submit_encoded(self, encoded: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse:
            future.set_exception(Unavailable("the message broker did not accept the event"))
        else:
            self.confirmed.append(orjson.loads(encoded))
            future.set_result(None)
        return future

    async def publish_encoded(self, encoded: bytes) -> None:
        await self.submit_encoded(encoded)


class Marks:
    def __init__(self) -> None:
        self.handed: list[str] = []
        self.settled: list[str] = []

    def mark_soon(self, request_id: str) -> asyncio.Future[None]:
        self.handed.append(request_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def mark(self, request_id: str) -> None:
        self.handed.append(request_id)
        self.settled.append(request_id)

    async def settle(self, marks: list[asyncio.Future[None]]) -> None:
        await asyncio.gather(*marks)
        self.settled.extend(self.handed[len(self.settled) :])


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, reply_to: str, correlation_id: str, kind: str, body: bytes) -> None:
        self.sent.append((correlation_id, kind, orjson.loads(body)))


class Runner:
    def __init__(self) -> None:
        self.flows, self.pool, self.records = Flows(), Pool(), Records()
        self.marks, self.replies = Marks(), Replies()
        self.service = RunService(
            None,  # type: ignore[arg-type]
            self.flows,  # type: ignore[arg-type]
            self.pool,  # type: ignore[arg-type]
            self.records,  # type: ignore[arg-type]
            None,
            self.replies,  # type: ignore[arg-type]
            self.marks,  # type: ignore[arg-type]
        )

    def take(self, starts: list[StartRun]) -> "asyncio.Task[None]":
        delivery = Delivery(False, "reply-queue", naming.SYNC_RUNS_QUEUE, "StartRuns")
        return asyncio.create_task(self.service.on_sync_runs(StartRuns(items=starts), delivery))


def sync_start(**fields: Any) -> StartRun:
    return StartRun(request=webhook_request({"n": 1}, flow_id="f1"), flow_version=1, **fields)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_each_run_is_answered_once_its_record_is_confirmed_and_marked_before_the_ack() -> (
    None
):
    runner = Runner()
    first, second = sync_start(), sync_start()
    handling = runner.take([first, second])
    await settle()
    assert runner.pool.awaited == []  # no task awaits them: the direct path
    assert runner.pool.sent[first.request.request_id] == request_json(first.request)
    runner.pool.end(first.request.request_id)
    await settle()
    # The first is recorded and answered while the second still runs.
    assert [r["request"]["request_id"] for r in runner.records.confirmed] == [
        first.request.request_id
    ]
    assert runner.records.confirmed[0]["request"] == orjson.loads(request_json(first.request))
    assert runner.replies.sent == [
        (first.request.request_id, RESULT, runner.records.confirmed[0]["result"])
    ]
    assert not handling.done()
    runner.pool.end(second.request.request_id)
    await asyncio.wait_for(handling, 1)
    assert [reply[0] for reply in runner.replies.sent] == [
        first.request.request_id,
        second.request.request_id,
    ]
    assert runner.marks.settled == [first.request.request_id, second.request.request_id]


async def test_a_refused_record_is_tried_again_before_the_answer() -> None:
    runner = Runner()
    start = sync_start()
    handling = runner.take([start])
    await settle()
    runner.records.refuse = True
    runner.pool.end(start.request.request_id)
    await settle()
    assert runner.replies.sent == []  # not answered before its record is confirmed
    runner.records.refuse = False  # the broker is back: the retry (0.1 s later) goes through
    await asyncio.wait_for(handling, 2)
    assert [r["request"]["request_id"] for r in runner.records.confirmed] == [
        start.request.request_id
    ]
    assert [(reply[0], reply[1]) for reply in runner.replies.sent] == [
        (start.request.request_id, RESULT)
    ]
    assert runner.marks.settled == [start.request.request_id]


async def test_runs_the_direct_path_does_not_serve_go_the_way_of_any_run() -> None:
    runner = Runner()
    deduplicated, direct = sync_start(dedup_key="k1"), sync_start()
    handling = runner.take([deduplicated, direct])
    await settle()
    assert runner.pool.awaited == [deduplicated.request.request_id]  # its task awaits it
    assert set(runner.pool.sent) == {deduplicated.request.request_id, direct.request.request_id}
    runner.pool.end(deduplicated.request.request_id)
    runner.pool.end(direct.request.request_id)
    await asyncio.wait_for(handling, 1)
    runner.flows.cached_ids, runner.flows.read = set(), []  # not cached: read from the store
    uncached = sync_start()
    handling = runner.take([uncached])
    await settle()
    assert runner.flows.read == ["f1"]
    assert runner.pool.awaited == [deduplicated.request.request_id, uncached.request.request_id]
    runner.pool.end(uncached.request.request_id)
    await asyncio.wait_for(handling, 1)
    assert [reply[0] for reply in runner.replies.sent] == [
        deduplicated.request.request_id,
        direct.request.request_id,
        uncached.request.request_id,
    ]


async def test_a_run_the_pool_fails_is_answered_unavailable_and_the_message_settles() -> None:
    runner = Runner()
    failed, fine = sync_start(), sync_start()
    handling = runner.take([failed, fine])
    await settle()
    runner.pool.end(failed.request.request_id, RuntimeError("a bug"))
    runner.pool.end(fine.request.request_id)
    await asyncio.wait_for(handling, 1)
    answers = {reply[0]: (reply[1], reply[2]) for reply in runner.replies.sent}
    assert answers[failed.request.request_id] == (
        ERROR,
        {
            "kind": "unavailable",
            "message": "the runner cannot run the flow right now",
            "data": None,
        },
    )
    assert answers[fine.request.request_id][0] == RESULT
    assert runner.marks.settled == [fine.request.request_id]
