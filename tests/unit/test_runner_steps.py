"""condition, loop and fail, through the engine (no services)."""

from typing import Any

import aiohttp
import orjson
import pytest

from services.runner.definition import parse_definition
from services.runner.engine import Engine, Flow
from services.runner.steps.base import StepLimits
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.runs import RunResult
from tests.factories import webhook_request

TEMPLATES = TemplateEngine()


async def run(raw: dict[str, Any], body: Any, limits: StepLimits | None = None) -> RunResult:
    flow = Flow("f1", "w1", 1, parse_definition({"name": "t", **raw}, TEMPLATES, 300))
    request = webhook_request(body, request_id="r1", flow_id="f1", workspace_id="w1")
    return await Engine(TEMPLATES, limits).run(flow, request)


def data(result: RunResult) -> Any:
    return orjson.loads(result.body)["data"]


BRANCHING = {
    "steps": [
        {
            "ref_id": "big",
            "type": "condition",
            "if": "{{ web1.amount > 100 }}",
            "then": [{"ref_id": "label", "type": "template", "template": "big"}],
            "else": [{"ref_id": "small", "type": "template", "template": "small"}],
        },
    ],
    "webhook": {"response": {"body": "{{ big.value }} {{ label.value }}"}},
}


async def test_condition_takes_a_branch() -> None:
    assert (await run(BRANCHING, {"amount": 150})).body == "True big"
    result = await run(BRANCHING, {"amount": 5})
    assert result.status_code == 500  # `label` did not run: its name is undefined
    assert "'label' is undefined" in orjson.loads(result.body)["message"]
    no_response = {"steps": BRANCHING["steps"]}
    assert data(await run(no_response, {"amount": 5})) == {"value": False}
    assert [s.ref_id for s in (await run(no_response, {"amount": 5})).steps] == ["big", "small"]


async def test_loop_over_items() -> None:
    raw = {
        "steps": [
            {
                "ref_id": "each",
                "type": "loop",
                "over": "{{ web1.items }}",
                "steps": [
                    {"ref_id": "double", "type": "template", "template": "{{ loop.item * 2 }}"},
                    {
                        "ref_id": "line",
                        "type": "template",
                        "template": "{{ loop.index }}:{{ double.value }}",
                    },
                ],
            }
        ]
    }
    assert data(await run(raw, {"items": [1, 2, 3]})) == {
        "value": [{"value": "0:2"}, {"value": "1:4"}, {"value": "2:6"}]
    }
    assert data(await run(raw, {"items": []})) == {"value": []}
    failed = await run(raw, {"items": "nope"})
    assert "must give a list" in orjson.loads(failed.body)["message"]
    limited = await run(raw, {"items": [1, 2, 3]}, StepLimits(loop_max_items=2))
    assert "more than 2 items" in orjson.loads(limited.body)["message"]


