"""Between the runner's supervisor and its worker processes: length-prefixed JSON
frames over a socket pair. The supervisor's first frame is the runner's `RunBounds`
(services/runner/bounds.py), as they are; the worker answers `{"ready": true}`. Then
the supervisor sends `{"runs": [WorkItem, ...]}` and the worker its results, each frame
carrying as many as were ready at once (one write and one wake-up for many runs):
- finished runs in a results frame (`results_frame`): `R`, a JSON header
  `[[key, length, outcome, seconds], ...]`, a line break, then each run's `RunResult`
  JSON, back to back. The supervisor keeps each result as these bytes (`RunOutput`)
  and splices them into the sync reply and the `run.finished` record: it never decodes
  and encodes a result again unless it needs more than its outcome (a dedup key, a
  completion callback, a run repeated).
- a run that stopped in a `delay` step, or is handed over at a `respond` step, in
  `{"done": [{"key", "suspended"}, ...]}` (`WorkSuspended`); `{"key", "result"}`
  (`WorkDone`) there is read too.
The supervisor encodes a `WorkItem` itself (`work_item`): the request once (its bytes
are kept for the record too) and each flow version once."""

import asyncio
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.schemas.runs import RunResult, StepTrace, WebhookRequest
from shared.schemas.vocabulary import Outcome

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


@dataclass(frozen=True)
class RunOutput:
    """A run's `RunResult` as encoded (by its worker, mostly), with what the supervisor
    reads of it without decoding it."""

    encoded: bytes
    outcome: Outcome
    duration_s: float
    repeated: str | None = None  # `RunResult.repeated`, as set in `encoded`

    @classmethod
    def of(cls, result: RunResult) -> "RunOutput":
        """Raises ValueError (pydantic's serialisation error) for an unencodable one."""
        return cls(
            encode_result(result),
            result.outcome,
            _seconds(result),
            result.repeated,
        )

    def decoded(self) -> RunResult:
        return RunResult.model_validate_json(self.encoded)

    def with_repeated(self, why: str) -> "RunOutput":
        return RunOutput.of(self.decoded().model_copy(update={"repeated": why}))


def work_item(
    key: int, request: bytes, flow: bytes, timeout_s: float, resume: bytes | None
) -> bytes:
    """A `WorkItem`, encoded, of its parts encoded (`request`: a `WebhookRequest`,
    `flow`: a `FlowSnapshot`, `resume`: a `Resumed`)."""
    return b"".join(
        (
            b'{"key":',
            str(key).encode(),
            b',"timeout_s":',
            orjson.dumps(timeout_s),
            b',"request":',
            request,
            b',"flow":',
            flow,
            b',"resume":',
            resume if resume is not None else b"null",
            b"}",
        )
    )


# The first byte of a results frame (a JSON frame starts with `{`).
RESULTS = b"R"


def results_frame(results: list[tuple[int, RunResult, bytes]]) -> bytes:
    """One frame of finished runs: (key, result, the result encoded) each."""
    header = [
        [key, len(encoded), result.outcome, _seconds(result)] for key, result, encoded in results
    ]
    return frame(b"".join((RESULTS, orjson.dumps(header), b"\n", *(e for _, _, e in results))))


# The fields in the order pydantic writes them.
_RESULT_FIELDS = tuple(RunResult.model_fields)
_STEP_FIELDS = tuple(StepTrace.model_fields)
_RESULT_JSON = orjson.OPT_UTC_Z | orjson.OPT_PASSTHROUGH_DATACLASS


def encode_result(result: RunResult) -> bytes:
    """`result.model_dump_json()`, byte for byte, for a quarter of its CPU (a worker
    encodes every run's result): orjson of the fields. Both write UTC as `Z`, floats
    as shortest round trip, non-finite ones as null and escape strings alike
    (tests/unit/test_worker_protocol_encode.py holds them to that). What orjson
    refuses and pydantic may write (an integer past 64 bits, a key that is not a
    string, a type it does not know, a lone surrogate) goes to pydantic, whose
    ValueError for an unencodable result the caller handles as before."""
    if type(result) is not RunResult:
        return result.model_dump_json().encode()
    fields = {name: getattr(result, name) for name in _RESULT_FIELDS}
    fields["steps"] = [
        {name: getattr(entry, name) for name in _STEP_FIELDS}
        if type(entry) is StepTrace
        else entry  # not plain: orjson refuses it, pydantic writes it
        for entry in result.steps
    ]
    try:
        return orjson.dumps(fields, option=_RESULT_JSON)
    except orjson.JSONEncodeError:
        return result.model_dump_json().encode()


def _seconds(result: RunResult) -> float:
    return (result.finished_at - result.started_at).total_seconds()


def read_results(payload: bytes) -> list[tuple[int, RunOutput]]:
    """The runs of a results frame's payload, by key. Raises ValueError (or
    orjson.JSONDecodeError, one) for a malformed one."""
    end = payload.index(b"\n")
    at = end + 1
    runs = []
    for key, length, outcome, duration_s in orjson.loads(payload[1:end]):
        encoded = payload[at : at + length]
        if len(encoded) != length:
            raise ValueError("a results frame shorter than its header says")
        runs.append((int(key), RunOutput(encoded, Outcome(outcome), float(duration_s))))
        at += length
    return runs


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def frame_of(key: str, encoded_items: list[bytes]) -> bytes:
    """One frame `{key: [items]}` of items each encoded on its own."""
    return frame(b'{"' + key.encode() + b'":[' + b",".join(encoded_items) + b"]}")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame, decoded; raises `asyncio.IncompleteReadError` at the end."""
    return orjson.loads(await read_payload(reader))


async def read_payload(reader: asyncio.StreamReader) -> bytes:
    """The next frame's bytes; raises `asyncio.IncompleteReadError` at the end."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"a frame of {length} bytes")
    return await reader.readexactly(length)
