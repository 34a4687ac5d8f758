"""`encode_result` writes a run's result byte for byte as `RunResult.model_dump_json()`
does (the supervisor splices the bytes into replies and records), over results as
varied as runs produce, and fails a result pydantic cannot encode the same way."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.runner.worker_protocol import RunOutput, encode_result
from shared.schemas.runs import RunResult, StepTrace
from shared.schemas.vocabulary import Outcome

AT = datetime(2026, 12, 7, 5, 18, 41, 617690, tzinfo=UTC)

EVERY_ASCII = "".join(chr(code) for code in range(128))

VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**70,  # past 64 bits: orjson refuses, pydantic writes it
    0.0,
    -0.0,
    1.0,
    1.145,
    0.1 + 0.2,
    1e16,
    1.5e-7,
    123456789.123456789,
    float("inf"),
    float("nan"),
    "",
    EVERY_ASCII,
    "é ü ß 漢字 🎉 \u2028 \u2029 \ufeff",
    {"a": [1, 2.5, {"b": None}], "": "empty key", "ключ": ["x"]},
    [[], {}, [[]], ""],
    ("a", 1),
    {1: "an int key"},  # orjson refuses, pydantic writes "1"
]


def _result(value: Any, **fields: Any) -> RunResult:
    step = StepTrace(
        ref_id="res1", type="template", input={"template": value}, started_at=AT, duration_ms=1.145
    )
    step.output = value  # as the engine sets it: not validated
    values: dict[str, Any] = {
        "request_id": "c42df152c43144038e008b05efda81e6",
        "outcome": Outcome.SUCCEEDED,
        "status_code": 200,
        "content_type": "application/json",
        "body": '{"valid": "myResult"}',
        "steps": [step],
        "started_at": AT,
        "finished_at": AT + timedelta(milliseconds=6),
    }
    return RunResult(**{**values, **fields})


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_result_is_encoded_as_pydantic_encodes_it(value: Any) -> None:
    result = _result(value)
    assert encode_result(result) == result.model_dump_json().encode()


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"steps": []},
        {"error": "step 'res1' failed: x\ny", "outcome": Outcome.FAILED, "status_code": 500},
        {"outcome": Outcome.TIMEOUT, "repeated": "its worker process stopped; run again"},
        {"headers": {"X-A": "1", "x-b": "é\t2"}, "answered_at": AT},
        {"body": EVERY_ASCII + "🎉", "content_type": "text/plain; charset=utf-8"},
        {"started_at": datetime(2026, 1, 1, tzinfo=UTC)},  # no microseconds
        {"started_at": datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)},
        {"started_at": datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
        {"started_at": datetime(2026, 1, 1, 1, 2, 3, 4)},  # naive
        {"answered_at": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))},
    ],
    ids=repr,
)
def test_the_result_fields_are_encoded_as_pydantic_encodes_them(fields: dict[str, Any]) -> None:
    result = _result({"value": "myResult"}, **fields)
    assert encode_result(result) == result.model_dump_json().encode()


def test_a_result_copied_with_an_answer_keeps_its_field_order() -> None:
    result = _result("x").model_copy(
        update={"status_code": 202, "body": "early", "headers": {"a": "b"}, "answered_at": AT}
    )
    assert encode_result(result) == result.model_dump_json().encode()


def test_a_long_trace_is_encoded_as_pydantic_encodes_it() -> None:
    result = _result("x", steps=[_result(value).steps[0] for value in VALUES * 3])
    assert encode_result(result) == result.model_dump_json().encode()


def test_an_unencodable_result_fails_as_pydantic_fails_it() -> None:
    result = _result("a lone surrogate \ud800")
    with pytest.raises(ValueError):
        result.model_dump_json()
    with pytest.raises(ValueError):
        encode_result(result)
    with pytest.raises(ValueError):
        RunOutput.of(result)


def test_the_supervisor_encodes_a_result_as_the_worker_does() -> None:
    result = _result([1, "two"])
    assert RunOutput.of(result).encoded == result.model_dump_json().encode()
