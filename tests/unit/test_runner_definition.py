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


@pytest.mark.parametrize("status_code", [100, 101, 103, 199])
def test_an_informational_status_is_no_final_answer(status_code: int) -> None:
    """A 1xx answer leaves its caller waiting for the real one (it hung): refused."""
    text, data = refusal({"name": "x", "webhook": {"response": {"status_code": status_code}}})
    assert data == {"field": "webhook.response.status_code"}
    assert text == (
        "webhook.response.status_code: must be a final status, 200 to 599: a 1xx answer is"
        " informational, so the caller would wait for another"
    )
    fail = {"ref_id": "f", "type": "fail", "status_code": status_code}
    text, data = refusal({"name": "x", "steps": [fail]})
    assert data == {"field": "steps[0].status_code"}
    assert "must be a final status, 200 to 599" in text
    nested = {"ref_id": "c", "type": "condition", "if": "{{ true }}", "then": [fail]}
    assert refusal({"name": "x", "steps": [nested]})[1] == {"field": "steps[0].then[0].status_code"}


@pytest.mark.parametrize("status_code", [200, 204, 302, 404, 599])
def test_final_statuses_are_kept(status_code: int) -> None:
    definition = parse({"name": "x", "webhook": {"response": {"status_code": status_code}}})
    assert definition.webhook.response.status_code == status_code
    parse({"name": "x", "steps": [{"ref_id": "f", "type": "fail", "status_code": status_code}]})


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00", "\x1b", "\x7f", "\x0b"])
def test_header_values_and_content_type_have_no_control_characters(bad: str) -> None:
    text, data = refusal(
        {"name": "x", "webhook": {"response": {"content_type": f"text/plain{bad}X-Evil: 1"}}}
    )
    assert data == {"field": "webhook.response.content_type"}
    assert "no line breaks or other control characters" in text
    text, data = refusal(
        {"name": "x", "webhook": {"response": {"headers": {"X-Order": f"a{bad}b"}}}}
    )
    assert data == {"field": "webhook.response.headers.X-Order"}
    assert text == (
        "webhook.response.headers.X-Order: no line breaks or other control characters in a"
        " header value"
    )


def test_a_tab_and_non_ascii_text_are_fine_in_header_values() -> None:
    response = {
        "content_type": "text/plain; charset=utf-8",
        "headers": {"X-Order": "a\tb {{ web1.id }}", "X-Name": "Zoë"},
    }
    definition = parse({"name": "x", "webhook": {"response": response}})
    assert definition.webhook.response.headers["X-Order"] == "a\tb {{ web1.id }}"


# --- on_error (issue 25) ----------------------------------------------------------------

HANDLER = {"ref_id": "h", "type": "template", "template": "{{ error.step }} {{ res1 is defined }}"}


def test_on_error_is_parsed_like_steps_and_shown_only_when_given() -> None:
    raw = {
        "name": "x",
        "webhook": {"response": {"body": "{{ error.message if error else h.value }}"}},
        "steps": [STEP],
        "on_error": [
            HANDLER,
            {
                "ref_id": "c",
                "type": "condition",
                "if": "{{ error.status }}",
                "then": [
                    {"ref_id": "f", "type": "fail", "message": "{{ h.value }}", "status_code": 503}
                ],
            },
        ],
    }
    public = parse(raw).public()
    assert [step["ref_id"] for step in public["on_error"]] == ["h", "c"]
    assert public["on_error"][1]["then"][0]["status_code"] == 503
    assert parse(public).public() == public  # as stored, read back by the workers
    assert "on_error" not in parse({"name": "x", "steps": [STEP]}).public()
    assert "on_error" not in parse({"name": "x", "on_error": []}).public()
    assert "on_error" not in parse({"name": "x", "on_error": None}).public()
    # Without on_error, `error` is an ordinary ref-id, as before.
    parse({"name": "x", "steps": [{**STEP, "ref_id": "error"}]})


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"on_error": {"ref_id": "h"}}, "on_error", "must be a list of steps"),
        ({"on_error": [{"ref_id": "h", "type": "nope"}]}, "on_error[0].type", "unknown step type"),
        (
            {"on_error": [{"ref_id": "h", "type": "template"}]},
            "on_error[0].template",
            "Field required",
        ),
        (
            {"on_error": [{**HANDLER, "ref_id": "res1"}]},
            "on_error[0].ref_id",
            "duplicate ref-id 'res1'",
        ),
        (
            {"steps": [STEP, {**STEP, "ref_id": "error"}], "on_error": [HANDLER]},
            "steps[1].ref_id",
            "'error' is reserved in a flow with on_error",
        ),
        (
            {"steps": [{**STEP, "template": "{{ error }}"}], "on_error": [HANDLER]},
            "steps[0].template",
            "unknown name 'error'",
        ),
        (
            {
                "on_error": [
                    {**HANDLER, "template": "{{ later.value }}"},
                    {**STEP, "ref_id": "later"},
                ]
            },
            "on_error[0].template",
            "unknown name 'later'",
        ),
        (
            {"webhook": {"response": {"body": "{{ error }}"}}},
            "webhook.response.body",
            "unknown name 'error'",
        ),
        (
            {"on_error": [{**HANDLER, "status_code": 100, "type": "fail", "message": "m"}]},
            "on_error[0].template",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_on_error_refusals_point_at_the_field(raw: Any, field: str, message: str) -> None:
    text, data = refusal({"name": "x", "steps": [STEP], **raw})
    assert data == {"field": field}
    assert message in text, text


def test_steps_and_on_error_share_the_step_count_and_depth_bounds() -> None:
    steps = [STEP, *({**STEP, "ref_id": f"s{index}"} for index in range(149))]
    handlers = [{**HANDLER, "ref_id": f"h{index}"} for index in range(50)]
    parse({"name": "x", "steps": steps, "on_error": handlers})
    text, data = refusal({"name": "x", "steps": steps, "on_error": [*handlers, HANDLER]})
    assert (text, data) == (
        "on_error: a flow has at most 200 steps, steps and on_error together",
        {"field": "on_error"},
    )
    text, data = refusal({"name": "x", "on_error": nested(MAX_STEP_DEPTH + 1)["steps"]})
    assert data is not None and data["field"].startswith("on_error[0].")
    assert f"nested deeper than {MAX_STEP_DEPTH} levels" in text
