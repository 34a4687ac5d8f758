"""OpenTelemetry traces: one trace per webhook, from the sender's `traceparent` through
the broker, the runner, its workers' steps, outgoing requests and the debugger's write.

Configured only by the standard variables (read by the SDK itself):
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on,
over OTLP/HTTP; `OTEL_SERVICE_NAME` (default `flowhooks-<service>`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_HEADERS`... `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
turn it off whatever the endpoint.

Off, every helper here returns at its first line (one boolean): no span, no context
attached, empty carriers; the SDK is not even imported.

Context crosses processes as W3C trace-context carriers (`traceparent`, `tracestate`):
in HTTP headers, in AMQP message headers (a batch message's own send span), and in each
item of a batched message (`WebhookRequest.trace`), since one message holds many
requests of many traces."""

import contextlib
import os
import re
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
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
    """Whether this process exports traces: set once at start by `configure_tracing`,
    like the OpenTelemetry API's own global provider."""

    on = False


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
        _Switch.on = False
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
    _Switch.on = True
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def carrier() -> Carrier:
    """The current span's W3C context, to hand on ({} when off or outside a span)."""
    if not _Switch.on:
        return {}
    headers: Carrier = {}
    propagate.inject(headers)
    return {name: headers[name] for name in _CARRIED if name in headers}


def inject(headers: dict[str, Any]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers."""
    if _Switch.on:
        headers.update(carrier())


def incoming(headers: Mapping[str, str]) -> Carrier:
    """The W3C context of received headers (any case), bounded: what a sender sends is
    only honoured if well formed (the propagator checks), and never kept whole."""
    if not _Switch.on:
        return {}
    found: Carrier = {}
    for name in _CARRIED:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.title())
        if isinstance(value, str) and len(value) <= 512:
            found[name] = value
    return found


def _context(parent: Mapping[str, str] | None) -> otel_context.Context | None:
    if parent is None:
        return None
    # An empty carrier starts a new trace rather than joining whatever is current.
    return propagate.extract(parent, context=otel_context.Context())


def link_to(parent: Mapping[str, str] | None) -> Link | None:
    """A link to the span a carrier names (None if it names none)."""
    if not _Switch.on or not parent:
        return None
    span_context = trace.get_current_span(_context(parent)).get_span_context()
    return Link(span_context) if span_context.is_valid else None


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def trace_id_of(parent: Mapping[str, str] | None) -> str | None:
    """The 32 hex digits of the trace a carrier belongs to (None: it names none). Read
    whether traces are on here or not: the carrier was made where they were."""
    found = _TRACEPARENT.fullmatch((parent or {}).get("traceparent", ""))
    return found.group(1) if found and found.group(1) != "0" * 32 else None


def traceparent_of(parent: Mapping[str, str] | None) -> str | None:
    """A carrier's `traceparent` if it is well formed (what is stored of it)."""
    value = (parent or {}).get("traceparent", "")
    found = _TRACEPARENT.fullmatch(value)
    return value if found and found.group(1) != "0" * 32 else None


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
    """A span, current inside the block; None when off. `parent`: a carrier (a new
    trace if it names no span); None: the current span is the parent. An exception
    leaving the block marks the span as an error (its type only: messages may hold
    data)."""
    if not _Switch.on:
        yield None
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
    context (what the next hop continues); the item itself when off."""
    if not _Switch.on:
        return item
    return item.model_copy(update={"trace": carrier()})  # type: ignore[attr-defined,no-any-return]


def failed(current: Span | None, error_type: str) -> None:
    """Mark a span failed without an exception (an answer that is an error)."""
    if current is not None:
        current.set_attribute("error.type", error_type)
        current.set_status(Status(StatusCode.ERROR))


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex (for logs), None outside a span."""
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
        return contextlib.nullcontext()
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
