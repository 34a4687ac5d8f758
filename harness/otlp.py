"""An OTLP/HTTP trace receiver for the tests: `POST /v1/traces` with a protobuf
`ExportTraceServiceRequest` (what the services' exporter sends), decoded with
`opentelemetry-proto` into `ReceivedSpan`s. Runs on a thread of its own (its own event
loop), so that a module-scoped system, started before any test's loop, can be pointed
at it (`OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base`)."""

import asyncio
import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from harness.receiver import serving

# OpenTelemetry's SpanKind numbers in OTLP.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    error: bool


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        error=span.status.code == 2,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    base: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # False: only count the exports (a sink for the bench, whose CPU is not the point).
    decoding: bool = True
    exports: int = 0

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def app(self) -> web.Application:
        async def export(request: web.Request) -> web.Response:
            body = await request.read()
            self.exports += 1
            if self.decoding:
                if request.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received = decode(body)
                with self.lock:
                    self.spans.extend(received)
            return web.Response(
                body=ExportTraceServiceResponse().SerializeToString(),
                content_type="application/x-protobuf",
            )

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", export)
        return app


@contextmanager
def otlp_receiver(host: str = "127.0.0.1", decoding: bool = True) -> Iterator[OtlpReceiver]:
    """A receiver on a free port of `host`, served from a thread until the block ends."""
    receiver = OtlpReceiver(decoding=decoding)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with serving(receiver.app(), host) as base:
            receiver.base = base
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the OTLP receiver did not start")
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
