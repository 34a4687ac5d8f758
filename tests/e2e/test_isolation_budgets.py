"""Budgets in CPU time, the response as one budgeted unit, Idempotency-Key (issue 20).

Workspace A (`evil`) runs heavy but in-bounds work, or a response whose templates are
each within the render budget and together past it; workspace B (`acme`) runs flows
that are within every bound alone. B's runs must all succeed (exact answers, records
`succeeded`), and no worker is killed: CPU that others take from the machine is not
charged to B, and A's response fails on its own budget instead of holding a worker past
the slice bound. The settings are small (render 0.2 s, slice 0.4 s) to keep it short.
"""

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from harness.client import Api, eventually
from harness.receiver import serving
from harness.system import System, running_system
from tests.cpu_templates import burning
from tests.e2e.test_isolation import worker_pids

pytestmark = pytest.mark.e2e

RENDER_S = 0.2
SLICE_S = 0.4
ENDPOINT_HOST = "127.0.0.2"
FINAL = frozenset({"succeeded", "failed", "timeout", "expired", "rejected"})


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S=str(RENDER_S),
        FLOWHOOKS_RUNNER_RUN_SLICE_S=str(SLICE_S),
        FLOWHOOKS_RUNNER_RUN_CPU_S="2",
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32"]',
    ) as running:
        yield running


@pytest.fixture
async def attacker(api: Api) -> Api:
    return Api(api.system, api.session, api.system.create_token("evil", "automation"))


async def new_flow(api: Api, definition: dict[str, Any]) -> tuple[str, str]:
    flow = await api.create_flow({"name": "budgets", "status": "live", **definition})

    async def known() -> bool | None:  # the debugger can list its requests
        status, _ = await api.debugger(f"/v1/flows/{flow['id']}/requests?limit=1")
        return True if status == 200 else None

    await eventually(known)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def record_of(api: Api, request_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] in FINAL else None

    return await eventually(final, timeout_s=30)


async def pool_counters(system: System, api: Api) -> dict[str, float]:
    """The runner's workers killed (by the supervisor) and lost (died on their own)."""
    async with api.session.get(f"{system.processes['runner'][0].ops_url}/metrics") as answer:
        text = await answer.text()
    wanted = ("flowhooks_runner_workers_killed_total", "flowhooks_runner_workers_lost_total")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


def envelope(data: Any) -> bytes:
    return orjson.dumps({"status": 200, "error": None, "message": "ok", "data": data})


async def send_b(api: Api, flow_id: str, token: str, n: int) -> tuple[int, bytes, str]:
    status, headers, body = await api.send(flow_id, token, json={"n": n})
    return status, body, headers["X-Request-Id"]


async def assert_all_succeeded(
    api: Api, answers: list[tuple[int, bytes, str]], expected: list[bytes]
) -> None:
    wrong = [
        (n, a[0], a[1][:300])
        for n, (a, body) in enumerate(zip(answers, expected, strict=True))
        if a[:2] != (200, body)
    ]
    assert not wrong, f"{len(wrong)} of {len(answers)} of B's answers wrong: {wrong[:5]}"
    records = await asyncio.gather(*(record_of(api, rid) for _, _, rid in answers))
    not_ok = [(r["id"], r["outcome"], r["error"]) for r in records if r["outcome"] != "succeeded"]
    assert not not_ok, not_ok
    assert [r["response"]["body"].encode() for r in records] == expected


async def test_others_cpu_load_does_not_fail_or_blame_runs_within_their_bounds(
    api: Api, attacker: Api
) -> None:
    """A keeps 6 runs computing at once (each 3 renders at half the render budget, a
    quarter of the slice bound: CPU time per operation grows on a loaded machine, and
    at 60 % one of A's renders once went past it in CI); B's runs, each one render at
    40 % of the render budget, all succeed though the machine is far busier than its 2
    cores. (Measured in wall time, 12 of 12 of these B runs failed on the render
    budget.)"""
    heavy = {
        "ref_id": "heavy",
        "type": "loop",
        "over": "{{ range(3) | list }}",
        "steps": [{"ref_id": "burn", "type": "template", "template": burning(0.5 * RENDER_S, "a")}],
    }
    a_id, a_token = await new_flow(
        attacker, {"webhook": {"ref_id": "web1", "timeout_s": 60}, "steps": [heavy]}
    )
    b_step = {
        "ref_id": "work",
        "type": "template",
        "template": burning(0.4 * RENDER_S, "b{{ web1.n }}"),
    }
    b_id, b_token = await new_flow(
        api, {"webhook": {"ref_id": "web1", "timeout_s": 60}, "steps": [b_step]}
    )
    counters = await pool_counters(api.system, api)
    a_done: list[int] = []
    stop = asyncio.Event()

    async def a_lane() -> None:
        while not stop.is_set():
            status, _, _ = await attacker.send(a_id, a_token, json={})
            a_done.append(status)

    lanes = [asyncio.create_task(a_lane()) for _ in range(6)]
    try:
        await asyncio.sleep(0.5)  # A's runs get under way on their workers
        started = time.monotonic()
        answers = []
        for n in range(6):  # two at a time, all while A computes
            answers += await asyncio.gather(
                *(send_b(api, b_id, b_token, 2 * n + i) for i in (0, 1))
            )
        b_seconds = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*lanes)
    await assert_all_succeeded(api, answers, [envelope({"value": f"b{n}"}) for n in range(12)])
    assert await pool_counters(api.system, api) == counters  # no worker killed or lost
    assert set(a_done) == {200}, a_done
    print(f"B: 12 runs in {b_seconds:.1f} s beside {len(a_done)} of A's")


