"""Who published a message, as the broker vouches for it.

`Broker.publish` sets every message's `user_id` to its connection's login, and RabbitMQ
refuses (PRECONDITION_FAILED) a `user_id` other than the connection's user, so a
consumer can trust it. Topic permissions already stop other services' users from
publishing, say, `flow.changed` on the events exchange, but anyone allowed to send an
RPC call (write on the default exchange) can put a message straight into any queue;
this check is what keeps such a message from being obeyed. The consumer drops what
fails it: rejected without requeue, logged as `forged_event_dropped`.
"""

import structlog
from aio_pika.abc import AbstractIncomingMessage
from yarl import URL

log = structlog.get_logger(__name__)


class UntrustedPublisher(ValueError):
    """A message not published by the user trusted for it. A ValueError, so that
    consumers that drop unreadable messages (reject without requeue) drop it too."""


def url_user(amqp_url: str) -> str:
    """The login of an AMQP URL, as aio-pika uses it (guest when the URL has none)."""
    return URL(amqp_url).user or "guest"


def check_publisher(message: AbstractIncomingMessage, trusted_user: str) -> None:
    """Raises `UntrustedPublisher` (and logs `forged_event_dropped`) unless the broker
    says `trusted_user` published `message`; the caller must then drop it."""
    if message.user_id == trusted_user:
        return
    log.warning(
        "forged_event_dropped",
        routing_key=message.routing_key,
        exchange=message.exchange,
        user_id=message.user_id,
        trusted_user=trusted_user,
        app_id=message.app_id,
    )
    raise UntrustedPublisher(
        f"{message.routing_key} published by {message.user_id!r}, not {trusted_user!r}"
    )
