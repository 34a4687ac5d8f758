"""Between the runner's supervisor and its worker processes: length-prefixed JSON
frames over a socket pair. The supervisor's first frame is the runner's `RunBounds`
(services/runner/bounds.py), as they are; the worker answers `{"ready": true}`. Then
the supervisor sends `{"runs": [WorkItem, ...]}` and the worker
`{"done": [WorkDone, ...]}`, each frame carrying as many as were ready at once (one
write and one wake-up for many runs). A run that a `respond` step answered early is
told first, in `{"answered": [WorkAnswered, ...]}`, while it goes on."""

import asyncio
import struct
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.schemas.runs import RunResult, WebhookRequest

_LENGTH = struct.Struct(">I")
# A worker bounds every result well below this; a larger frame means a broken worker.
MAX_FRAME_BYTES = 256 * 1024 * 1024


class FrameTooLarge(Exception):
    pass


class FlowSnapshot(BaseModel):
    """A flow as saved (a worker parses it once per version and keeps it)."""

    id: str
    workspace_id: str
    version: int
    definition: dict[str, Any]  # name, status, webhook, steps


class WorkItem(BaseModel):
    key: int  # the supervisor's id for this run, unique per runner process
    request: WebhookRequest
    flow: FlowSnapshot
    timeout_s: float
    # The run's budget from its start once a `respond` step answered its caller (the
    # caller no longer waits; the flows API's maximum). None: `timeout_s` stands.
    after_answer_s: float | None = None


class WorkAnswered(BaseModel):
    """A `respond` step's answer, sent at once; the run goes on."""

    key: int
    status_code: int
    content_type: str
    body: str
    headers: dict[str, str]
    at: datetime


class WorkDone(BaseModel):
    key: int
    result: RunResult


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def frame_of(key: str, encoded_items: list[bytes]) -> bytes:
    """One frame `{key: [items]}` of items each encoded on its own."""
    return frame(b'{"' + key.encode() + b'":[' + b",".join(encoded_items) + b"]}")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame, decoded; raises `asyncio.IncompleteReadError` at the end."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"a frame of {length} bytes")
    return orjson.loads(await reader.readexactly(length))
