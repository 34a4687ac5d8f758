"""Bounds on what a flow builds: values, traces, results (no services)."""

from datetime import UTC, datetime

import pytest

from services.runner.bounds import (
    BoundExceeded,
    at_least_bytes,
    bound_trace,
    encoded,
    json_value,
)
from shared.schemas.runs import StepTrace


def test_values_that_orjson_refuses_are_made_plain() -> None:
    assert json_value({"n": 2**64, "s": "a\ud800b", "t": (1, 2)}, 1000) == (
        {"n": "18446744073709551616", "s": "a\ufffdb", "t": [1, 2]},
        len('{"n":"18446744073709551616","s":"a\ufffdb","t":[1,2]}'.encode()),
    )
    assert json_value(2**63 - 1, 100) == (2**63 - 1, 19)


def test_an_integer_too_long_to_print_is_named_not_printed() -> None:
    assert json_value(10**5000, 1000)[0] == "<integer of 16610 bits>"


def test_a_value_past_its_bound_names_the_setting() -> None:
    with pytest.raises(BoundExceeded) as refused:
        json_value("a" * 2000, 1000)
    assert str(refused.value) == (
        "a value of at least 2002 bytes is larger than the bound of 1000 bytes"
        " (FLOWHOOKS_RUNNER_MAX_VALUE_BYTES)"
    )


def test_nesting_past_the_depth_bound_is_refused() -> None:
    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(BoundExceeded, match="nested deeper than 200 levels"):
        encoded({"x": deep, "bad": "\ud800"}, 10_000)


def _entry(ref_id: str, output: object) -> StepTrace:
    return StepTrace(
        ref_id=ref_id,
        type="template",
        input={"template": "x"},
        output=output,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        duration_ms=1,
    )


def test_a_huge_container_is_refused_before_it_is_encoded() -> None:
    # orjson would reserve ~180 bytes an item first: under the worker's memory bound, a
    # segfault. The lower bound refuses it without walking it.
    with pytest.raises(BoundExceeded) as refused:
        json_value([0] * 3_000_000, 1_000_000)
    assert str(refused.value) == (
        "a value of at least 3000001 bytes is larger than the bound of 1000000 bytes"
        " (FLOWHOOKS_RUNNER_MAX_VALUE_BYTES)"
    )
    assert at_least_bytes({"a": ["xy", 1]}, 100) == 2 + 4 + 3 + 4
    assert len(encoded({"a": ["xy", 1]}, 100)) == len('{"a":["xy",1]}')


def test_trace_outputs_past_the_byte_bound_become_markers() -> None:
    trace = [_entry("a", "x" * 100), _entry("b", "y" * 100), _entry("c", 1)]
    # Inputs count too: 16 bytes each.
    bounded = bound_trace(trace, max_bytes=160, dropped_steps=0)
    assert bounded[0].output == "x" * 100
    assert bounded[1].output == {"truncated": True, "size": 102}
    assert bounded[2].output == 1  # small enough to fit what is left
    assert len(bounded) == 3


def test_dropped_steps_are_named_by_a_last_entry() -> None:
    bounded = bound_trace([_entry("a", 1)], max_bytes=1000, dropped_steps=42)
    assert [(entry.type, entry.error) for entry in bounded] == [
        ("template", None),
        (
            "truncated",
            "42 more steps ran but are not in the trace (FLOWHOOKS_RUNNER_MAX_TRACE_STEPS)",
        ),
    ]
