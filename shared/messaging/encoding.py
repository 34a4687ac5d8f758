"""Compressed message bodies: what `BatchPublisher` deflates and every consumer inflates.

By the broker's own count, most of what RabbitMQ does for flowhooks beyond the bare
architecture is the quorum queues' write-ahead log, whose work grows with the bytes
written (docs/performance.md); a batch of 12-25 near-identical JSON items (runs, their
results and step traces) deflates to a fraction of its size. So a batched message to
a quorum queue (or to the events exchange, whose durable queues are quorum) whose body
is at least `FLOWHOOKS_BROKER_COMPRESS_MIN_BYTES` is sent deflated (zlib, level 1: the
fastest), marked by the AMQP `content_encoding` property; RPC requests and replies and the sync
runs (classic queues: no WAL) are sent as they are.

Every consumer reads a delivery's body through `body(message)`, never `message.body`:
it inflates a deflated body, bounded (`MAX_INFLATED_BYTES`: no publisher compresses a
larger body, so a larger result is a decompression bomb, refused), and raises
`UnreadableBody` (a ValueError, which every consumer already treats as an unreadable
message: dead-lettered or logged) for an unknown encoding or a corrupt stream. A
dead-lettered message keeps its properties, so dead-letter consumers decode the same way.

Rolling upgrade: every consumer must run this code before any producer compresses
(docs/architecture.md); with `FLOWHOOKS_BROKER_COMPRESS_MIN_BYTES=0` nothing is compressed.
"""

import zlib

from aio_pika.abc import AbstractIncomingMessage

# The `content_encoding` of a body compressed here: a zlib stream (RFC 1950), the
# "deflate" of HTTP's Content-Encoding.
DEFLATE = "deflate"
# zlib's fastest level: most of the size gain on repetitive JSON at a fraction of the
# CPU of the default level (measured in the commit that set it).
LEVEL = 1
# The default of FLOWHOOKS_BROKER_COMPRESS_MIN_BYTES: below it a body is sent as it is
# (one or two items: little to gain, the cost per byte is the same).
DEFAULT_MIN_BYTES = 2048
# The largest body a publisher compresses, and so the most a consumer inflates: a batch's
# default byte bound (`BatchPublisher`'s `max_bytes`, 8 MiB) and its framing, with room.
# A body that would inflate beyond is refused, never inflated.
MAX_INFLATED_BYTES = 9 * 1024 * 1024


class UnreadableBody(ValueError):
    """A body whose encoding is unknown, or that does not inflate within the bound."""


def compress(body: bytes, min_bytes: int) -> tuple[bytes, str | None]:
    """The body to send and its `content_encoding`: deflated when it is at least
    `min_bytes` long (0: never) and no longer than a consumer inflates."""
    if min_bytes <= 0 or not min_bytes <= len(body) <= MAX_INFLATED_BYTES:
        return body, None
    return zlib.compress(body, LEVEL), DEFLATE


def decode(raw: bytes, content_encoding: str | None) -> bytes:
    """`raw` as it was before `compress`; raises `UnreadableBody`."""
    if not content_encoding:
        return raw
    if content_encoding != DEFLATE:
        raise UnreadableBody(f"unknown content encoding {content_encoding[:50]!r}")
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(raw, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise UnreadableBody(f"corrupt deflated body: {exc}") from None
    # Output stopped at the bound with input left over (or a stream cut short): never
    # inflated further.
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise UnreadableBody(
            f"deflated body inflates beyond {MAX_INFLATED_BYTES} bytes, or is truncated"
            " or followed by other bytes"
        )
    return inflated


def body(message: AbstractIncomingMessage) -> bytes:
    """A delivery's body, inflated if it was sent compressed; raises `UnreadableBody`."""
    return decode(message.body, message.content_encoding)
