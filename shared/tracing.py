"""OpenTelemetry traces: one trace per webhook, from the sender's `traceparent` through
the broker, the runner, its workers' steps, outgoing requests and the debugger's write.

Configured only by the standard variables (read by the SDK itself):
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on,
over OTLP/HTTP; `OTEL_SERVICE_NAME` (default `flowhooks-<service>`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_HEADERS`... `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn it off whatever the endpoint.

Off, nothing is recorded and the SDK is not even imported, but the W3C context is
still carried (the contract's trace ids in every record and log line): the sender's
`traceparent`, or a new trace's random ids, stays current through every hop and goes
out on outgoing requests, unchanged (no span of ours to name).

Context crosses processes as W3C trace-context carriers (`traceparent`, `tracestate`):
in HTTP headers, in AMQP message headers (a batch message's own send span), and in each
item of a batched message (`WebhookRequest.trace`), since one message holds many
requests of many traces."""

import contextlib
import os
import random
import re
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace import Span as Span

Carrier = dict[str, str]
TRACER_NAME = "flowhooks"
# W3C trace context: what a carrier keeps of a span (baggage is not propagated).
_CARRIED = ("traceparent", "tracestate")

SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER
INTERNAL = SpanKind.INTERNAL


class _Switch:
    """Whether this process records and exports spans: set once at start by
    `configure_tracing`, like the OpenTelemetry API's own global provider; and its
    tracer (the SDK makes a new one, at some cost, on every `get_tracer`)."""

    on = False
    tracer: trace.Tracer | None = None


# Off: the current request's W3C context, as the carrier it is handed on as. A plain
# dict in a context variable, set once per request: no OpenTelemetry object is made for
# a trace nothing records (`span`, `carrier`, `current_ids`). Never mutated.
_carried: ContextVar[Carrier | None] = ContextVar("flowhooks_trace_carried", default=None)


def enabled() -> bool:
    return _Switch.on


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider (batched OTLP/HTTP export) when the standard
    variables ask for it; True if they did. Once per process, at start."""
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        switch(False)
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = environ.get("OTEL_SERVICE_NAME") or f"flowhooks-{service}"
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on);
    # the processor's delays and sizes from OTEL_BSP_*; the exporter's endpoint,
    # headers, timeout and compression from OTEL_EXPORTER_OTLP_*. Spans still queued
    # at exit are flushed by the provider's own exit hook.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    switch(True)
    return True


def tracer() -> trace.Tracer:
    if _Switch.tracer is None:
        _Switch.tracer = trace.get_tracer(TRACER_NAME)
    return _Switch.tracer


def switch(on: bool) -> None:
    """Turn the helpers on or off over the current global provider (tests, benches)."""
    _Switch.on, _Switch.tracer = on, None


def carrier() -> Carrier:
    """The current span's W3C context, to hand on ({} outside any); off, the context
    the request came with (`span` keeps it current without recording)."""
    if not _Switch.on:
        carried = _carried.get()
        return dict(carried) if carried else {}
    # Formatted here rather than by the configured propagator: W3C trace context is the
    # one format spoken (as the contract says), and this is a tenth of its cost.
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    handed = {
        "traceparent": f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{span_context.trace_flags:02x}"
    }
    if span_context.trace_state:
        handed["tracestate"] = span_context.trace_state.to_header()
    return handed


def inject(headers: dict[str, Any]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers, in
    place of any the caller set; nothing outside a span."""
    handed = carrier()
    if handed:
        for name in [name for name in headers if name.lower() in _CARRIED]:
            del headers[name]
        headers.update(handed)


def incoming(headers: Mapping[str, Any]) -> Carrier:
    """The W3C context of received headers (any case), bounded in size; a sender's
    `traceparent` is only followed if well formed (`_parsed`: else a new trace)."""
    found: Carrier = {}
    for name in _CARRIED:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.title())
        if isinstance(value, bytes):  # an AMQP header may arrive as bytes
            value = value.decode(errors="replace")
        if isinstance(value, str) and len(value) <= 512:
            found[name] = value
    return found


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


def _parsed(value: str | None) -> re.Match[str] | None:
    """A W3C `traceparent` (version 00's form) naming a real span, else None."""
    found = _TRACEPARENT.fullmatch(value.strip()) if value else None
    if found is None or found.group(1) == "ff":
        return None
    if found.group(2) == _NO_TRACE or found.group(3) == _NO_SPAN:
        return None
    return found


