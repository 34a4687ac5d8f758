"""Between the runner's supervisor and its worker processes: length-prefixed JSON
frames over a socket pair. The supervisor's first frame is the runner's `RunBounds`
(services/runner/bounds.py), as they are; the worker answers `{"ready": true}`. Then
the supervisor sends `{"runs": [WorkItem, ...]}` and the worker
`{"done": [WorkDone, ...]}`, each frame carrying as many as were ready at once (one
write and one wake-up for many runs). A run that stopped in a `delay` step, or is
handed over at a `respond` step, is done as `{"key", "suspended"}` (`WorkSuspended`)."""

import asyncio
import struct
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.schemas.runs import RunResult, StepTrace, WebhookRequest

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


class Answered(BaseModel):
    """A `respond` step's answer, kept across a delay (the record shows it at the end)."""

    status_code: int
    content_type: str
    body: str
    headers: dict[str, str]
    at: datetime


class Resumed(BaseModel):
    """A run stored by a `delay` step, as it goes on: at top-level step `next_step`,
    with its context, trace and early answer as they were. Travels in
    `StartRun.resume` (the runner's own; no other service reads it)."""

    next_step: int
    values: dict[str, Any]
    trace: list[StepTrace]
    started_at: datetime
    answered: Answered | None = None
    loop_iterations: int = 0
    dropped_steps: int = 0
    # The flow as the run started (a run resumes with the version it began with).
    flow: "FlowSnapshot"
    # Told apart from another copy of the same resume (services/runner/delays.py).
    token: str = ""


class WorkItem(BaseModel):
    key: int  # the supervisor's id for this run, unique per runner process
    request: WebhookRequest
    flow: FlowSnapshot
    timeout_s: float
    # A run going on after a `delay` step (None: from its first step).
    resume: Resumed | None = None


class WorkDone(BaseModel):
    key: int
    result: RunResult


class Suspension(BaseModel):
    """A run that stopped in a `delay` step (`WorkSuspended`): what is stored."""

    request_id: str
    resume_at: datetime
    state: Resumed
    repeated: str | None = None
    # Handed over at a `respond` step: once stored, its caller gets `state.answered`.
    answers: bool = False


class WorkSuspended(BaseModel):
    key: int
    suspended: Suspension


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
