"""`python -m bench.supervisor_decode [--body small|xml] [--rounds N] [--batches N]
[--batch N]`: what the runner's supervisor spends per run on a sync-runs message's
requests, in-process, on one core (issue 29: "validate once and pass bytes through").

The message is the ingress's own: the bench's request (bench/measure.py `SMALL_JSON`
with the bench's sync flow, or `--body xml`: `XML_5K` with its XML flow; the headers of
bench/ingress_path.py) parsed and normalised by the ingress (`parse_input`,
`webhook_request`), encoded by it (`start_run_json`, with its deadline), `--batch` of
them (14: the size seen under load) joined as `BatchPublisher` joins them. The flow's
snapshot is encoded once, as the flow cache keeps it.

What the supervisor does today, per run:
- `validate`: the message read as `StartRuns` (`SYNC_RUNS.decode`: orjson, then a
  `StartRun` validated from each item);
- `encode`: each run's request encoded again from its model (`request_json`); the one
  encoding serves its worker (`work_item`) and its record (`finished_json` splices it);
- `today`: both, with the work item and the record spliced, as the hot path does them.

What passing the request through as bytes could cost instead, for comparison:
- `loads`: orjson's parse of the message alone, the floor of any decoding;
- `check`: the parse and a structural check of each item that refuses whatever pydantic
  might not read back as it is (`plain_start`), the cost of trusting the shape safely;
- `trusted`: the check, each deadline parsed, and the request's bytes encoded from the
  parsed dict (no model), spliced into the work item and the record as `today` does;
- `spliced`: the same, the request's bytes sliced from the message instead (as if the
  ingress said where each is): no encoding at all, the lower bound of the change.

Variants alternate within every round (their order rotated), CPU time by
`time.process_time`; prints µs per run, the median and the least of the rounds, and
what `trusted` and `spliced` would save against `today`."""

import argparse
import re
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from multidict import CIMultiDict

from bench.ingress_path import HEADERS, RESULT_BODY
from bench.measure import SMALL_JSON, SYNC_FLOW, XML_5K, XML_FLOW
from services.ingress.normalise import BodyLimits, parse_input, webhook_request
from services.ingress.run_messages import start_run_json
from services.runner.worker_protocol import FlowSnapshot, work_item
from shared import heap
from shared.messaging.contracts import SYNC_RUNS
from shared.schemas.runs import (
    StartRun,
    WebhookRequest,
    finished_json,
    request_json,
)
from shared.schemas.vocabulary import RunMode

FLOW_ID = "f" * 32
WORKSPACE_ID = "w" * 32
TIMEOUT_S = 30.0
# --body: (the request's body, its content type, the flow).
BODIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "small": (SMALL_JSON, "application/json", SYNC_FLOW),
    "xml": (XML_5K, "application/xml", XML_FLOW),
}


def snapshot(definition: dict[str, Any]) -> bytes:
    return (
        FlowSnapshot(id=FLOW_ID, workspace_id=WORKSPACE_ID, version=3, definition=definition)
        .model_dump_json()
        .encode()
    )


# A run's result as its worker encodes it (what `finished_json` splices).
RESULT = RESULT_BODY


def message(
    batch: int, text: str = SMALL_JSON, content_type: str = "application/json"
) -> tuple[bytes, list[tuple[int, int]]]:
    """A sync-runs message of `batch` runs as the ingress sends it, and where each
    run's request lies in it (for `spliced`)."""
    items = []
    headers = {**HEADERS, "Content-Type": content_type, "Content-Length": str(len(text))}
    for _ in range(batch):
        received_at = datetime.now(UTC)
        body = text.encode()
        request = webhook_request(
            request_id=uuid.uuid4().hex,
            flow_id=FLOW_ID,
            workspace_id=WORKSPACE_ID,
            received_at=received_at,
            method="POST",
            path=f"/v1/flow-webhook/{FLOW_ID}",
            query={},
            headers=CIMultiDict(headers),
            content_type=content_type,
            body=body,
            parsed_input=parse_input("POST", {}, content_type, body, BodyLimits()),
            mode=RunMode.SYNC,
        )
        items.append(
            start_run_json(request, 3, deadline=received_at + timedelta(seconds=TIMEOUT_S))
        )
    encoded = b'{"items":[' + b",".join(items) + b"]}"  # as BatchPublisher._send joins
    spans = []
    at = len(b'{"items":[')
    for item in items:
        assert item.startswith(b'{"request":')
        request_bytes = orjson.dumps(orjson.loads(item)["request"])
        start = at + len(b'{"request":')
        spans.append((start, start + len(request_bytes)))
        at += len(item) + 1
    return encoded, spans


# --- the candidate: a structural check instead of the models -------------------------

_START_FIELDS = tuple(StartRun.model_fields)
_REQUEST_FIELDS = tuple(WebhookRequest.model_fields)
# A time as orjson writes a UTC datetime (`OPT_UTC_Z`): anything else goes to the
# models, whose encoding would differ from the bytes received.
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?Z\Z")
_STR = {str}


