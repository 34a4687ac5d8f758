"""condition, loop and fail, through the engine (no services)."""

import re
import time
from typing import Any

import aiohttp
import orjson
import pytest

from harness.factories import webhook_request
from services.runner.bounds import RunBounds
from services.runner.definition import parse_definition
from services.runner.engine import Engine, Flow
from services.runner.steps.base import RunState
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.runs import RunResult
from tests.cpu_templates import burning

TEMPLATES = TemplateEngine()


async def run(raw: dict[str, Any], body: Any, limits: RunBounds | None = None) -> RunResult:
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
    limited = await run(raw, {"items": [1, 2, 3]}, RunBounds(loop_max_items=2))
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


# --- http step: Idempotency-Key (issue 20) ----------------------------------------------


class FlakyHttp(FakeHttp):
    """Answers 503 `failures` times, then 200."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures

    async def request(
        self, method: str, url: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        await super().request(method, url, **kwargs)
        if self.failures:
            self.failures -= 1
            return 503, {}, b"busy"
        return 200, {}, b"ok"


def keys(http: FakeHttp) -> list[str | None]:
    return [headers.get("Idempotency-Key") for _, _, headers in http.calls]


async def run_steps_http(
    http: Any, steps: list[dict[str, Any]], request_id: str = "r1"
) -> RunResult:
    flow = Flow("f1", "w1", 1, parse_definition({"name": "t", "steps": steps}, TEMPLATES, 300))
    request = webhook_request({"items": [1, 2]}, request_id=request_id, flow_id="f1")
    return await Engine(TEMPLATES, None, http).run(flow, request)


def call(ref_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "ref_id": ref_id,
        "type": "http",
        "url": "https://api.example.com/",
        "retry_backoff_s": 0,
        **fields,
    }


async def test_every_attempt_of_a_request_carries_the_same_idempotency_key() -> None:
    """The key is the request id and the step's ref-id: the same on every retry, and on
    a run of the same request repeated (after its worker or runner died)."""
    http = FlakyHttp(failures=2)
    result = await run_steps_http(http, [call("charge", retries=2)])
    assert result.outcome == "succeeded", result.body
    assert keys(http) == ["r1:charge"] * 3
    again = FlakyHttp()
    await run_steps_http(again, [call("charge", retries=2)])
    assert keys(again) == ["r1:charge"]
    other = FlakyHttp()
    await run_steps_http(other, [call("charge")], request_id="r2")
    assert keys(other) == ["r2:charge"]


async def test_each_step_and_loop_iteration_has_its_own_idempotency_key() -> None:
    http = FakeHttp()
    inner_loop = {
        "ref_id": "rows",
        "type": "loop",
        "over": "{{ [7, 8] }}",
        "steps": [call("row")],
    }
    steps = [
        call("first"),
        {
            "ref_id": "each",
            "type": "loop",
            "over": "{{ web1.items }}",
            "steps": [
                {
                    "ref_id": "check",
                    "type": "condition",
                    "if": "{{ true }}",
                    "then": [call("item"), inner_loop],
                }
            ],
        },
        call("last"),
    ]
    result = await run_steps_http(http, steps)
    assert result.outcome == "succeeded", result.body
    assert keys(http) == [
        "r1:first",
        "r1:item:0",
        "r1:row:0.0",
        "r1:row:0.1",
        "r1:item:1",
        "r1:row:1.0",
        "r1:row:1.1",
        "r1:last",
    ]


async def test_a_flow_that_sets_the_idempotency_key_keeps_its_own() -> None:
    http = FakeHttp()
    own = call("charge", headers={"idempotency-key": "order-{{ web1.items[0] }}"})
    await run_steps_http(http, [own])
    assert [headers for _, _, headers in http.calls] == [{"idempotency-key": "order-1"}]


async def test_the_http_steps_fields_share_one_render_budget() -> None:
    """Like the response's: the method, url, headers and body of a step render within
    one render budget (60 % of it each: past it together), and nothing is sent. Five of
    them (three times the budget): CPU time per operation moves with the machine's load
    between the calibration and the run, and three once came in under it."""
    templates = TemplateEngine(render_timeout_s=0.2)
    each = burning(0.12)
    step = call("many", headers={f"X-{name}": each + name for name in "ABCDE"})
    flow = Flow("f1", "w1", 1, parse_definition({"name": "t", "steps": [step]}, TEMPLATES, 300))
    http: Any = FakeHttp()
    result = await Engine(templates, None, http).run(flow, webhook_request({}, request_id="r1"))
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert re.fullmatch(
        r"step 'many' failed: steps\[0\]\.headers\.X-[B-E]: rendering the step's method, url,"
        r" headers and body took longer than 0\.2 s of CPU time in all"
        r" \(FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S\)",
        orjson.loads(result.body)["message"],
    ), result.body
    assert http.calls == []


# --- http step: Retry-After (issue 25) -------------------------------------------------


class BusyHttp(FakeHttp):
    """Answers 503 with `retry_after` (as `Retry-After`) `failures` times, then 200;
    records when each request came (monotonic)."""

    def __init__(self, retry_after: str, failures: int = 1) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.failures = failures
        self.times: list[float] = []

    async def request(
        self, method: str, url: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], bytes]:
        await super().request(method, url, **kwargs)
        self.times.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            return 503, {"retry-after": self.retry_after}, b"busy"
        return 200, {}, b"ok"


async def run_with_deadline(
    http: Any, step: dict[str, Any], timeout_s: float | None, limits: RunBounds | None = None
) -> RunResult:
    flow = Flow("f1", "w1", 1, parse_definition({"name": "t", "steps": [step]}, TEMPLATES, 300))
    state = RunState(limits or RunBounds())
    if timeout_s is not None:  # as the worker sets it
        state.deadline = time.monotonic() + timeout_s
    request = webhook_request({}, request_id="r1", flow_id="f1")
    return await Engine(TEMPLATES, limits, http).run(flow, request, state)


async def test_a_retry_waits_what_retry_after_asks_within_the_bound() -> None:
    """Retry-After: 3600 on a run without a deadline: the wait is capped at the bound
    (0.3 s here), not the policy's 0 s."""
    http = BusyHttp("3600")
    limits = RunBounds(http_retry_after_max_s=0.3)
    result = await run_with_deadline(http, call("c", retries=1), None, limits)
    assert result.outcome == "succeeded", result.body
    assert len(http.times) == 2
    assert 0.3 <= http.times[1] - http.times[0] < 3


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", ""])
async def test_a_malformed_retry_after_is_ignored(value: str) -> None:
    """The policy's delay (0 s) applies, and the deadline check is not made."""
    http = BusyHttp(value)
    result = await run_with_deadline(http, call("c", retries=1), 0.5)
    assert result.outcome == "succeeded", result.body
    assert len(http.times) == 2 and http.times[1] - http.times[0] < 0.3


async def test_a_retry_after_past_the_runs_timeout_fails_the_step_at_once() -> None:
    http = BusyHttp("30", failures=5)
    result = await run_with_deadline(http, call("c", retries=3), 5.0)
    assert (result.outcome, result.status_code) == ("failed", 500)
    assert len(http.calls) == 1
    message = orjson.loads(result.body)["message"]
    assert re.fullmatch(
        r"step 'c' failed: steps\[0\]: GET https://api\.example\.com/ answered HTTP 503 with"
        r" Retry-After of 30 s: waiting 30 s would pass the run's timeout \([45]\.\d s"
        r" left\), so it is not retried \(after attempt 1 of 4\)",
        message,
    ), message
    assert result.steps[0].error == message.removeprefix("step 'c' failed: ")


async def test_the_last_attempt_returns_its_answer_whatever_its_retry_after() -> None:
    """Out of retries, the answer is the step's output, as before: nothing to wait for."""
    http = BusyHttp("30")
    result = await run_with_deadline(http, call("c", retries=0), 5.0)
    assert result.outcome == "succeeded", result.body
    assert data(result)["status"] == 503
