from typing import Any

import orjson
import pytest

from services.runner.definition import MAX_STEP_DEPTH, parse_definition
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest

STEP = {"ref_id": "res1", "type": "template", "template": "{{ web1.kind }}"}


def parse(raw: Any) -> Any:
    return parse_definition(raw, TemplateEngine(), max_timeout_s=300)


def refusal(raw: Any) -> tuple[str, Any]:
    with pytest.raises(BadRequest) as caught:
        parse(raw)
    return caught.value.message, caught.value.data


def test_defaults_and_contract_example() -> None:
    definition = parse(
        {
            "name": "Sync user to CRM",
            "status": "live",
            "webhook": {
                "ref_id": "web1",
                "async": False,
                "timeout_s": 30,
                "response": {"status_code": 200, "body": '{"valid": {{ res1.value == "x" }}}'},
            },
            "steps": [STEP],
        }
    )
    assert definition.public()["webhook"] == {
        "ref_id": "web1",
        "async": False,
        "timeout_s": 30.0,
        "response": {
            "status_code": 200,
            "body": '{"valid": {{ res1.value == "x" }}}',
            "content_type": None,
        },
    }
    assert parse({"name": "x"}).public() == {
        "name": "x",
        "status": "draft",
        "steps": [],
        "webhook": {"ref_id": "web1", "async": False, "timeout_s": 30.0, "response": None},
    }


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": "x", "status": "on"}, "status", "'draft', 'live' or 'paused'"),
        (
            {"name": "x", "webhook": {"response": {"status_code": 99}}},
            "webhook.response.status_code",
            "greater than or equal to 100",
        ),
        (
            {"name": "x", "webhook": {"response": {"status_code": 600}}},
            "webhook.response.status_code",
            "less than or equal to 599",
        ),
        ({"name": "x", "webhook": {"timeout_s": 301}}, "webhook.timeout_s", "at most 300"),
        ({"name": "x", "webhook": {"ref_id": "request"}}, "webhook.ref_id", "reserved"),
        (
            {"name": "x", "steps": [{"ref_id": "a", "type": "nope"}]},
            "steps[0].type",
            "unknown step type 'nope'",
        ),
        ({"name": "x", "steps": [{**STEP, "ref_id": "loop"}]}, "steps[0].ref_id", "reserved"),
        ({"name": "x", "steps": [STEP, STEP]}, "steps[1].ref_id", "duplicate ref-id 'res1'"),
        ({"name": "x", "steps": [{**STEP, "ref_id": "web1"}]}, "steps[0].ref_id", "duplicate"),
        ({"name": "x", "steps": [{**STEP, "ref_id": "9a"}]}, "steps[0].ref_id", "pattern"),
        (
            {"name": "x", "steps": [{**STEP, "template": "{% if %}"}]},
            "steps[0].template",
            "template syntax error on line 1",
        ),
        (
            {
                "name": "x",
                "steps": [{**STEP, "template": "{{ res2.value }}"}, {**STEP, "ref_id": "res2"}],
            },
            "steps[0].template",
            "unknown name 'res2'",
        ),
        (
            {"name": "x", "webhook": {"response": {"body": "{{ nothing }}"}}},
            "webhook.response.body",
            "unknown name 'nothing'",
        ),
        (
            {"name": "x", "steps": [{"ref_id": "a", "type": "template"}]},
            "steps[0].template",
            "Field required",
        ),
        ({"name": "x", "extra": 1}, "extra", "Extra inputs are not permitted"),
    ],
)
def test_refusals_point_at_the_field(raw: Any, field: str, message: str) -> None:
    text, data = refusal(raw)
    assert data == {"field": field}
    assert text.startswith(f"{field}: ")
    assert message in text


def test_request_and_earlier_steps_may_be_referenced() -> None:
    parse(
        {
            "name": "x",
            "webhook": {"response": {"body": "{{ b.value }} {{ request.id }}"}},
            "steps": [
                STEP,
                {
                    "ref_id": "b",
                    "type": "template",
                    "template": "{{ res1.value }} {{ range(3) | list }}",
                },
            ],
        }
    )


def nested(depth: int) -> dict[str, Any]:
    """Step lists `depth` deep (the top level counted), conditions and loops alternating."""
    step: dict[str, Any] = {"ref_id": "leaf", "type": "template", "template": "x"}
    for level in range(depth - 1):
        if level % 2:
            step = {"ref_id": f"l{level}", "type": "loop", "over": "[1]", "steps": [step]}
        else:
            step = {"ref_id": f"c{level}", "type": "condition", "if": "{{ true }}", "then": [step]}
    return {"name": "deep", "steps": [step]}


def test_step_nesting_bound() -> None:
    deepest = parse(nested(MAX_STEP_DEPTH))
    # What the store writes can be encoded (orjson stops at 255 levels).
    orjson.dumps(deepest.public())
    for depth in (MAX_STEP_DEPTH + 1, 150, 1000):
        message, data = refusal(nested(depth))
        assert message == f"{data['field']}: steps are nested deeper than {MAX_STEP_DEPTH} levels"
        assert data["field"].count("[0].") == MAX_STEP_DEPTH  # steps[0] and 31 nested
