"""Compressed message bodies (shared/messaging/encoding.py): what a publisher deflates,
every consumer reads back exactly; what it cannot read is refused, never inflated past
the bound."""

import zlib
from types import SimpleNamespace
from typing import Any

import pytest

from shared.messaging import encoding
from shared.messaging.batching import BatchPublisher
from shared.messaging.contracts import Command, Event, StartRuns
from shared.messaging.topology import ASYNC_RUNS, SYNC_RUNS

ITEMS = [b'{"n":%d,"text":"the same steps"}' % n for n in range(25)]
BATCH = b'{"items":[' + b",".join(ITEMS) + b"]}"


def delivery(body: bytes, content_encoding: str | None) -> Any:
    """What `encoding.body` reads of an aio-pika delivery."""
    return SimpleNamespace(body=body, content_encoding=content_encoding)


def test_round_trip() -> None:
    sent, content_encoding = encoding.compress(BATCH, 512)
    assert content_encoding == "deflate"
    assert len(sent) < len(BATCH) // 3
    assert encoding.body(delivery(sent, content_encoding)) == BATCH


def test_below_the_threshold_or_off_untouched() -> None:
    assert encoding.compress(BATCH, len(BATCH) + 1) == (BATCH, None)
    assert encoding.compress(BATCH, 0) == (BATCH, None)
    assert encoding.body(delivery(BATCH, None)) == BATCH
    assert encoding.body(delivery(BATCH, "")) == BATCH


def test_larger_than_a_consumer_inflates_sent_as_it_is() -> None:
    huge = b"x" * (encoding.MAX_INFLATED_BYTES + 1)
    assert encoding.compress(huge, 1) == (huge, None)


def test_unknown_encoding_refused() -> None:
    with pytest.raises(encoding.UnreadableBody, match="unknown content encoding 'gzip'"):
        encoding.body(delivery(BATCH, "gzip"))


@pytest.mark.parametrize(
    "raw",
    [
        b"not deflated at all",
        zlib.compress(BATCH, 1)[:-6],  # cut short
        zlib.compress(BATCH, 1) + b"more",  # something after the stream
    ],
)
def test_corrupt_refused(raw: bytes) -> None:
    with pytest.raises(encoding.UnreadableBody):
        encoding.body(delivery(raw, "deflate"))


def test_a_decompression_bomb_refused_at_the_bound() -> None:
    bomb = zlib.compress(b"\0" * (encoding.MAX_INFLATED_BYTES + 1), 9)
    assert len(bomb) < 20_000
    with pytest.raises(encoding.UnreadableBody, match="inflates beyond"):
        encoding.body(delivery(bomb, "deflate"))
    # Exactly at the bound: read.
    exact = b"\0" * encoding.MAX_INFLATED_BYTES
    assert encoding.body(delivery(zlib.compress(exact, 9), "deflate")) == exact


class Recording:
    """A broker that keeps what it was asked to publish."""

    def __init__(self, compress_min_bytes: int) -> None:
        self.compress_min_bytes = compress_min_bytes
        self.sent: list[tuple[bytes, str | None]] = []

    async def publish(self, body: bytes, *, content_encoding: str | None, **_: Any) -> None:
        self.sent.append((body, content_encoding))


@pytest.mark.parametrize(
    ("target", "compressed"),
    [
        (Event("test.noted", StartRuns), True),  # the events exchange: quorum queues
        (Command(ASYNC_RUNS, StartRuns), True),  # a quorum queue
        (Command(SYNC_RUNS, StartRuns), False),  # classic: no write-ahead log
    ],
)
async def test_the_publisher_deflates_only_to_quorum_queues(target: Any, compressed: bool) -> None:
    broker = Recording(compress_min_bytes=1)
    publisher: BatchPublisher[Any] = BatchPublisher(broker, target)  # type: ignore[arg-type]
    for item in ITEMS:
        publisher.publish_encoded_soon(item)
    await publisher.drain()
    bodies = [encoding.body(delivery(*sent)) for sent in broker.sent]
    assert b"".join(bodies).count(b'"text"') == 25
    assert [content_encoding for _, content_encoding in broker.sent] == (
        ["deflate" if compressed else None] * len(broker.sent)
    )
