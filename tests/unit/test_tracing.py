"""shared/tracing.py: when the standard variables turn traces on, what a carrier keeps,
that off costs nothing visible, and that log lines carry the span's ids."""

import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from shared import tracing
from shared.logging import add_trace_ids

SENDER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
    ],
)
def test_only_the_standard_variables_turn_traces_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_nothing_is_recorded_but_the_context_is_carried() -> None:
    """Export off: no span, yet the sender's context (or a new trace's) stays current
    through the hops, unchanged, so records and logs carry its trace id and outgoing
    requests pass it on."""
    assert not tracing.enabled()
    assert tracing.carrier() == {}
    received = tracing.incoming({"traceparent": SENDER, "tracestate": "v=1"})
    with tracing.span("ingress", parent=received) as span:
        assert span is None
        assert tracing.carrier() == {"traceparent": SENDER, "tracestate": "v=1"}
        item = tracing.handed_on(Item())
        assert tracing.handed_on(item) is item  # a hop adds no span: nothing to copy
        headers: dict[str, Any] = {"TraceParent": "00-forged", "x": "1"}
        tracing.inject(headers)
        assert headers == {"x": "1", "traceparent": SENDER, "tracestate": "v=1"}
        assert tracing.current_ids() == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert tracing.carrier() == {}
    with tracing.processing("q", item.trace):
        assert tracing.carrier() == item.trace
    with tracing.span("no sender", parent={}):
        started = tracing.carrier()["traceparent"]
    assert tracing.trace_id_of({"traceparent": started}) is not None
    assert started.endswith("-00")  # not sampled: nothing of it is recorded
    with tracing.span("inside", parent=None) as span:
        assert span is None and tracing.carrier() == {}
    assert tracing.link_to({"traceparent": SENDER}) is None


async def test_off_an_outgoing_request_passes_the_senders_context_on() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from shared.outbound import AddressPolicy, OutboundHttp

    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = OutboundHttp(AddressPolicy(["127.0.0.1/32"]))
    try:
        url = f"http://127.0.0.1:{server.port}/"
        given = {"traceparent": "00-mine"}
        await http.request("GET", url, headers=given, data=None, timeout_s=5, max_response_bytes=99)
        with tracing.span("run", parent={"traceparent": SENDER}):
            await http.request(
                "GET", url, headers=given, data=None, timeout_s=5, max_response_bytes=99
            )
    finally:
        await http.close()
        await server.close()
    assert seen[0]["traceparent"] == "00-mine"  # outside any trace: the flow's own header
    assert seen[1]["traceparent"] == SENDER
    assert given == {"traceparent": "00-mine"}  # the caller's headers untouched


