"""Structured JSON logs through structlog. The request id is bound with
`structlog.contextvars.bind_contextvars(request_id=...)` and appears on every line
logged while that request is handled; the current span's `trace_id` and `span_id`
(shared/tracing.py) likewise, whether traces are exported or not."""

import logging
import sys

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from shared import tracing


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The trace and span a line was logged in, so logs join the trace."""
    ids = tracing.current_ids()
    if ids is not None:
        event["trace_id"], event["span_id"] = ids
    return event


def configure_logging(service: str, level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s")
    # aio-pika/aiormq log every reconnect attempt at length; keep their warnings only.
    for noisy in ("aio_pika", "aiormq", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # OpenTelemetry warns of every malformed `tracestate` a sender sends (then ignores
    # it): a flood of them must not flood the logs.
    logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
