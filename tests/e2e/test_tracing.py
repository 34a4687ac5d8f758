"""OpenTelemetry traces (contract: "Tracing"), against the real services exporting to an
OTLP/HTTP receiver (harness/otlp.py): one trace per webhook whose spans cover the
ingress, the runner, the worker's steps, the outgoing `http` step and the debugger's
write, each the child of the hop before; the sender's `traceparent` is honoured and
reaches the step's endpoint; the record carries the trace id."""

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from harness.receiver import serving
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

ENDPOINT_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def system(receiver: OtlpReceiver) -> Iterator[System]:
    with running_system(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base,
        # Spans go out every 50 ms instead of every 5 s: the test waits less.
        OTEL_BSP_SCHEDULE_DELAY="50",
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32"]',
    ) as running:
        yield running


@pytest.fixture
async def endpoint() -> AsyncIterator[list[dict[str, str]]]:
    """What an `http` step calls: the headers of every call."""
    calls: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/work", handle)
    async with serving(app, ENDPOINT_HOST) as base:
        calls.append({"base": base})
        yield calls


async def flow_calling(api: Api, url: str, *, is_async: bool) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "traced",
            "status": "live",
            "webhook": {"ref_id": "web1", "async": is_async},
            "steps": [
                {"ref_id": "work", "type": "http", "url": url},
                {"ref_id": "done", "type": "template", "template": "{{ work.status }}"},
            ],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [span for span in spans if span.service == service and span.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


Check = Callable[[list[ReceivedSpan]], dict[str, ReceivedSpan]]


async def whole_trace(
    receiver: OtlpReceiver, trace_id: str, check: Check
) -> tuple[list[ReceivedSpan], dict[str, ReceivedSpan]]:
    """The trace once `check` passes on it: each process exports on its own, in
    batches (the worker's last steps may come after the debugger's write)."""

    async def complete() -> tuple[list[ReceivedSpan], dict[str, ReceivedSpan]] | None:
        spans = receiver.trace(trace_id)
        try:
            return spans, check(spans)
        except (AssertionError, KeyError):
            return None

    return await eventually(complete, timeout_s=15)


def replay_path(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    replay = one(spans, "flowhooks-debugger", "replay")
    runner = one(spans, "flowhooks-runner", "process flowhooks.runner.sync-runs")
    assert runner.parent_span_id == replay.span_id
    one(spans, "flowhooks-runner", "work")
    assert any(span.name == "store debugger.requests" for span in spans)
    return {"replay": replay}


def assert_path(spans: list[ReceivedSpan], queue: str) -> dict[str, ReceivedSpan]:
    """ingress -> runner -> worker run -> step -> its request; runner -> debugger."""
    ingress = one(spans, "flowhooks-ingress", "POST /v1/flow-webhook/{flow_id}")
    runner = one(spans, "flowhooks-runner", f"process {queue}")
    run = one(spans, "flowhooks-runner", "flowhooks.run")
    step = one(spans, "flowhooks-runner", "work")
    client = one(spans, "flowhooks-runner", "GET")
    after = one(spans, "flowhooks-runner", "done")
    stored = [
        span
        for span in spans
        if span.name == "store debugger.requests"
        and span.attributes.get("flowhooks.outcome") == "succeeded"
    ]
    assert len(stored) == 1
    assert ingress.kind == "server"
    assert ingress.attributes["http.response.status_code"] == 200
    assert ingress.attributes["http.request.method"] == "POST"
    assert runner.kind == "consumer" and runner.parent_span_id == ingress.span_id
    assert runner.attributes["messaging.system"] == "rabbitmq"
    assert run.parent_span_id == runner.span_id
    assert step.parent_span_id == run.span_id and after.parent_span_id == run.span_id
    assert step.attributes["flowhooks.step.type"] == "http"
    assert after.attributes["flowhooks.step.type"] == "template"
    assert client.kind == "client" and client.parent_span_id == step.span_id
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == ENDPOINT_HOST
    assert stored[0].service == "flowhooks-debugger"
    assert stored[0].parent_span_id == runner.span_id
    # Never a body, a header or a query on any span.
    for span in spans:
        for name in span.attributes:
            assert not name.startswith(("http.request.header", "http.response.header"))
            assert "body" not in name and "query" not in name
    return {"ingress": ingress, "runner": runner, "client": client}


async def test_sync_webhook_continues_the_senders_trace(
    api: Api, receiver: OtlpReceiver, endpoint: list[dict[str, str]]
) -> None:
    base = endpoint.pop()["base"]
    flow_id, token = await flow_calling(api, f"{base}/work", is_async=False)
    trace_id, sender_span = secrets.token_hex(16), secrets.token_hex(8)

    status, headers, _ = await api.send(
        flow_id,
        token,
        json={"n": 1},
        headers={"traceparent": f"00-{trace_id}-{sender_span}-01", "tracestate": "vendor=x"},
    )
    assert status == 200

    def sync_path(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
        path = assert_path(spans, "flowhooks.runner.sync-runs")
        # The flow's first webhook asks auth (an RPC: its context in the message's headers).
        asked = one(spans, "flowhooks-ingress", "auth.authorize_webhook")
        assert asked.kind == "client" and asked.parent_span_id == path["ingress"].span_id
        served = one(spans, "flowhooks-auth", "auth.authorize_webhook")
        assert served.kind == "server" and served.parent_span_id == asked.span_id
        return path

    _, path = await whole_trace(receiver, trace_id, sync_path)
    assert path["ingress"].parent_span_id == sender_span
    # The sender's trace reached the step's endpoint, as the client span's child.
    assert endpoint[0]["traceparent"] == f"00-{trace_id}-{path['client'].span_id}-01"
    assert endpoint[0]["tracestate"] == "vendor=x"
    code, record = await api.debugger(f"/v1/requests/{headers['X-Request-Id']}")
    assert code == 200
    assert record["trace_id"] == trace_id
    assert "trace_parent" not in record

    # A replay is a trace of its own, linked to the original's.
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/requests/{headers['X-Request-Id']}/replay",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        replayed = await answer.json()
        assert answer.status == 200, replayed

    async def replay_stored() -> dict[str, Any] | None:
        code, stored = await api.debugger(f"/v1/requests/{replayed['request_id']}")
        return stored if code == 200 and stored["outcome"] == "succeeded" else None

    replay_trace = (await eventually(replay_stored))["trace_id"]
    assert replay_trace not in (None, trace_id)
    _, replay_path_spans = await whole_trace(receiver, replay_trace, replay_path)
    assert replay_path_spans["replay"].parent_span_id == ""
    assert replay_path_spans["replay"].links == [(trace_id, path["runner"].span_id)]


async def test_async_webhook_starts_a_trace(
    api: Api, receiver: OtlpReceiver, endpoint: list[dict[str, str]]
) -> None:
    base = endpoint.pop()["base"]
    flow_id, token = await flow_calling(api, f"{base}/work", is_async=True)

    status, headers, _ = await api.send(flow_id, token, json={"n": 2})
    assert status == 200
    request_id = headers["X-Request-Id"]

    async def finished() -> dict[str, Any] | None:
        code, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if code == 200 and record["outcome"] == "succeeded" else None

    record = await eventually(finished, timeout_s=15)
    trace_id = record["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32
    _, path = await whole_trace(
        receiver, trace_id, lambda found: assert_path(found, "flowhooks.runner.async-runs")
    )
    assert path["ingress"].parent_span_id == ""  # no traceparent: the trace starts here
    assert endpoint[0]["traceparent"].split("-")[1] == trace_id
