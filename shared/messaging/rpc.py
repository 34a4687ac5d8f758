"""JSON RPC over RabbitMQ.

A call is one persistent message on the server's queue with `type` = method name,
`correlation_id`, `reply_to` = the caller's own reply queue, and an `expiration` equal
to the caller's timeout (a call nobody picked up in time is dropped, not run late).
The reply's `type` is `result` (body: the response model) or `error` (body:
`{"kind", "message", "data"}`, raised again at the caller as the same `ApiError`).

Replies use one classic exclusive queue per calling process rather than direct
reply-to: RabbitMQ advises a reply queue per requester beyond a few hundred messages a
second, and the queue outlives a single channel (docs/architecture.md).
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from shared.errors import ApiError, BadRequest, InternalError, Timeout, Unavailable, error_from_kind
from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.messaging.topology import QueueSpec

log = structlog.get_logger(__name__)

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

RESULT, ERROR = "result", "error"


class RpcClient:
    def __init__(self, broker: Broker, default_timeout_s: float) -> None:
        self.broker = broker
        self.default_timeout_s = default_timeout_s
        self.reply_queue = naming.reply_queue_name(broker.service, broker.instance)
        self._pending: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

    async def start(self) -> None:
        # no_ack: a reply is useful only to the waiting future, never redelivered.
        await self.broker.consume(self.reply_queue, self._on_reply, prefetch=1000, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def call(
        self,
        queue: str,
        method: str,
        request: BaseModel,
        response_model: type[Resp],
        *,
        timeout_s: float | None = None,
        correlation_id: str | None = None,
    ) -> Resp:
        """Raises the remote `ApiError`, `Timeout` when no answer came in time, or
        `Unavailable` when the broker did not take the call or nobody serves `queue`."""
        timeout = timeout_s if timeout_s is not None else self.default_timeout_s
        correlation_id = correlation_id or uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await self.broker.publish(
                request.model_dump_json().encode(),
                routing_key=queue,
                message_type=method,
                correlation_id=correlation_id,
                reply_to=self.reply_queue,
                expiration_s=timeout,
            )
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise Timeout(f"{method} did not answer within {timeout:g} s") from None
        finally:
            self._pending.pop(correlation_id, None)
        if reply.type == ERROR:
            error = orjson.loads(reply.body)
            raise error_from_kind(error["kind"], error["message"], error.get("data"))
        return response_model.model_validate_json(reply.body)


@dataclass(frozen=True)
class _Method:
    request_model: type[BaseModel]
    handler: Callable[[Any], Awaitable[BaseModel]]


class RpcServer:
    """Serves the methods registered on it from one queue; replicas compete for calls."""

    def __init__(self, broker: Broker, queue: QueueSpec, prefetch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self._methods: dict[str, _Method] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def register(
        self, method: str, request_model: type[Req], handler: Callable[[Req], Awaitable[BaseModel]]
    ) -> None:
        self._methods[method] = _Method(request_model, handler)

    async def start(self) -> None:
        await self.broker.consume(self.queue, self._on_call, prefetch=self.prefetch)

    async def wait_idle(self, timeout_s: float) -> None:
        """Graceful shutdown: wait for the calls being served (after stop_consuming)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("rpc_calls_still_running", count=self._in_flight)

    async def _on_call(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        structlog.contextvars.bind_contextvars(request_id=message.correlation_id)
        try:
            reply_type, body = await self._dispatch(message)
            if message.reply_to:
                try:
                    await self.broker.publish(
                        body,
                        routing_key=message.reply_to,
                        confirm=False,
                        persistent=False,
                        correlation_id=message.correlation_id,
                        message_type=reply_type,
                    )
                except Unavailable:
                    log.warning("rpc_reply_lost", method=message.type)
            await message.ack()
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _dispatch(self, message: AbstractIncomingMessage) -> tuple[str, bytes]:
        method = self._methods.get(message.type or "")
        try:
            if method is None:
                raise BadRequest(f"unknown RPC method {message.type!r}")
            try:
                request = method.request_model.model_validate_json(message.body)
            except ValidationError as exc:
                raise BadRequest(
                    f"invalid {message.type} request: {exc.error_count()} errors"
                ) from exc
            result = await method.handler(request)
            return RESULT, result.model_dump_json().encode()
        except ApiError as exc:
            error: ApiError = exc
        except Exception:
            log.exception("rpc_handler_crashed", method=message.type)
            error = InternalError("internal error")
        return ERROR, orjson.dumps(
            {"kind": error.kind, "message": error.message, "data": error.data}
        )
