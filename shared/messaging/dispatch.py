"""`EventHandlers`: what one consumer does with each event it is bound to, declared as
(event, handler) pairs instead of an if-chain on routing keys. The body is validated
against the event's declared schema before the handler sees it."""

from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from shared.messaging.contracts import Body, Event


class UnknownEvent(LookupError):
    pass


class EventHandlers:
    def __init__(self) -> None:
        self._handlers: dict[str, tuple[type[Any], Callable[[Any], Awaitable[None]]]] = {}

    def on(self, event: Event[Body], handler: Callable[[Body], Awaitable[None]]) -> None:
        self._handlers[event.routing_key] = (event.body, handler)

    @property
    def routing_keys(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    async def dispatch(self, message: AbstractIncomingMessage) -> None:
        """Raises `UnknownEvent` for a routing key nobody handles, pydantic's
        `ValidationError` for a body that is not the event's schema."""
        entry = self._handlers.get(message.routing_key or "")
        if entry is None:
            raise UnknownEvent(message.routing_key)
        schema, handler = entry
        await handler(schema.model_validate_json(message.body))