async def test_a_response_past_its_one_render_budget_fails_without_a_kill(
    api: Api, attacker: Api
) -> None:
    """A's response: a body and four header templates, each 60 % of the render budget:
    one slice of them all would be past the slice bound (and get its worker killed);
    rendered as one budgeted unit with pauses, the run fails on the budget. B's runs
    meanwhile succeed."""
    each = burning(0.6 * RENDER_S)
    response = {
        "body": each + "done",
        "headers": {f"X-{name}": each + name for name in "ABCD"},
    }
    a_id, a_token = await new_flow(
        attacker, {"webhook": {"ref_id": "web1", "response": response}, "steps": []}
    )
    b_step = {"ref_id": "double", "type": "template", "template": "{{ web1.n * 2 }}"}
    b_id, b_token = await new_flow(api, {"steps": [b_step]})
    counters = await pool_counters(api.system, api)
    pids = worker_pids(api.system)

    async def b_runs() -> list[tuple[int, bytes, str]]:
        return [await send_b(api, b_id, b_token, n) for n in range(10)]

    a_answers, b_answers = await asyncio.gather(
        asyncio.gather(*(attacker.send(a_id, a_token, json={}) for _ in range(3))), b_runs()
    )
    bound = (
        "rendering the response's body and headers took longer than 0.2 s of CPU time in all"
        " (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S)"
    )
    for status, headers, body in a_answers:
        answer = orjson.loads(body)
        assert (status, answer["status"], answer["error"], answer["data"]) == (
            500,
            500,
            "flow_error",
            None,
        ), answer
        assert answer["message"].startswith("the webhook response failed: webhook.response.")
        assert answer["message"].endswith(bound), answer["message"]
        record = await record_of(attacker, headers["X-Request-Id"])
        assert (record["outcome"], record["error"]) == ("failed", answer["message"])
    await assert_all_succeeded(api, b_answers, [envelope({"value": 2 * n}) for n in range(10)])
    assert await pool_counters(api.system, api) == counters  # no worker killed or lost
    assert pids <= worker_pids(api.system)


@pytest.fixture
async def flaky_endpoint() -> AsyncIterator[tuple[str, dict[str, list[str | None]]]]:
    """Answers 503 to the first two attempts at each path, then 200; records the
    Idempotency-Key of every attempt by path."""
    keys: dict[str, list[str | None]] = defaultdict(list)

    async def flaky(request: web.Request) -> web.Response:
        seen = keys[request.path]
        seen.append(request.headers.get("Idempotency-Key"))
        return web.json_response({"attempt": len(seen)}, status=503 if len(seen) <= 2 else 200)

    app = web.Application()
    app.router.add_post("/{name}/{request_id}", flaky)
    async with serving(app, ENDPOINT_HOST) as base:
        yield base, keys


async def test_http_step_retries_carry_one_idempotency_key(
    api: Api, flaky_endpoint: tuple[str, dict[str, list[str | None]]]
) -> None:
    base, keys = flaky_endpoint
    charge = {
        "ref_id": "charge",
        "type": "http",
        "method": "POST",
        "url": base + "/charge/{{ request.id }}",
        "retries": 2,
        "retry_backoff_s": 0.05,
    }
    each = {
        "ref_id": "lines",
        "type": "loop",
        "over": "{{ [0, 1] }}",
        "steps": [
            {**charge, "ref_id": "line", "url": base + "/line{{ loop.item }}/{{ request.id }}"}
        ],
    }
    flow_id, token = await new_flow(api, {"steps": [charge, each]})
    status, headers, body = await api.send(flow_id, token, json={})
    request_id = headers["X-Request-Id"]
    assert status == 200, body
    assert orjson.loads(body)["data"]["value"][1]["status"] == 200
    assert {path: attempts for path, attempts in keys.items()} == {
        f"/charge/{request_id}": [f"{request_id}:charge"] * 3,
        f"/line0/{request_id}": [f"{request_id}:line:0"] * 3,
        f"/line1/{request_id}": [f"{request_id}:line:1"] * 3,
    }
