"""Bounds on what a flow builds: every value a template or step produces, the run's
step trace, and the result a worker sends back. Whatever a flow builds either fits
these bounds or fails its own run with a message that names the bound; nothing a flow
builds can make a message too large to encode or to publish."""

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.runs import StepTrace

# Containers nested deeper than this are not plain JSON data (orjson refuses 255).
MAX_DEPTH = 200
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_SURROGATE = re.compile("[\ud800-\udfff]")
_SCALARS = (int, float, type(None))


class RunBounds(BaseModel):
    """What a run in a worker may use, build and reach: one model, read from the
    runner's settings (each field is `FLOWHOOKS_RUNNER_<FIELD>`, e.g.
    FLOWHOOKS_RUNNER_RUN_CPU_S; `RunnerSettings.run_bounds`) and handed to each worker
    as it is (its first frame), and from there to the template engine, the engine and
    the steps. The defaults are the settings' defaults."""

    model_config = ConfigDict(frozen=True)

    # Address-space bound of one worker process (RLIMIT_AS).
    worker_memory_mb: int = Field(default=512, ge=128)
    # CPU time one run may use in all.
    run_cpu_s: float = Field(default=5.0, gt=0)
    # Budget of one template render (interrupted from inside the worker, cheaper than a
    # kill). Past it the step (or response) fails with a clear error.
    render_timeout_s: float = Field(default=0.5, gt=0)
    # Largest rendered text, and largest string or list one operator may build.
    max_output_chars: int = Field(default=1_000_000, ge=1000)
    # Largest value (encoded as JSON) a step may produce.
    max_value_bytes: int = Field(default=1_000_000, ge=1000)
    # Loop iterations of one run in total (nested loops multiply).
    max_loop_iterations: int = Field(default=10_000, ge=1)
    # Step trace of one run: entries kept (steps beyond are counted, not recorded), and
    # bytes of inputs and outputs kept.
    max_trace_steps: int = Field(default=1_000, ge=10)
    max_trace_bytes: int = Field(default=1_000_000, ge=10_000)
    # Largest response body a flow may give its sender.
    max_response_bytes: int = Field(default=1_000_000, ge=1000)
    # Networks `http` steps may reach although they are private, loopback or
    # link-local (JSON list of CIDRs, e.g. ["10.1.0.0/16"]). Empty: only public addresses.
    http_allow_networks: tuple[str, ...] = ()
    # Largest response body an `http` step reads.
    http_max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Longest wait an `http` step's retry gives an answer's `Retry-After` (a longer wish
    # waits this long; the run's own timeout bounds every wait too).
    http_retry_after_max_s: float = Field(default=60.0, ge=0)
    # Most items a `loop` step iterates over.
    loop_max_items: int = Field(default=10_000, ge=1)
    # Compiled templates kept per process.
    template_cache_size: int = Field(default=10_000, ge=1)


class BoundExceeded(Exception):
    """A run built something past one of its bounds; the message names the setting."""


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _plain(value: Any, depth: int) -> Any:
    """`value` as data orjson can encode: integers beyond 64 bits become their digits,
    lone surrogates become U+FFFD, anything else that is not JSON becomes its text."""
    if depth > MAX_DEPTH:
        raise BoundExceeded(f"a value is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        try:
            return str(value)
        except ValueError:  # more digits than Python converts
            return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_plain(str(k), depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item, depth + 1) for item in value]
    return _plain(str(value), depth + 1)


def at_least_bytes(value: Any, limit: int) -> int:
    """A lower bound of `value`'s encoded size, counted only until it passes `limit`:
    cheap for values within the bound, immediate for huge containers. (orjson must
    never see a huge container: it reserves ~180 bytes of address space an item up
    front, and a failed reservation under the worker's memory bound is a segfault.)"""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)  # {} and, per entry, "":  and a comma at least
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 1 + len(item)
            if total > limit:
                break
            # Numbers, booleans and None are counted by len() already.
            stack.extend([each for each in item if not isinstance(each, _SCALARS)])
        else:
            total += 1
        if total > limit:
            break
    return total


def encoded(value: Any, max_bytes: int) -> bytes:
    """`value` as JSON bytes, made encodable where it is not (see `_plain`); refused
    when it is larger than `max_bytes`."""
    size = at_least_bytes(value, max_bytes)
    if size > max_bytes:
        raise _too_large(f"at least {size}", max_bytes)
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        try:
            return orjson.dumps(_plain(value, 0), option=_JSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise BoundExceeded(f"a value cannot be encoded as JSON: {exc}") from None


def json_value(value: Any, max_bytes: int) -> tuple[Any, int]:
    """What a template or step produced, as plain JSON data of at most `max_bytes`
    encoded bytes (`FLOWHOOKS_RUNNER_MAX_VALUE_BYTES`), and its encoded size."""
    data = encoded(value, max_bytes)
    if len(data) > max_bytes:
        raise _too_large(str(len(data)), max_bytes)
    return orjson.loads(data), len(data)


def _too_large(size: str, max_bytes: int) -> BoundExceeded:
    return BoundExceeded(
        f"a value of {size} bytes is larger than the bound of {max_bytes} bytes"
        " (FLOWHOOKS_RUNNER_MAX_VALUE_BYTES)"
    )


def truncated(size: int) -> dict[str, Any]:
    """What stands in the trace for a value past the trace's bound."""
    return {"truncated": True, "size": size}


def bound_trace(
    trace: list[StepTrace],
    max_bytes: int,
    dropped_steps: int,
    output_sizes: dict[int, int] | None = None,
) -> list[StepTrace]:
    """The trace with its inputs and outputs kept while their total stays within
    `max_bytes` (`FLOWHOOKS_RUNNER_MAX_TRACE_BYTES`); later ones are replaced by a
    `truncated` marker with their size. `dropped_steps` (steps past the trace's step
    bound, never recorded) are named by one marker entry at the end. `output_sizes`:
    the encoded sizes of outputs already measured, by `id()` of their entry."""
    total = 0
    known = output_sizes or {}
    for entry in trace:
        for attribute in ("input", "output"):
            value = getattr(entry, attribute)
            if value is None:
                continue
            size = known.get(id(entry), -1) if attribute == "output" else -1
            if size < 0:
                size = at_least_bytes(value, max_bytes)
            if size <= max_bytes and (attribute != "output" or id(entry) not in known):
                try:
                    size = len(encoded(value, max_bytes))
                except BoundExceeded:
                    size = max_bytes + 1
            if total + size > max_bytes:
                setattr(entry, attribute, truncated(size))
            else:
                total += size
        if entry.error is not None and len(entry.error) > 2000:
            entry.error = entry.error[:2000] + "…"
    if dropped_steps:
        last = trace[-1] if trace else None
        trace.append(
            StepTrace(
                ref_id="…",
                type="truncated",
                error=f"{dropped_steps} more steps ran but are not in the trace"
                " (FLOWHOOKS_RUNNER_MAX_TRACE_STEPS)",
                started_at=last.started_at if last else datetime.now(UTC),
                duration_ms=0,
            )
        )
    return trace