async def test_fail_with_status() -> None:
    raw = {
        "steps": [
            {
                "ref_id": "check",
                "type": "condition",
                "if": "{{ web1.user is not defined }}",
                "then": [
                    {
                        "ref_id": "stop",
                        "type": "fail",
                        "message": "no user in {{ request.id }}",
                        "status_code": 422,
                    }
                ],
            },
        ]
    }
    result = await run(raw, {})
    assert result.status_code == 422
    assert orjson.loads(result.body) == {
        "status": 422,
        "error": "flow_error",
        "data": None,
        "message": "step 'stop' failed: no user in r1",
    }
    assert result.outcome == "failed"
    assert (await run(raw, {"user": "u"})).status_code == 200


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (
            {
                "steps": [
                    {
                        "ref_id": "l",
                        "type": "loop",
                        "over": "{{ web1 }}",
                        "steps": [
                            {"ref_id": "x", "type": "template", "template": "{{ loop.item }}"}
                        ],
                    },
                    {"ref_id": "after", "type": "template", "template": "{{ x.value }}"},
                ]
            },
            "steps[1].template",
            "unknown name 'x'",
        ),
        (
            {
                "steps": [
                    {
                        "ref_id": "c",
                        "type": "condition",
                        "if": "{{ true }}",
                        "then": [{"ref_id": "c", "type": "template", "template": "x"}],
                    }
                ]
            },
            "steps[0].then[0].ref_id",
            "duplicate ref-id 'c'",
        ),
        (
            {"steps": [{"ref_id": "c", "type": "condition", "if": "{% if %}"}]},
            "steps[0].if",
            "template syntax error",
        ),
        (
            {"steps": [{"ref_id": "t", "type": "template", "template": "{{ loop.item }}"}]},
            "steps[0].template",
            "unknown name 'loop'",
        ),
        (
            {"steps": [{"ref_id": "f", "type": "fail", "status_code": 99}]},
            "steps[0].status_code",
            "greater than or equal to 100",
        ),
        ({"steps": [{"ref_id": "h", "type": "http"}]}, "steps[0].url", "Field required"),
        (
            {
                "steps": [
                    {
                        "ref_id": "l",
                        "type": "loop",
                        "over": "x",
                        "steps": [{"ref_id": "bad", "type": "nope"}],
                    }
                ]
            },
            "steps[0].steps[0].type",
            "unknown step type",
        ),
    ],
)
def test_nested_validation(raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_definition({"name": "t", **raw}, TEMPLATES, 300)
    assert caught.value.data == {"field": field}
    assert message in caught.value.message


def test_nested_steps_round_trip() -> None:
    definition = parse_definition({"name": "t", **BRANCHING}, TEMPLATES, 300)
    assert definition.public()["steps"][0] == {
        "ref_id": "big",
        "type": "condition",
        "if": "{{ web1.amount > 100 }}",
        "then": [{"ref_id": "label", "type": "template", "template": "big"}],
        "else": [{"ref_id": "small", "type": "template", "template": "small"}],
    }


# --- http step: secrets never echoed, malformed URLs fail cleanly (issue 9) ----------


class FakeHttp:
    """Stands in for OutboundHttp: raises `error`, or answers with `headers`."""

    def __init__(
        self, error: BaseException | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.error = error
        self.headers = headers or {}
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: bytes | None,
        timeout_s: float,
        max_response_bytes: int,
    ) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((method, url, headers))
        if self.error is not None:
            raise self.error
        return 200, self.headers, b"ok"


SECRET_URL = "https://user:pa55@api.example.com/v1/items?api_key=S3CRET&page=2"


async def run_http(http: Any, url: str = SECRET_URL, **step: Any) -> RunResult:
    flow = Flow(
        "f1",
        "w1",
        1,
        parse_definition(
            {
                "name": "t",
                "steps": [
                    {
                        "ref_id": "call",
                        "type": "http",
                        "url": url,
                        "headers": {"X-Shopify-Access-Token": "S3CRET", "Accept": "*/*"},
                        "retries": 0,
                        **step,
                    }
                ],
            },
            TEMPLATES,
            300,
        ),
    )
    request = webhook_request({}, request_id="r1", flow_id="f1", workspace_id="w1")
    return await Engine(TEMPLATES, None, http).run(flow, request)


def assert_no_secret(result: RunResult) -> None:
    everything = result.model_dump_json()
    assert "S3CRET" not in everything and "pa55" not in everything


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientConnectionError(f"Cannot connect to host {SECRET_URL}"),
        aiohttp.InvalidURL(SECRET_URL),
        TimeoutError(),
        ValueError(f"Newline or carriage return character detected: {SECRET_URL}"),
        RuntimeError("something unexpected"),
    ],
)
async def test_http_step_errors_never_echo_the_query_or_userinfo(error: BaseException) -> None:
    result = await run_http(FakeHttp(error))
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert orjson.loads(result.body)["error"] == "flow_error"
    message = orjson.loads(result.body)["message"]
    assert "https://api.example.com/v1/items" in message
    assert "?" not in message.split("api.example.com", 1)[1].split(" ", 1)[0]
    assert_no_secret(result)
    step = result.steps[0]
    assert step.error is not None and "S3CRET" not in step.error
    assert (
        step.input["url"] == "https://[redacted]@api.example.com/v1/items?api_key=[redacted]&page=2"
    )
    assert step.input["headers.X-Shopify-Access-Token"] == "[redacted]"
    assert step.input["headers.Accept"] == "*/*"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://api.example.com\\@evil.example/?token=S3CRET", "a backslash"),
        ("https://api.example.com/\x00?token=S3CRET", "a control character"),
        ("https://[::1/?token=S3CRET", "not valid"),
        ("ftp://user:pa55@example.com/?token=S3CRET", "only http and https"),
        ("https:///nohost?token=S3CRET", "no host"),
        ("https://api.example.com:99999/?token=S3CRET", "not valid"),
    ],
)
async def test_a_malformed_url_is_a_clean_step_failure(url: str, why: str) -> None:
    http = OutboundHttp(AddressPolicy([]))
    try:
        result = await run_http(http, url=url)
    finally:
        await http.close()
    assert (result.outcome, result.status_code) == ("failed", 500)
    message = orjson.loads(result.body)["message"]
    assert "steps[0].url" in message and why in message
    assert_no_secret(result)


async def test_http_step_output_and_trace_redact_secret_headers() -> None:
    http = FakeHttp(headers={"Set-Cookie": "sid=S3CRET", "X-Upstream-Token": "S3CRET", "A": "b"})
    result = await run_http(http, url="https://api.example.com/?q={{ web1 }}&key=S3CRET")
    assert result.outcome == "succeeded", result.body
    output = result.steps[0].output
    assert output["headers"] == {
        "Set-Cookie": "[redacted]",
        "X-Upstream-Token": "[redacted]",
        "A": "b",
    }
    assert_no_secret(result)
    # What was sent is the real thing: redaction is only for what is shown and stored.
    assert http.calls[0][2]["X-Shopify-Access-Token"] == "S3CRET"
