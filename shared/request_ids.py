"""Request ids that carry their time (UUIDv7, RFC 9562), as 32 hex digits like the
uuid4 hex ids before them. The debugger's records are partitioned by the time a request
was received: the time in its id names the partition to read (services/debugger), so
a lookup by id reads one partition, not all of them. Ids without a time (uuid4 hex from
before, or any other text) stay readable: their lookups read every partition."""

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

# Bounds of where a request's `received_at` is taken to lie around the time in its id:
# the id is drawn when the HTTP request arrives, `received_at` read a moment later by
# the handler; a replay's both come from the same clock reading.
BEFORE_ID = timedelta(minutes=5)
AFTER_ID = timedelta(hours=1)


def new_request_id(at: datetime | None = None) -> str:
    """A UUIDv7 (hex) with `at` (default: now) in its first 48 bits, in milliseconds."""
    # Now (every request) read as an integer: no datetime is made for it.
    millis = time.time_ns() // 1_000_000 if at is None else int(at.timestamp() * 1000)
    return _v7(millis, os.urandom(10))


def _v7(millis: int, entropy: bytes) -> str:
    millis &= (1 << 48) - 1
    value = (millis << 80) | int.from_bytes(entropy, "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return f"{value:032x}"  # what uuid.UUID(int=value).hex gives


def request_id_time(request_id: str) -> datetime | None:
    """The time in a UUIDv7 request id (millisecond precision); None for any other id."""
    try:
        parsed = uuid.UUID(hex=request_id)
    except ValueError:
        return None
    if parsed.version != 7 or parsed.variant != uuid.RFC_4122:
        return None
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)


def received_window(request_id: str) -> tuple[datetime, datetime] | None:
    """[from, to) where the request's `received_at` lies; None: anywhere (no time in
    its id)."""
    at = request_id_time(request_id)
    if at is None:
        return None
    return at - BEFORE_ID, at + AFTER_ID
