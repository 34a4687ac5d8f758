"""JSON RPC over RabbitMQ.

A call is one persistent message on the server's queue with `type` = method name,
`correlation_id`, `reply_to` = the caller's own reply queue, and an `expiration` equal
to the caller's timeout (a call nobody picked up in time is dropped, not run late).
The reply's `type` is `result` (body: the response model) or `error` (body:
`{"kind", "message", "data"}`, raised again at the caller as the same `ApiError`).
A server that answers many calls of one caller at once may group the replies in one
message of type `replies` (`{"items": [{"correlation_id", "type", "body"}]}`); the
client resolves each waiting call by its correlation id (`expect`, `unpack`).

Replies use one classic exclusive queue per calling process rather than direct
reply-to: RabbitMQ advises a reply queue per requester beyond a few hundred messages a
second, and the queue outlives a single channel (docs/architecture.md).
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import Histogram
from pydantic import BaseModel, ValidationError

from shared import tracing
from shared.errors import ApiError, BadRequest, InternalError, Timeout, Unavailable, error_from_kind
from shared.messaging import encoding, naming
from shared.messaging.connection import Broker
from shared.messaging.contracts import Rpc

log = structlog.get_logger(__name__)

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

RESULT, ERROR = "result", "error"
# A message of many replies to one caller: {"items": [{"correlation_id", "type", "body"}]}.
REPLIES = "replies"


class Reply(NamedTuple):
    """A tuple rather than a frozen dataclass: one is made per reply, and a frozen
    dataclass's constructor sets each field through `object.__setattr__`."""

    type: str  # RESULT or ERROR
    body: Any  # decoded JSON


def reply_item(correlation_id: str, reply_type: str, body: bytes) -> bytes:
    """One reply of a grouped reply message (`type` = `REPLIES`), encoded."""
    return (
        b'{"correlation_id":'
        + orjson.dumps(correlation_id)
        + b',"type":'
        + orjson.dumps(reply_type)
        + b',"body":'
        + body
        + b"}"
    )


class UndeclaredCall(Exception):
    """Not in the service's declared `calls` (`ServiceSpec.broker`)."""