def plain_start(item: Any) -> bool:
    """A sync item of the direct path's kind whose request pydantic would read back as
    it is (every field of `WebhookRequest`, in its order, of its type): what a
    pass-through decode would have to check of each item it does not validate. Written
    for speed (no generator, no loop over the fields): the candidate's best case."""
    if type(item) is not dict or tuple(item) != _START_FIELDS:
        return False
    request = item["request"]
    if type(request) is not dict or tuple(request) != _REQUEST_FIELDS:
        return False
    deadline = item["deadline"]
    headers, trace, query = request["headers"], request["trace"], request["query"]
    content_type = request["content_type"]
    return (
        type(item["flow_version"]) is int
        and (deadline is None or (type(deadline) is str and _STAMP.match(deadline) is not None))
        and item["unless_paused"] is False
        and item["dedup_key"] is None
        and item["accept_on_timeout"] is False
        and item["repeated"] is None
        and item["resume"] is None
        and type(request["request_id"]) is str
        and type(request["flow_id"]) is str
        and type(request["workspace_id"]) is str
        and type(request["method"]) is str
        and type(request["path"]) is str
        and type(request["raw_body"]) is str
        and request["replay_of"] is None
        and request["duplicate_of"] is None
        and request["debounced_by"] is None
        and request["source_request_id"] is None
        and type(request["received_at"]) is str
        and _STAMP.match(request["received_at"]) is not None
        and (content_type is None or type(content_type) is str)
        and request["mode"] in ("sync", "async")
        and request["raw_body_encoding"] in ("utf-8", "base64")
        and type(headers) is dict
        and set(map(type, headers.values())) <= _STR
        and type(trace) is dict
        and set(map(type, trace.values())) <= _STR
        and type(query) is dict
        # a query of lists goes to the models (not the bench's case)
        and (not query or set(map(type, query.values())) <= _STR)
    )


# --- the variants, each one message's work ---------------------------------------------

Variant = Callable[[bytes], None]


def variants(body: bytes, spans: list[tuple[int, int]], flow: bytes) -> dict[str, Variant]:
    """Each variant by name; `flow`: the flow's snapshot, encoded."""
    starts = SYNC_RUNS.decode(body).items  # for `encode`, decoded outside the timed part

    def validate(body: bytes) -> None:
        SYNC_RUNS.decode(body)

    def encode(_: bytes) -> None:
        for start in starts:
            request_json(start.request)  # one encoding serves the worker and the record

    def today(body: bytes) -> None:
        for key, start in enumerate(SYNC_RUNS.decode(body).items):
            assert start.deadline is not None
            request = request_json(start.request)
            work_item(key, request, flow, TIMEOUT_S, None)
            finished_json(request, RESULT)

    def loads(body: bytes) -> None:
        orjson.loads(body)

    def check(body: bytes) -> None:
        for item in orjson.loads(body)["items"]:
            if not plain_start(item):
                raise AssertionError("the bench's items are all plain")

    def trusted(body: bytes) -> None:
        for key, item in enumerate(orjson.loads(body)["items"]):
            if not plain_start(item):
                raise AssertionError("the bench's items are all plain")
            datetime.fromisoformat(item["deadline"])
            request = orjson.dumps(item["request"])
            work_item(key, request, flow, TIMEOUT_S, None)
            finished_json(request, RESULT)

    def spliced(body: bytes) -> None:
        for key, item in enumerate(orjson.loads(body)["items"]):
            if not plain_start(item):
                raise AssertionError("the bench's items are all plain")
            datetime.fromisoformat(item["deadline"])
            start, end = spans[key]
            request = body[start:end]
            work_item(key, request, flow, TIMEOUT_S, None)
            finished_json(request, RESULT)

    return {
        "validate": validate,
        "encode": encode,
        "today": today,
        "loads": loads,
        "check": check,
        "trusted": trusted,
        "spliced": spliced,
    }


def check_same(body: bytes, spans: list[tuple[int, int]]) -> None:
    """The candidates hand the worker and the record the very bytes of today's path."""
    starts = SYNC_RUNS.decode(body).items
    items = orjson.loads(body)["items"]
    for start, item, (begin, end) in zip(starts, items, spans, strict=True):
        expected = request_json(start.request)
        assert expected == start.request.model_dump_json().encode()
        assert orjson.dumps(item["request"]) == expected
        assert body[begin:end] == expected
        assert datetime.fromisoformat(item["deadline"]) == start.deadline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--body", choices=tuple(BODIES), default="small")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=2_000, help="messages a variant a round")
    parser.add_argument("--batch", type=int, default=14, help="runs a message")
    args = parser.parse_args()

    text, content_type, flow = BODIES[args.body]
    body, spans = message(args.batch, text, content_type)
    check_same(body, spans)
    by_name = variants(body, spans, snapshot(flow))
    heap.settle()  # as the supervisor's start-up ends (shared/service.py)
    for variant in by_name.values():  # warm-up
        for _ in range(200):
            variant(body)
    names = list(by_name)
    per_run: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            variant = by_name[name]
            started = time.process_time()
            for _ in range(args.batches):
                variant(body)
            spent = time.process_time() - started
            per_run[name].append(1e6 * spent / (args.batches * args.batch))
    print(
        f"{args.body}: {args.batch} runs a message ({len(body)} bytes), {args.batches}"
        f" messages a variant a round, {args.rounds} rounds; µs of CPU per run:"
    )
    for name in names:
        print(
            f"  {name:9} median {statistics.median(per_run[name]):6.2f}"
            f"  least {min(per_run[name]):6.2f}"
        )
    median = {name: statistics.median(per_run[name]) for name in names}
    spent = median["validate"] + median["encode"]
    print(
        f"  (a) + (b) = validate + encode: {spent:.2f}; the most any decode could save of"
        f" it (one that checks nothing: validate + encode - loads): {spent - median['loads']:.2f}"
    )
    for name in ("trusted", "spliced"):
        saved = [a - b for a, b in zip(per_run["today"], per_run[name], strict=True)]
        print(
            f"  today - {name}: median {statistics.median(saved):5.2f}"
            f"  (rounds: {', '.join(f'{s:.2f}' for s in saved)})"
        )


if __name__ == "__main__":
    main()
