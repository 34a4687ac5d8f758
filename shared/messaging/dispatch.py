"""`EventHandlers`: what one consumer does with each event it is bound to, declared as
(event, handler) pairs instead of an if-chain on routing keys. The body is validated
against the event's declared schema before the handler sees it."""

from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel

from shared.messaging import encoding
from shared.messaging.contracts import Body, Event
from shared.messaging.trust import check_publisher


class UnknownEvent(LookupError):
    pass


class EventHandlers:
    def __init__(self) -> None:
        self._handlers: dict[str, tuple[type[Any], Callable[[Any], Awaitable[None]]]] = {}
        self._publishers: dict[str, str] = {}

    def on(
        self,
        event: Event[Body],
        handler: Callable[[Body], Awaitable[None]],
        *,
        published_by: str | None = None,
    ) -> None:
        """`published_by`: the only broker user trusted to publish this event (`trust.py`);
        a message from any other is unreadable, i.e. dropped."""
        self._handlers[event.routing_key] = (event.body, handler)
        if published_by is not None:
            self._publishers[event.routing_key] = published_by

    @property
    def routing_keys(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def decode(self, message: AbstractIncomingMessage) -> BaseModel:
        """Raises `UnknownEvent` for a routing key nobody handles, pydantic's
        `ValidationError` for a body that is not the event's schema, `UnreadableBody`
        for one that does not inflate, `UntrustedPublisher`
        (a ValueError too) for one published by another user than the trusted one."""
        entry = self._handlers.get(message.routing_key or "")
        if entry is None:
            raise UnknownEvent(message.routing_key)
        trusted = self._publishers.get(message.routing_key or "")
        if trusted is not None:
            check_publisher(message, trusted)
        schema: type[BaseModel] = entry[0]
        return schema.model_validate_json(encoding.body(message))

    async def handle(self, message: AbstractIncomingMessage, body: BaseModel) -> None:
        await self._handlers[message.routing_key or ""][1](body)

    async def dispatch(self, message: AbstractIncomingMessage) -> None:
        await self.handle(message, self.decode(message))