def _span_context(parent: Mapping[str, str]) -> SpanContext | None:
    found = _parsed(parent.get("traceparent"))
    if found is None:
        return None
    state = parent.get("tracestate")
    return SpanContext(
        int(found.group(2), 16),
        int(found.group(3), 16),
        is_remote=True,
        trace_flags=TraceFlags(int(found.group(4), 16) & TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([state]) if state else None,
    )


def carried_of(parent: Mapping[str, str]) -> Carrier:
    """Off: what a request with this carrier hands on, as `carrier` formats it when
    traces are on: the sender's context (its `traceparent` in version 00's form, its
    flags but `sampled` dropped, its `tracestate` as OpenTelemetry reads it), or a new
    trace's random ids, not sampled."""
    found = _parsed(parent.get("traceparent"))
    if found is None:
        # Random like the SDK's own ids (`random`, not the OS's entropy: ids need not be
        # secret), never zero (which names no span).
        trace_id = random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-00"}
    flags = int(found.group(4), 16) & TraceFlags.SAMPLED
    handed = {"traceparent": f"00-{found.group(2)}-{found.group(3)}-{flags:02x}"}
    state = parent.get("tracestate")
    if state:
        header = TraceState.from_header([state]).to_header()
        if header:
            handed["tracestate"] = header
    return handed


def _context(parent: Mapping[str, str] | None) -> otel_context.Context | None:
    if parent is None:
        return None
    # An empty carrier (or one naming no span) starts a new trace rather than joining
    # whatever is current.
    span_context = _span_context(parent)
    if span_context is None:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


def link_to(parent: Mapping[str, str] | None) -> Link | None:
    """A link to the span a carrier names (None if it names none)."""
    if not _Switch.on or not parent:
        return None
    span_context = _span_context(parent)
    return Link(span_context) if span_context is not None else None


def trace_id_of(parent: Mapping[str, str] | None) -> str | None:
    """The 32 hex digits of the trace a carrier belongs to (None: it names none). Read
    whether traces are on here or not: the carrier was made where they were."""
    found = _parsed((parent or {}).get("traceparent"))
    return found.group(2) if found else None


def traceparent_of(parent: Mapping[str, str] | None) -> str | None:
    """A carrier's `traceparent` if it is well formed (what is stored of it)."""
    found = _parsed((parent or {}).get("traceparent"))
    return found.group(0) if found else None


def recorded_span(
    name: str,
    parent: str | None,
    start_ns: int,
    *,
    kind: SpanKind = INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """A span that already happened (from `start_ns` to now), child of the span a stored
    `traceparent` names; nothing if it names none."""
    if not _Switch.on or not parent:
        return
    recorded = tracer().start_span(
        name,
        context=_context({"traceparent": parent}),
        kind=kind,
        attributes=attributes,
        start_time=start_ns,
    )
    recorded.end()


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = INTERNAL,
    parent: Mapping[str, str] | None = None,
    links: Sequence[Link | None] = (),
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span | None]:
    """A span, current inside the block; None when off (then `parent`'s context is
    made current, recording nothing). `parent`: a carrier (a new trace if it names no
    span); None: the current span is the parent. An exception leaving the block marks
    the span as an error (its type only: messages may hold data)."""
    if not _Switch.on:
        # Nothing recorded; the context is still carried: the request's own (the
        # sender's, or a new trace's) stays current, for the hops, logs and outgoing
        # requests after this one.
        if parent is None:
            yield None
            return
        token = _carried.set(carried_of(parent))
        try:
            yield None
        finally:
            _carried.reset(token)
        return
    with tracer().start_as_current_span(
        name,
        context=_context(parent),
        kind=kind,
        links=[link for link in links if link is not None],
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__qualname__)
            current.set_status(Status(StatusCode.ERROR))
            raise


T = TypeVar("T")


def handed_on(item: T) -> T:
    """A copy of a pydantic model with a `trace` field, carrying the current span's
    context (what the next hop continues); the item itself if it carries that already
    (off, a hop adds no span)."""
    handed = carrier()
    if handed == item.trace:  # type: ignore[attr-defined]
        return item
    return item.model_copy(update={"trace": handed})  # type: ignore[attr-defined,no-any-return]


def failed(current: Span | None, error_type: str) -> None:
    """Mark a span failed without an exception (an answer that is an error)."""
    if current is not None:
        current.set_attribute("error.type", error_type)
        current.set_status(Status(StatusCode.ERROR))


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex (for logs), None outside a span."""
    if not _Switch.on:
        carried = _carried.get()
        if carried is None:
            return None
        traceparent = carried["traceparent"]  # 00-<trace id>-<span id>-<flags>
        return traceparent[3:35], traceparent[36:52]
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def processing(
    destination: str, parent: Mapping[str, str], **attributes: str | int
) -> contextlib.AbstractContextManager[Span | None]:
    """A consumer's span for one item of a message from `destination`, continuing the
    item's own trace (messaging semantic conventions)."""
    if not _Switch.on:
        return span("", parent=parent)  # the item's context carried, nothing recorded
    return span(
        f"process {destination}",
        kind=CONSUMER,
        parent=parent,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": destination,
            **attributes,
        },
    )


async def traced_step(ref_id: str, step_type: str, running: Awaitable[T]) -> T:
    """Await a flow step inside its span (named by its ref-id: steps nested in it are
    its children)."""
    if not _Switch.on:
        return await running
    with span(ref_id, attributes={"flowhooks.step.type": step_type}):
        return await running