class RpcClient:
    def __init__(
        self, broker: Broker, default_timeout_s: float, duration: Histogram | None = None
    ) -> None:
        self.broker = broker
        self.default_timeout_s = default_timeout_s
        # `flowhooks_rpc_duration_seconds{method}` (shared/metrics.py); None: not measured.
        self.duration = duration
        self.reply_queue = naming.reply_queue_name(broker.service, broker.instance)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        # The methods this service declares it calls (the kernel sets them from its
        # `ServiceSpec`); None: any.
        self.may_call: frozenset[str] | None = None

    async def start(self) -> None:
        # no_ack: a reply is useful only to the waiting future, never redelivered.
        await self.broker.consume(self.reply_queue, self._on_reply, prefetch=1000, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            # Replies are never compressed today; read like every delivery all the same.
            raw = encoding.body(message)
        except encoding.UnreadableBody as exc:  # its waiter times out, as for a lost reply
            log.warning("rpc_reply_unreadable", error=repr(exc))
            return
        if message.type == REPLIES:
            # A grouped reply (often tens of runs' results): every waiter resolved in
            # one loop.
            pending = self._pending
            for item in orjson.loads(raw)["items"]:
                future = pending.pop(item["correlation_id"], None)
                if future is not None and not future.done():
                    future.set_result(Reply(item["type"], item["body"]))
        else:
            self._resolve(message.correlation_id or "", Reply(message.type or "", raw))

    def _resolve(self, correlation_id: str, reply: Reply) -> None:
        future = self._pending.pop(correlation_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def expect(self, correlation_id: str) -> asyncio.Future[Reply]:
        """A future for the reply to `correlation_id` (for callers that send the request
        themselves, e.g. in a batch); `forget` it when done waiting."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        self._pending.pop(correlation_id, None)

    @staticmethod
    def unpack(reply: Reply, response_model: type[Resp]) -> Resp:
        """The reply's response, or the remote `ApiError` raised again."""
        body = orjson.loads(reply.body) if isinstance(reply.body, bytes) else reply.body
        if reply.type == ERROR:
            raise error_from_kind(body["kind"], body["message"], body.get("data"))
        return response_model.model_validate(body)

    async def call(
        self,
        rpc: Rpc[Req, Resp],
        request: Req,
        *,
        timeout_s: float | None = None,
        correlation_id: str | None = None,
    ) -> Resp:
        """Raises the remote `ApiError`, `Timeout` when no answer came in time, or
        `Unavailable` when the broker did not take the call or nobody serves its queue;
        `UndeclaredCall` for a method this service does not declare it calls."""
        if self.may_call is not None and rpc.method not in self.may_call:
            raise UndeclaredCall(f"{self.broker.service} does not declare calling {rpc.method}")
        timeout = timeout_s if timeout_s is not None else self.default_timeout_s
        correlation_id = correlation_id or uuid.uuid4().hex
        future = self.expect(correlation_id)
        started = time.perf_counter()
        try:
            with tracing.span(rpc.method, kind=tracing.CLIENT, attributes=_rpc_attributes(rpc)):
                await self.broker.publish(
                    request.model_dump_json().encode(),
                    routing_key=rpc.queue.name,
                    message_type=rpc.method,
                    correlation_id=correlation_id,
                    reply_to=self.reply_queue,
                    expiration_s=timeout,
                    headers=dict(tracing.carrier()) or None,
                )
                try:
                    reply = await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    raise Timeout(f"{rpc.method} did not answer within {timeout:g} s") from None
        finally:
            self.forget(correlation_id)
            if self.duration is not None:  # errors and timeouts too: they are the slow ones
                self.duration.labels(rpc.method).observe(time.perf_counter() - started)
        return self.unpack(reply, rpc.response)


@dataclass(frozen=True)
class _Method:
    request_model: type[BaseModel]
    handler: Callable[[Any], Awaitable[BaseModel]]


class RpcServer:
    """The methods served from one queue (replicas compete for calls): each call is
    answered on its caller's reply queue, errors included, and acked."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._methods: dict[str, _Method] = {}

    def register(self, rpc: Rpc[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        self._methods[rpc.method] = _Method(rpc.request, handler)

    async def on_call(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.bind_contextvars(request_id=message.correlation_id)
        # The caller's span, from the message's headers (an RPC message is one call).
        with tracing.span(
            message.type or "rpc",
            kind=tracing.SERVER,
            parent=tracing.incoming(message.headers or {}) or None,
            attributes={"rpc.system": "rabbitmq", "rpc.method": message.type or ""},
        ):
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

    async def _dispatch(self, message: AbstractIncomingMessage) -> tuple[str, bytes]:
        method = self._methods.get(message.type or "")
        try:
            if method is None:
                raise BadRequest(f"unknown RPC method {message.type!r}")
            try:
                request = method.request_model.model_validate_json(encoding.body(message))
            except encoding.UnreadableBody as exc:
                raise BadRequest(f"unreadable {message.type} request: {exc}") from exc
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
        return ERROR, error_body(error)


def _rpc_attributes(rpc: Rpc[Any, Any]) -> dict[str, str | int | float | bool]:
    if not tracing.enabled():
        return {}
    return {
        "rpc.system": "rabbitmq",
        "rpc.method": rpc.method,
        "messaging.destination.name": rpc.queue.name,
    }


def error_body(error: ApiError) -> bytes:
    """An `ERROR` reply's body: the error's kind, message and data."""
    return orjson.dumps({"kind": error.kind, "message": error.message, "data": error.data})


# The hop label of grouped replies in the broker's batch counters (each caller has a
# reply queue of its own name).
REPLY_HOP = "rpc.replies"


class GroupedReplies:
    """Replies of a server that takes calls in batches: every reply is sent as soon as
    its call is done, and the replies to one caller that are ready in the same turn of
    the event loop go together in one `REPLIES` message (no wait is added)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._ready: dict[str, list[bytes]] = {}
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def send(self, reply_to: str, correlation_id: str, reply_type: str, body: bytes) -> None:
        self._ready.setdefault(reply_to, []).append(reply_item(correlation_id, reply_type, body))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        ready, self._ready = self._ready, {}
        for reply_to, items in ready.items():
            task = asyncio.get_running_loop().create_task(self._publish(reply_to, items))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _publish(self, reply_to: str, items: list[bytes]) -> None:
        try:
            await self.broker.publish(
                b'{"items":[' + b",".join(items) + b"]}",
                routing_key=reply_to,
                confirm=False,
                persistent=False,
                message_type=REPLIES,
                batch=(REPLY_HOP, len(items)),
            )
        except Unavailable:
            log.warning("rpc_replies_lost", count=len(items))

    async def drain(self) -> None:
        while self._sending or self._flush_scheduled:
            await asyncio.gather(*self._sending, asyncio.sleep(0))