def test_stored_ids_are_read_only_from_well_formed_traceparents() -> None:
    assert tracing.trace_id_of({"traceparent": SENDER}) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.traceparent_of({"traceparent": SENDER}) == SENDER
    for bad in ("", "00-xyz", f"{SENDER}-extra", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        assert tracing.trace_id_of({"traceparent": bad}) is None
        assert tracing.traceparent_of({"traceparent": bad}) is None
    assert tracing.trace_id_of(None) is None


class Item(BaseModel):
    trace: dict[str, str] = {}


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Traces on, into memory, for one test (the provider is the process's, set once)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracing.switch(True)
    try:
        yield exporter
    finally:
        tracing.switch(False)
        processor.shutdown()


def test_a_senders_context_is_continued_and_handed_on(exported: InMemorySpanExporter) -> None:
    received = tracing.incoming({"Traceparent": SENDER, "tracestate": "v=1", "baggage": "k=v"})
    assert received == {"traceparent": SENDER, "tracestate": "v=1"}
    with tracing.span("ingress", kind=tracing.SERVER, parent=received):
        item = tracing.handed_on(Item())
    with tracing.span("runner", parent=item.trace):
        pass
    ingress, runner = sorted(exported.get_finished_spans(), key=lambda s: s.name)
    assert format(ingress.context.trace_id, "032x") == tracing.trace_id_of({"traceparent": SENDER})
    assert format(ingress.parent.span_id, "016x") == "b7ad6b7169203331"
    assert runner.parent.span_id == ingress.context.span_id
    assert item.trace["tracestate"] == "v=1"
    assert "baggage" not in item.trace


def test_an_empty_carrier_starts_a_new_trace(exported: InMemorySpanExporter) -> None:
    with tracing.span("outer"), tracing.span("new", parent={}):
        pass
    new, outer = sorted(exported.get_finished_spans(), key=lambda s: s.name)
    assert new.parent is None and new.context.trace_id != outer.context.trace_id


async def test_a_failed_step_is_an_error_span_without_its_message(
    exported: InMemorySpanExporter,
) -> None:
    async def failing() -> None:
        raise ValueError("secret-ish detail")

    with pytest.raises(ValueError):
        await tracing.traced_step("charge", "http", failing())
    (step,) = exported.get_finished_spans()
    assert step.name == "charge"
    assert step.attributes == {"flowhooks.step.type": "http", "error.type": "ValueError"}
    assert step.status.status_code == trace.StatusCode.ERROR
    assert not step.events  # no exception event: its message may hold data


def test_a_recorded_span_joins_the_stored_trace(exported: InMemorySpanExporter) -> None:
    tracing.recorded_span("store", SENDER, 1, kind=tracing.CONSUMER)
    tracing.recorded_span("nothing", None, 1)
    (stored,) = exported.get_finished_spans()
    assert stored.start_time == 1 and format(stored.parent.span_id, "016x") == "b7ad6b7169203331"


def test_log_lines_carry_the_current_span(exported: InMemorySpanExporter) -> None:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[add_trace_ids, structlog.processors.JSONRenderer()],
    )
    logger.info("outside")
    with tracing.span("work", parent={"traceparent": SENDER}) as span:
        assert span is not None
        logger.info("inside")
    outside, inside = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")


class Published(BaseModel):
    items: list[Item]


async def test_a_batch_message_links_to_each_items_trace(exported: InMemorySpanExporter) -> None:
    """Many requests of many traces in one message: its send span is a trace of its own
    linked to each; the AMQP headers carry the send span."""
    from shared.messaging.batching import BatchPublisher, _encode
    from shared.messaging.contracts import Event

    sent: list[dict[str, Any]] = []

    class Broker:
        async def publish(self, body: bytes, **options: Any) -> None:
            sent.append(options)

    publisher: BatchPublisher[Item] = BatchPublisher(
        Broker(),  # type: ignore[arg-type]
        Event("test.items", Published),
    )
    encoded = []
    for name in ("a", "b"):
        with tracing.span(name):
            encoded.append(_encode(Item(), None))
    await publisher._send(encoded)
    a, b, send = sorted(exported.get_finished_spans(), key=lambda s: s.name)
    assert send.name == "test.items publish" and send.parent is None
    assert [link.context.span_id for link in send.links] == [a.context.span_id, b.context.span_id]
    assert send.attributes["messaging.batch.message_count"] == 2
    assert sent[0]["headers"]["traceparent"].split("-")[2] == format(send.context.span_id, "016x")


async def test_a_callback_attempt_continues_its_runs_trace(
    exported: InMemorySpanExporter,
) -> None:
    """The run's context travels in `CallbackRequested` (an attempt may come hours
    later, from another runner); each attempt is a span of that trace."""
    from datetime import UTC, datetime

    from services.runner.definition import SealedSecret, WebhookCallback
    from tests.unit.test_runner_callbacks import (
        BOX,
        DELIVERY,
        SECRET,
        FakeBroker,
        FakeHttp,
        message,
        result,
        sender,
        webhook_request,
    )

    broker = FakeBroker()
    request = webhook_request(request_id="abc").model_copy(
        update={"trace": {"traceparent": SENDER}}
    )
    sealed = SealedSecret(sealed=BOX.seal(SECRET, request.workspace_id), hint="…abcd")
    callback = WebhookCallback(url="https://example.com/cb", secret=sealed)
    await sender(broker, FakeHttp()).enqueue(request, result(request_id="abc"), callback)
    [(_, queued)] = broker.published
    assert queued.trace == {"traceparent": SENDER}

    now = datetime.now(UTC)
    traced = message(first_at=now, due_at=now, trace={"traceparent": SENDER})
    await sender(FakeBroker(), FakeHttp(200)).on_callback(traced, DELIVERY)
    (attempt,) = exported.get_finished_spans()
    assert attempt.name == "callback"
    assert format(attempt.parent.span_id, "016x") == "b7ad6b7169203331"
    assert attempt.attributes["flowhooks.callback.attempt"] == 1


@pytest.mark.parametrize(
    "parent",
    [
        {"traceparent": SENDER},
        {"traceparent": SENDER.replace("-01", "-03"), "tracestate": "v=1,w=2"},
        {"traceparent": SENDER, "tracestate": "not a valid state"},
        {"traceparent": " " + SENDER + " ", "tracestate": ""},
    ],
)
def test_off_a_request_hands_on_what_the_sdk_would_format(parent: dict[str, str]) -> None:
    """Off, the carrier is made without OpenTelemetry's objects: it must be what the
    SpanContext of the same parent gives (`carrier`'s format when traces are on)."""
    context = tracing._span_context(parent)
    assert context is not None
    expected = {
        "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}"
        f"-{context.trace_flags:02x}"
    }
    if context.trace_state:
        expected["tracestate"] = context.trace_state.to_header()
    assert tracing.carried_of(parent) == expected


def test_off_a_new_trace_has_random_ids_and_logs_carry_them() -> None:
    with tracing.span("a", parent={"traceparent": "00-not-a-trace"}):
        first = tracing.carrier()["traceparent"]
        assert tracing.current_ids() == (first[3:35], first[36:52])
    with tracing.span("b", parent={}):
        second = tracing.carrier()["traceparent"]
    assert first != second
    assert tracing.trace_id_of({"traceparent": first}) == first[3:35]
    assert tracing.current_ids() is None
