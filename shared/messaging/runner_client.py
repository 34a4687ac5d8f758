"""`RunnerClient`: how the ingress (and the debugger's replay) hand webhook requests to
the runners, many to a message (group commit, `BatchPublisher`):

- `schedule(start)` (async flows): returns once the broker confirmed the persistent
  `StartRuns` message that holds it on the durable async queue; raises `Unavailable`
  otherwise (never a false 200).
- `run(start, timeout_s)` (sync flows): the `StartRuns` message carries this process's
  reply queue and expires in the queue when its last caller stops waiting (then it is
  dead-lettered as `run.expired`); the runner replies to each run as it finishes,
  grouping the replies that are ready together (`rpc.REPLIES`).
"""

import asyncio
from typing import TypeVar

from pydantic import BaseModel

from shared.errors import Timeout
from shared.messaging.batching import BatchPublisher, Unencodable
from shared.messaging.connection import Broker
from shared.messaging.contracts import ASYNC_RUNS, SYNC_RUNS
from shared.messaging.rpc import RpcClient
from shared.schemas.runs import RunResult, StartRun

Reply = TypeVar("Reply", bound=BaseModel)


class RunnerClient:
    def __init__(self, broker: Broker, rpc: RpcClient, *, max_items: int = 200) -> None:
        self.rpc = rpc
        self._async_runs: BatchPublisher[StartRun] = BatchPublisher(
            broker, ASYNC_RUNS, max_items=max_items
        )
        self._sync_runs: BatchPublisher[StartRun] = BatchPublisher(
            broker, SYNC_RUNS, reply_to=rpc.reply_queue, max_items=max_items
        )

    async def schedule(self, start: StartRun) -> None:
        await self._async_runs.publish(start)

    async def schedule_encoded(self, encoded: bytes) -> None:
        """`schedule` of a `StartRun` its caller encoded (services/ingress/run_messages.py)."""
        await self._async_runs.publish_encoded(encoded)

    async def schedule_together(self, starts: list[StartRun]) -> None:
        """All of `starts` confirmed in one message, or `Unavailable` and none queued."""
        await self._async_runs.publish_together(starts)

    async def run(
        self, start: StartRun, timeout_s: float, *, keep_queued: bool = False
    ) -> RunResult:
        """The run's result; `Timeout` if it did not come within `timeout_s`,
        `Unavailable` if the broker did not take the request. `keep_queued`: the message
        does not expire with the caller's wait (`on_timeout: "accept"`: it must run)."""
        try:
            encoded = start.model_dump_json().encode()
        except ValueError as exc:  # pydantic's serialisation error is one
            raise Unencodable(f"the event cannot be encoded: {str(exc)[:300]}") from None
        return await self.run_encoded(
            start.request.request_id, encoded, timeout_s, RunResult, keep_queued=keep_queued
        )

    async def run_encoded(
        self,
        request_id: str,
        encoded: bytes,
        timeout_s: float,
        reply_as: type[Reply],
        *,
        keep_queued: bool = False,
    ) -> Reply:
        """`run` of a `StartRun` its caller encoded (services/ingress/run_messages.py).
        `reply_as`: the model the `RunResult` reply is read as (`RunResult`, or one of a
        part of its fields, which reads only those)."""
        reply = self.rpc.expect(request_id)
        try:
            async with asyncio.timeout(timeout_s):
                await self._sync_runs.publish_encoded(
                    encoded, expires_in_s=None if keep_queued else timeout_s
                )
                result = await reply
        except TimeoutError:
            raise Timeout(
                f"the flow did not finish within {timeout_s:g} s (request {request_id})",
                data={"request_id": request_id},
            ) from None
        finally:
            self.rpc.forget(request_id)
        return self.rpc.unpack(result, reply_as)

    async def drain(self) -> None:
        await self._async_runs.drain()
        await self._sync_runs.drain()
