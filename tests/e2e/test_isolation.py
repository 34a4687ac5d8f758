"""Isolation (contract, section "Isolation"; issue 9): whatever one workspace's flow or
body does, the cost falls on that request alone.

Each test is one row of the issue's table (or one of its "also" items). An attacker
workspace (`evil`) does the hostile thing while a victim workspace (`acme`) sends sync
and async webhooks at the same time. Every test asserts that:
- every victim webhook got exactly its answer (status and body), each within
  `VICTIM_BOUND_S`, and is recorded by the debugger exactly once, `succeeded`, with the
  same response;
- the attacker's request got its envelope (`flow_error` 500 or `bad_request` 400, never
  `internal_error`) and a `failed` or `rejected` record whose reason names the bound;
- an async attacker run that fails because of what its flow does ran once (its `http`
  side effect reached the endpoint once) and is not dead-lettered.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

T = TypeVar("T")

# The issue's bound on any victim's answer.
VICTIM_BOUND_S = 2.0
# The test's own HTTP endpoints (targets of `http` steps): two hosts, both allowed.
ENDPOINT_HOST = "127.0.0.2"
OTHER_HOST = "127.0.0.3"
WORKERS = 2
RUN_CPU_S = 2
FINAL = frozenset({"succeeded", "failed", "timeout", "expired", "rejected"})
ENVELOPE_KEYS = {"status", "error", "message", "data"}


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32", "{OTHER_HOST}/32"]',
        # Two workers whatever the machine, so that one killed worker leaves another.
        FLOWHOOKS_RUNNER_WORKERS=str(WORKERS),
        # A run's CPU budget of 2 s, not 5: the attacks past it burn 2 s of the two
        # cores each rather than 5 (no run here needs more within its bounds).
        FLOWHOOKS_RUNNER_RUN_CPU_S=str(RUN_CPU_S),
    ) as running:
        yield running


@pytest.fixture
async def attacker(api: Api) -> Api:
    """Another workspace, sharing the platform (and the HTTP session) with `api`."""
    return Api(api.system, api.session, api.system.create_token("evil", "automation"))


# --- the test's HTTP endpoints -------------------------------------------------------


@dataclass
class Endpoint:
    base: str  # on ENDPOINT_HOST
    other: str  # the same app on OTHER_HOST
    effects: Counter[str] = field(default_factory=Counter)
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    def side_effect_step(self) -> dict[str, Any]:
        """An `http` step whose calls the endpoint counts per request id."""
        return {
            "ref_id": "effect",
            "type": "http",
            "method": "POST",
            "url": self.base + "/effect/{{ request.id }}",
            "retries": 0,
        }


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint("", "")

    async def effect(request: web.Request) -> web.Response:
        state.effects[request.match_info["request_id"]] += 1
        return web.json_response({"ok": True}, status=201)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "2.5")))
        return web.json_response({"slow": True})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def headers(request: web.Request) -> web.Response:
        state.seen_headers.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/effect/{request_id}", effect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/headers", headers)
    # A handler still in flight at the end (a /slow call a step stopped waiting for) is
    # cancelled rather than waited for: nothing is checked after the test. (Not 0, which
    # aiohttp takes for no bound at all.)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    bases = []
    for host in (ENDPOINT_HOST, OTHER_HOST):
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        bases.append(f"http://{host}:{port}")
    state.base, state.other = bases
    yield state
    await runner.cleanup()


# --- the victim ----------------------------------------------------------------------


@dataclass
class Victim:
    api: Api
    sync_id: str
    sync_token: str
    async_id: str
    async_token: str


@dataclass
class Call:
    mode: str
    n: int
    request_id: str
    status: int
    body: bytes
    seconds: float


def sync_body(n: int) -> bytes:
    return orjson.dumps({"status": 200, "error": None, "message": "ok", "data": {"value": 2 * n}})


def async_run_body(n: int) -> bytes:
    return orjson.dumps({"status": 200, "error": None, "message": "ok", "data": {"value": 3 * n}})


def scheduled_body(request_id: str) -> bytes:
    return orjson.dumps(
        {"status": 200, "error": None, "message": "scheduled", "data": {"request_id": request_id}}
    )


async def known_to_debugger(api: Api, flow_id: str) -> None:
    async def known() -> bool | None:
        status, _ = await api.debugger(f"/v1/flows/{flow_id}/requests?limit=1")
        return True if status == 200 else None

    await eventually(known)


async def new_flow(api: Api, definition: dict[str, Any]) -> tuple[str, str]:
    flow = await api.create_flow({"name": "isolation", "status": "live", **definition})
    await known_to_debugger(api, flow["id"])
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def make_victim(api: Api) -> Victim:
    sync_id, sync_token = await new_flow(
        api, {"steps": [{"ref_id": "double", "type": "template", "template": "{{ web1.n * 2 }}"}]}
    )
    async_id, async_token = await new_flow(
        api,
        {
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [{"ref_id": "triple", "type": "template", "template": "{{ web1.n * 3 }}"}],
        },
    )
    return Victim(api, sync_id, sync_token, async_id, async_token)


async def under_attack(
    victim: Victim,
    attack: Awaitable[T],
    *,
    at_least: int = 30,
    at_most: int = 100,
    lanes: int = 2,
    pace_s: float = 0.02,
    **send: Any,
) -> tuple[T, list[Call]]:
    """The victim's sync and async webhooks (`lanes` senders each), from before the
    attack starts until it is over (at least `at_least`, at most `at_most` of each); the
    attack's result and every victim call."""
    calls: list[Call] = []
    issued = {"sync": 0, "async": 0}
    warmed = asyncio.Event()
    attack_task: asyncio.Task[T] | None = None

    def attack_over() -> bool:
        return attack_task is not None and attack_task.done()

    async def lane(mode: str) -> None:
        flow_id = victim.sync_id if mode == "sync" else victim.async_id
        token = victim.sync_token if mode == "sync" else victim.async_token
        while issued[mode] < at_most and (issued[mode] < at_least or not attack_over()):
            n = issued[mode]
            issued[mode] += 1
            started = time.monotonic()
            status, headers, body = await victim.api.send(flow_id, token, json={"n": n}, **send)
            seconds = time.monotonic() - started
            calls.append(Call(mode, n, headers["X-Request-Id"], status, body, seconds))
            if len(calls) >= 4:
                warmed.set()
            await asyncio.sleep(pace_s)  # pacing, so that the victims span the attack

    senders = [asyncio.create_task(lane(mode)) for mode in ("sync", "async") for _ in range(lanes)]
    try:
        await asyncio.wait_for(warmed.wait(), 30)
        attack_task = asyncio.ensure_future(attack)
        await asyncio.gather(*senders)
        return await attack_task, calls
    finally:
        for task in senders:
            task.cancel()
        if attack_task is not None and not attack_task.done():
            attack_task.cancel()


async def listed(api: Api, flow_id: str) -> list[dict[str, Any]]:
    """Every request of the flow the debugger lists, through all pages."""
    items: list[dict[str, Any]] = []
    query = "limit=500"
    while True:
        status, page = await api.debugger(f"/v1/flows/{flow_id}/requests?{query}")
        assert status == 200, page
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        query = f"limit=500&cursor={page['next_cursor']}"


async def record_of(api: Api, request_id: str) -> dict[str, Any]:
    """The request's record once it has its final outcome."""

    async def final() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 and record["outcome"] in FINAL else None

    return await eventually(final, timeout_s=30)


async def assert_victims_unharmed(victim: Victim, calls: list[Call]) -> None:
    """Every victim call answered exactly right within the bound, and recorded exactly
    once, `succeeded`, with the same response."""
    assert calls, "no victim webhook was sent"
    wrong = [
        (c.mode, c.n, c.status, c.body[:300])
        for c in calls
        if (c.status, c.body)
        != (200, sync_body(c.n) if c.mode == "sync" else scheduled_body(c.request_id))
    ]
    assert not wrong, f"{len(wrong)} of {len(calls)} victim answers wrong: {wrong[:5]}"
    slow = sorted((round(c.seconds, 3), c.mode, c.n) for c in calls if c.seconds > VICTIM_BOUND_S)
    assert not slow, f"{len(slow)} victim answers slower than {VICTIM_BOUND_S} s: {slow[-5:]}"

    for mode, flow_id in (("sync", victim.sync_id), ("async", victim.async_id)):
        sent = [c for c in calls if c.mode == mode]
        expected = {c.request_id for c in sent}

        async def all_final(flow_id: str = flow_id, expected: set[str] = expected) -> Any:
            items = await listed(victim.api, flow_id)
            done = {i["id"] for i in items if i["outcome"] in FINAL}
            return items if expected <= done else None

        items = await eventually(all_final, timeout_s=30)
        ids = [i["id"] for i in items]
        assert sorted(ids) == sorted(expected), f"{mode}: recorded {len(ids)}, sent {len(sent)}"
        not_ok = [(i["id"], i["outcome"], i["status_code"]) for i in items]
        not_ok = [row for row in not_ok if row[1:] != ("succeeded", 200)]
        assert not not_ok, f"{mode}: {len(not_ok)} victim records not succeeded: {not_ok[:5]}"

    async def check(call: Call) -> None:
        record = await record_of(victim.api, call.request_id)
        body = sync_body(call.n) if call.mode == "sync" else async_run_body(call.n)
        assert (record["outcome"], record["error"], record["mode"]) == (
            "succeeded",
            None,
            call.mode,
        ), record
        assert record["response"]["body"].encode() == body, record["response"]

    await asyncio.gather(*(check(c) for c in calls))


async def assert_runner_serves(api: Api, replaced: set[int] | None = None) -> None:
    """The runner has its workers again (at least the ones it starts with, spares
    beside them; a new one in place of at least one of `replaced`, if given) and a fresh
    victim is served as before."""

    async def full_pool() -> bool | None:
        now = worker_pids(api.system)
        renewed = replaced is None or bool(replaced - now)
        return True if len(now) >= WORKERS and renewed else None

    await eventually(full_pool, timeout_s=30)
    fresh = await make_victim(api)
    _, after = await under_attack(fresh, asyncio.sleep(0), at_least=10, at_most=10)
    await assert_victims_unharmed(fresh, after)


# --- the attacker ----------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes
    request_id: str

    @property
    def envelope(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


async def hit(api: Api, flow_id: str, token: str, **send: Any) -> Answer:
    status, headers, body = await api.send(flow_id, token, **send)
    return Answer(status, body, headers["X-Request-Id"])


def assert_envelope(answer: Answer, status: int, kind: str, *fragments: str) -> None:
    """The contract's envelope, `status` and `kind`, a message containing every fragment
    (never `internal_error`)."""
    envelope = answer.envelope
    assert set(envelope) == ENVELOPE_KEYS, envelope
    assert (answer.status, envelope["status"], envelope["error"]) == (status, status, kind), (
        envelope
    )
    for fragment in fragments:
        assert fragment in envelope["message"], (fragment, envelope["message"])


def assert_scheduled(answer: Answer) -> None:
    """An async webhook's answer: accepted, with its request id."""
    assert (answer.status, answer.body) == (200, scheduled_body(answer.request_id))


async def assert_recorded(
    api: Api, request_id: str, outcome: str, status: int | None, *fragments: str
) -> dict[str, Any]:
    """The request's record: `outcome`, the response status, and an error (the reason)
    that contains every fragment and is not a dead letter."""
    record = await record_of(api, request_id)
    assert record["outcome"] == outcome, (record["outcome"], record["error"])
    assert record["response"]["status_code"] == status, record["response"]
    assert record["error"], record
    for fragment in fragments:
        assert fragment in record["error"], (fragment, record["error"])
    assert "dead-lettered" not in record["error"], record["error"]
    return record


def one_of(*names: str) -> str:
    """For messages that may name either of two bounds: the one the text contains."""
    return "|".join(names)


def assert_names_one(text: str, names: str) -> None:
    assert any(name in text for name in names.split("|")), (names, text)


async def async_attacker_flow(
    attacker: Api, endpoint: Endpoint, steps: list[dict[str, Any]], **webhook: Any
) -> tuple[str, str]:
    """An async flow whose first step is a counted side effect."""
    return await new_flow(
        attacker,
        {
            "webhook": {"ref_id": "web1", "async": True, **webhook},
            "steps": [endpoint.side_effect_step(), *steps],
        },
    )


async def assert_ran_once(endpoint: Endpoint, request_ids: list[str]) -> None:
    assert {rid: endpoint.effects[rid] for rid in request_ids} == dict.fromkeys(request_ids, 1)


def worker_pids(system: System) -> set[int]:
    """The runner's child processes (its workers)."""
    runner_pid = system.processes["runner"][0].process.pid
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == runner_pid and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


async def health_while(api: Api, task: "asyncio.Task[Any]") -> list[float]:
    """How long each of the runner's `/healthz` took, asked again and again until `task`
    is done."""
    seconds = []
    while not task.done():
        started = time.monotonic()
        async with api.session.get(
            f"{api.system.url('runner')}/healthz", timeout=aiohttp.ClientTimeout(total=30)
        ) as answer:
            assert answer.status == 200
        seconds.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    await task
    return seconds


# --- row 1: a lone surrogate in a response body, under load ---------------------------


async def test_unencodable_response_fails_alone_under_load(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    surrogate = {"ref_id": "web1", "response": {"status_code": 200, "body": "{{ '\\ud800' }}"}}
    sync_id, sync_token = await new_flow(attacker, {"webhook": surrogate, "steps": []})
    async_id, async_token = await async_attacker_flow(
        attacker, endpoint, [], response=surrogate["response"]
    )

    async def attack() -> tuple[list[Answer], list[Answer]]:
        # Many at once, so that they share run.finished batches with the victim's runs.
        sync = [hit(attacker, sync_id, sync_token, json={"i": i}) for i in range(40)]
        asynchronous = [hit(attacker, async_id, async_token, json={"i": i}) for i in range(20)]
        answers = await asyncio.gather(*sync, *asynchronous)
        return answers[:40], answers[40:]

    (sync_answers, async_answers), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer in sync_answers:
        assert_envelope(answer, 500, "flow_error", "the body is not valid text")
    for answer in async_answers:
        assert_scheduled(answer)
    await asyncio.gather(
        *(
            assert_recorded(attacker, a.request_id, "failed", 500, "the body is not valid text")
            for a in sync_answers + async_answers
        )
    )
    # Failed because of what the flow does: not run again.
    await assert_ran_once(endpoint, [a.request_id for a in async_answers])


# --- row 2: a huge trace (the debugger poisoned) ---------------------------------------


async def test_huge_trace_is_bounded_and_the_debugger_keeps_recording(
    api: Api, attacker: Api
) -> None:
    victim = await make_victim(api)
    issue_steps = [
        {
            "ref_id": f"big{i}",
            "type": "template",
            "template": "{{ [0]*999999 + [0]*999999 + [0]*999999 }}",
        }
        for i in range(6)
    ]
    issue_id, issue_token = await new_flow(attacker, {"steps": issue_steps})
    # Six values each just under the value bound: a trace of 5.4 MB from a run that
    # succeeds.
    fitting_steps = [
        {"ref_id": f"fit{i}", "type": "template", "template": f"{{{{ [{i}]*450000 }}}}"}
        for i in range(6)
    ]
    fit_id, fit_token = await new_flow(
        attacker,
        {
            "webhook": {"ref_id": "web1", "response": {"status_code": 200, "body": "done"}},
            "steps": fitting_steps,
        },
    )

    async def attack() -> tuple[list[Answer], list[Answer]]:
        issue = [hit(attacker, issue_id, issue_token, json={}) for _ in range(2)]
        fitting = [hit(attacker, fit_id, fit_token, json={}) for _ in range(3)]
        answers = await asyncio.gather(*issue, *fitting)
        return answers[:2], answers[2:]

    (issue_answers, fit_answers), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer in fit_answers:
        assert (answer.status, answer.body) == (200, b"done")
        record = await record_of(attacker, answer.request_id)
        assert (record["outcome"], record["error"]) == ("succeeded", None)
        assert [step["ref_id"] for step in record["steps"]] == [f"fit{i}" for i in range(6)]
        for step in record["steps"]:
            # Kept as a marker with the original size, by the runner or the debugger.
            assert step["output"]["truncated"] is True, str(step)[:300]
            assert step["output"]["size"] > 900_000, str(step)[:300]

    # The debugger still records everyone, afterwards too.
    fresh = await make_victim(api)
    _, more = await under_attack(fresh, asyncio.sleep(0), at_least=5, at_most=5)
    await assert_victims_unharmed(fresh, more)

    # The issue's own flow: each step's value is past a bound; the step fails, naming it.
    bounds = one_of("FLOWHOOKS_RUNNER_MAX_OUTPUT_CHARS", "FLOWHOOKS_RUNNER_MAX_VALUE_BYTES")
    for answer in issue_answers:
        assert_envelope(answer, 500, "flow_error", "step 'big0' failed")
        assert_names_one(answer.envelope["message"], bounds)
        record = await assert_recorded(attacker, answer.request_id, "failed", 500)
        assert_names_one(record["error"], bounds)


# --- row 3, and "a worker killed by the CPU budget": one uninterruptible operation -----


async def test_uninterruptible_operation_kills_only_its_worker(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    bomb = {"ref_id": "bomb", "type": "template", "template": "{{ ((10**5500)**9999) > 1 }}"}
    sync_id, sync_token = await new_flow(attacker, {"steps": [bomb]})
    async_id, async_token = await async_attacker_flow(attacker, endpoint, [bomb])
    before = worker_pids(api.system)
    assert len(before) >= WORKERS

    async def attack() -> tuple[Answer, Answer, list[float]]:
        # One at a time: each kills one worker, the other one keeps serving.
        sync_task = asyncio.create_task(hit(attacker, sync_id, sync_token, json={}))
        seconds = await health_while(api, sync_task)
        asynchronous = await hit(attacker, async_id, async_token, json={})
        recorded = asyncio.create_task(record_of(attacker, asynchronous.request_id))
        seconds += await health_while(api, recorded)
        return await sync_task, asynchronous, seconds

    (sync, asynchronous, health_seconds), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    assert max(health_seconds) < VICTIM_BOUND_S, health_seconds
    fragments = ("without a pause", "FLOWHOOKS_RUNNER_RUN_SLICE_S")
    assert_envelope(sync, 500, "flow_error", *fragments)
    await assert_recorded(attacker, sync.request_id, "failed", 500, *fragments)
    assert_scheduled(asynchronous)
    await assert_recorded(attacker, asynchronous.request_id, "failed", 500, *fragments)
    await assert_ran_once(endpoint, [asynchronous.request_id])

    # The killed workers were replaced; the runner keeps serving.
    await assert_runner_serves(api, replaced=before)


# --- the render's time budget and the run's CPU budget --------------------------------


async def test_slow_render_and_long_run_are_stopped_by_their_budgets(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    # One render that never ends (10^10 iterations), interruptible.
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    render_id, render_token = await new_flow(
        attacker, {"steps": [{"ref_id": "spin", "type": "template", "template": endless}]}
    )
    # Renders of a few ms each (250,000 iterations), 2,000 of them: each far within the
    # render budget and the slice bound, together past the run's CPU budget (RUN_CPU_S).
    chunk = "{% for i in range(1000) %}{% for j in range(250) %}{% endfor %}{% endfor %}x"
    long_run = {
        "ref_id": "chunks",
        "type": "loop",
        "over": "{{ range(2000) | list }}",
        "steps": [{"ref_id": "chunk", "type": "template", "template": chunk}],
    }
    cpu_id, cpu_token = await new_flow(attacker, {"steps": [long_run]})
    async_id, async_token = await async_attacker_flow(attacker, endpoint, [long_run])

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                hit(attacker, render_id, render_token, json={}),
                hit(attacker, cpu_id, cpu_token, json={}),
                hit(attacker, async_id, async_token, json={}),
            )
        )

    (render, cpu, asynchronous), calls = await under_attack(victim, attack(), at_most=150)
    await assert_victims_unharmed(victim, calls)
    cpu_budget = "FLOWHOOKS_RUNNER_RUN_CPU_S"
    assert_envelope(cpu, 500, "flow_error", cpu_budget)
    await assert_recorded(attacker, cpu.request_id, "failed", 500, cpu_budget)
    assert_scheduled(asynchronous)
    await assert_recorded(attacker, asynchronous.request_id, "failed", 500, cpu_budget)
    await assert_ran_once(endpoint, [asynchronous.request_id])
    # The contract: past a bound, the message names it (the setting).
    budget = ("rendering took longer than", "FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S")
    assert_envelope(render, 500, "flow_error", "step 'spin' failed", *budget)
    await assert_recorded(attacker, render.request_id, "failed", 500, *budget)


# Few large allocations, no bounded operator among them: 1 MB, times 8 three times,
# 512 MB: the allocation fails at once (MemoryError inside the worker).
FEW_LARGE = (
    "{% set a = 'a' * 999999 %}{% set b = a ~ a ~ a ~ a ~ a ~ a ~ a ~ a %}"
    "{% set c = b ~ b ~ b ~ b ~ b ~ b ~ b ~ b %}{% set d = c ~ c ~ c ~ c ~ c ~ c ~ c ~ c %}"
    "{{ d | length }}"
)
# Many small ones (the issue's): 100,000 strings of 10 kB. Whether the memory bound or
# the render's time budget stops it first depends on the machine's speed and load.
MANY_SMALL = "{{ range(100000) | map('center', 9999) | list | length }}"
MEMORY_BOUND = ("memory bound", "FLOWHOOKS_RUNNER_WORKER_MEMORY_MB")


async def test_memory_bound_fails_the_run_and_the_runner_keeps_serving(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    few_id, few_token = await new_flow(
        attacker, {"steps": [{"ref_id": "hog", "type": "template", "template": FEW_LARGE}]}
    )
    many_id, many_token = await new_flow(
        attacker, {"steps": [{"ref_id": "hog", "type": "template", "template": MANY_SMALL}]}
    )
    async_id, async_token = await async_attacker_flow(
        attacker, endpoint, [{"ref_id": "hog", "type": "template", "template": FEW_LARGE}]
    )

    async def attack() -> tuple[Answer, Answer, Answer]:
        # One at a time: each may take its worker's memory.
        few = await hit(attacker, few_id, few_token, json={})
        many = await hit(attacker, many_id, many_token, json={})
        asynchronous = await hit(attacker, async_id, async_token, json={})
        await record_of(attacker, asynchronous.request_id)
        return few, many, asynchronous

    (few, many, asynchronous), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    assert_envelope(few, 500, "flow_error", *MEMORY_BOUND)
    await assert_recorded(attacker, few.request_id, "failed", 500, *MEMORY_BOUND)
    assert_scheduled(asynchronous)
    await assert_recorded(attacker, asynchronous.request_id, "failed", 500, *MEMORY_BOUND)
    await assert_ran_once(endpoint, [asynchronous.request_id])
    assert_envelope(many, 500, "flow_error", "step 'hog' failed")
    stopped_by = one_of("FLOWHOOKS_RUNNER_WORKER_MEMORY_MB", "rendering took longer than")
    assert_names_one(many.envelope["message"], stopped_by)
    record = await assert_recorded(attacker, many.request_id, "failed", 500)
    assert_names_one(record["error"], stopped_by)

    await assert_runner_serves(api)


# --- row 4: nested loops -----------------------------------------------------------------


async def test_nested_loops_stop_at_the_run_iteration_bound(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    nested = {
        "ref_id": "outer",
        "type": "loop",
        "over": "{{ range(10000) | list }}",
        "steps": [
            {
                "ref_id": "inner",
                "type": "loop",
                "over": "{{ range(30) | list }}",
                "steps": [{"ref_id": "work", "type": "template", "template": "{{ loop.index }}"}],
            }
        ],
    }
    sync_id, sync_token = await new_flow(attacker, {"steps": [nested]})
    async_id, async_token = await async_attacker_flow(attacker, endpoint, [nested])

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(hit(attacker, sync_id, sync_token, json={}) for _ in range(3)),
                hit(attacker, async_id, async_token, json={}),
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    bound = "FLOWHOOKS_RUNNER_MAX_LOOP_ITERATIONS"
    for answer in answers[:3]:
        assert_envelope(answer, 500, "flow_error", bound)
        await assert_recorded(attacker, answer.request_id, "failed", 500, bound)
    asynchronous = answers[3]
    assert_scheduled(asynchronous)
    await assert_recorded(attacker, asynchronous.request_id, "failed", 500, bound)
    await assert_ran_once(endpoint, [asynchronous.request_id])


# --- row 5: big values -------------------------------------------------------------------

BIG_VALUES = [
    "{{ 'a'.ljust(70000000) }}",
    "{{ '{:>{w}}'.format('a', w=70000000) }}",
    "{{ 'a'.zfill(70000000) }}",
    "{{ ','.join(['abcdefghij'] * 900000) }}",
    "{{ 'a' * 999999 }}{{ 'b' * 999999 }}",
    "{{ [[0] * 999999, [0] * 999999] }}",
]


async def test_big_values_fail_their_own_run(api: Api, attacker: Api, endpoint: Endpoint) -> None:
    victim = await make_victim(api)
    value_bounds = one_of("FLOWHOOKS_RUNNER_MAX_OUTPUT_CHARS", "FLOWHOOKS_RUNNER_MAX_VALUE_BYTES")
    # (flow definition, answer status, bound named)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"steps": [{"ref_id": "big", "type": "template", "template": t}]}, value_bounds)
        for t in BIG_VALUES
    ]
    cases += [
        # A single expression as the response body.
        (
            {
                "webhook": {
                    "ref_id": "web1",
                    "response": {"status_code": 200, "body": "{{ 'a'.ljust(70000000) }}"},
                },
                "steps": [],
            },
            one_of(value_bounds, "FLOWHOOKS_RUNNER_MAX_RESPONSE_BYTES"),
        ),
        # Within the character bound, past the response's byte bound.
        (
            {
                "webhook": {
                    "ref_id": "web1",
                    "response": {"status_code": 200, "body": "{{ 'é' * 600000 }}"},
                },
                "steps": [],
            },
            "FLOWHOOKS_RUNNER_MAX_RESPONSE_BYTES",
        ),
    ]
    flows = [await new_flow(attacker, definition) for definition, _ in cases]
    async_id, async_token = await async_attacker_flow(
        attacker, endpoint, [{"ref_id": "big", "type": "template", "template": BIG_VALUES[0]}]
    )

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(hit(attacker, flow_id, token, json={}) for flow_id, token in flows),
                hit(attacker, async_id, async_token, json={}),
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for (definition, bounds), answer in zip(cases, answers[:-1], strict=True):
        where = orjson.dumps(definition).decode()[:120]
        assert_envelope(answer, 500, "flow_error")
        assert_names_one(answer.envelope["message"], bounds)
        assert len(answer.body) < 10_000, where
        record = await assert_recorded(attacker, answer.request_id, "failed", 500)
        assert_names_one(record["error"], bounds)
    asynchronous = answers[-1]
    assert_scheduled(asynchronous)
    record = await assert_recorded(attacker, asynchronous.request_id, "failed", 500)
    assert_names_one(record["error"], value_bounds)
    await assert_ran_once(endpoint, [asynchronous.request_id])


# --- the trace's bound on steps -----------------------------------------------------------


async def test_trace_is_bounded_with_a_marker(api: Api, attacker: Api) -> None:
    victim = await make_victim(api)
    many = {
        "ref_id": "many",
        "type": "loop",
        "over": "{{ range(3000) | list }}",
        "steps": [{"ref_id": "step", "type": "template", "template": "{{ loop.index }}"}],
    }
    flow_id, token = await new_flow(
        attacker,
        {
            "webhook": {"ref_id": "web1", "response": {"status_code": 200, "body": "ok"}},
            "steps": [many],
        },
    )
    answer, calls = await under_attack(victim, hit(attacker, flow_id, token, json={}))
    await assert_victims_unharmed(victim, calls)
    assert (answer.status, answer.body) == (200, b"ok")
    record = await record_of(attacker, answer.request_id)
    assert (record["outcome"], record["error"]) == ("succeeded", None)
    steps = record["steps"]
    assert len(steps) <= 1001, len(steps)
    last = steps[-1]
    assert last["type"] == "truncated", last
    assert "FLOWHOOKS_RUNNER_MAX_TRACE_STEPS" in last["error"], last


# --- row 6: bodies built to be slow to parse ------------------------------------------------


def xml_attributes(count: int) -> bytes:
    return b"<a " + b" ".join(b'a%d="1"' % i for i in range(count)) + b"/>"


def xml_elements(count: int) -> bytes:
    return b"<a>" + b"<b/>" * count + b"</a>"


def multipart_parts(count: int, boundary: str = "XyZ") -> bytes:
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'.encode()
    return part * count + f"--{boundary}--\r\n".encode()


async def test_parser_bombs_are_refused_without_stalling_the_ingress(
    api: Api, attacker: Api
) -> None:
    victim = await make_victim(api)
    flow_id, token = await new_flow(
        attacker, {"steps": [{"ref_id": "echo", "type": "template", "template": "{{ web1 }}"}]}
    )
    attributes = xml_attributes(100_000)
    assert len(attributes) > 1_000_000
    parts = multipart_parts(100_000)
    assert len(parts) > 5_000_000
    # (body, content type, word the message names the bound by)
    bombs = [
        (attributes, "application/xml", "attributes"),
        (xml_elements(100_000), "text/xml", "elements"),
        (parts, "multipart/form-data; boundary=XyZ", "parts"),
        (
            b"&".join(b"f%d=1" % i for i in range(100_000)),
            "application/x-www-form-urlencoded",
            "fields",
        ),
    ]

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(
                    hit(attacker, flow_id, token, data=body, headers={"Content-Type": kind})
                    for body, kind, _ in bombs
                    for _ in range(2)
                )
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer, (_, _, word) in zip(answers, [b for b in bombs for _ in range(2)], strict=True):
        assert_envelope(answer, 400, "bad_request", word)
        await assert_recorded(attacker, answer.request_id, "rejected", 400, word)


async def test_a_pathological_filter_cannot_stall_the_ingress(api: Api, attacker: Api) -> None:
    """The costliest filter a save allows (every operand a substring search) on large
    bodies: each evaluation stops at its budget (not matched: `filtered`, recorded),
    and the victims are served as always."""
    victim = await make_victim(api)
    needles = {"$or": [{"s": {"$contains": f"needle{i}"}} for i in range(60)]}
    flow_id, token = await new_flow(
        attacker, {"webhook": {"filter": {"body": needles}}, "steps": []}
    )
    # Near-misses everywhere: each search does its most work; 60 of them would scan
    # 60 MB, the budget stops the evaluation after a few.
    body = orjson.dumps({"s": "needl" * 200_000})

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(*(hit(attacker, flow_id, token, data=body) for _ in range(6)))
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer in answers:
        assert (answer.status, answer.envelope["message"]) == (200, "filtered")

    async def recorded() -> dict[str, Any] | None:
        status, record = await attacker.debugger(f"/v1/requests/{answers[0].request_id}")
        return record if status == 200 else None

    assert (await eventually(recorded))["outcome"] == "filtered"


# --- row 7: odd inputs that used to be 500 internal_error ----------------------------------


async def test_recursive_macro_fails_its_run(api: Api, attacker: Api, endpoint: Endpoint) -> None:
    victim = await make_victim(api)
    recursion = {
        "ref_id": "deep",
        "type": "template",
        "template": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    }
    sync_id, sync_token = await new_flow(attacker, {"steps": [recursion]})
    async_id, async_token = await async_attacker_flow(attacker, endpoint, [recursion])

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                hit(attacker, sync_id, sync_token, json={}),
                hit(attacker, async_id, async_token, json={}),
            )
        )

    (sync, asynchronous), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    assert_envelope(sync, 500, "flow_error", "recursion too deep")
    await assert_recorded(attacker, sync.request_id, "failed", 500, "recursion too deep")
    assert_scheduled(asynchronous)
    await assert_recorded(attacker, asynchronous.request_id, "failed", 500, "recursion too deep")
    await assert_ran_once(endpoint, [asynchronous.request_id])


async def test_big_integers_are_kept(api: Api, attacker: Api) -> None:
    victim = await make_victim(api)
    # (a flow, its exact answer body)
    cases: list[tuple[dict[str, Any], bytes]] = [
        (
            {"steps": [{"ref_id": "n", "type": "template", "template": "{{ 2**64 }}"}]},
            b'{"status":200,"error":null,"message":"ok","data":{"value":"18446744073709551616"}}',
        ),
        (
            {"steps": [{"ref_id": "n", "type": "template", "template": "{{ 2**64 - 1 }}"}]},
            b'{"status":200,"error":null,"message":"ok","data":{"value":18446744073709551615}}',
        ),
        (
            {
                "steps": [
                    {
                        "ref_id": "n",
                        "type": "template",
                        "template": "{{ {'big': [2**64, -(2**64), 2**200]} }}",
                    }
                ]
            },
            b'{"status":200,"error":null,"message":"ok","data":{"value":{"big":'
            b'["18446744073709551616","-18446744073709551616",'
            b'"1606938044258990275541962092341162602522202993782792835301376"]}}}',
        ),
        (
            {
                "steps": [
                    {
                        "ref_id": "each",
                        "type": "loop",
                        "over": "{{ [2**64] }}",
                        "steps": [
                            {"ref_id": "item", "type": "template", "template": "{{ loop.item }}"}
                        ],
                    }
                ]
            },
            b'{"status":200,"error":null,"message":"ok",'
            b'"data":{"value":[{"value":"18446744073709551616"}]}}',
        ),
        (
            {
                "webhook": {
                    "ref_id": "web1",
                    "response": {"status_code": 200, "body": "{{ 2**64 }}"},
                },
                "steps": [],
            },
            b"18446744073709551616",
        ),
    ]
    flows = [await new_flow(attacker, definition) for definition, _ in cases]

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(hit(attacker, flow_id, token, json={}) for flow_id, token in flows)
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for (definition, body), answer in zip(cases, answers, strict=True):
        assert (answer.status, answer.body) == (200, body), definition
        record = await record_of(attacker, answer.request_id)
        assert (record["outcome"], record["error"]) == ("succeeded", None), record["error"]
        assert record["response"]["body"].encode() == body


async def raw_post(base: str, path: str, headers: list[bytes], body: bytes) -> tuple[int, bytes]:
    """A request written byte for byte (aiohttp's client would not send a 0xFF byte in a
    header); the status and the body of the answer."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = [
            f"POST {path} HTTP/1.1".encode(),
            f"Host: {url.netloc}".encode(),
            b"Connection: close",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            *headers,
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head_bytes.lower():
        body_out = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body_out, rest = body_out + rest[:size], rest[size + 2 :]
        return status, body_out
    return status, rest


async def test_undecodable_header_byte_is_kept_with_replacement(api: Api, attacker: Api) -> None:
    victim = await make_victim(api)
    echo = {
        "ref_id": "web1",
        "response": {"status_code": 200, "body": "{{ request.headers['x-odd'] }}"},
    }
    sync_id, sync_token = await new_flow(attacker, {"webhook": echo, "steps": []})
    async_id, async_token = await new_flow(
        attacker,
        {
            "webhook": {"ref_id": "web1", "async": True},
            "steps": [
                {"ref_id": "h", "type": "template", "template": "{{ request.headers['x-odd'] }}"}
            ],
        },
    )
    base = api.system.url("ingress")

    async def attack() -> list[tuple[int, bytes]]:
        answers = []
        for flow_id, token in ((sync_id, sync_token), (async_id, async_token)):
            answers.append(
                await raw_post(
                    base,
                    f"/v1/flow-webhook/{flow_id}",
                    [f"Authorization: Bearer {token}".encode(), b"X-Odd: a\xffb"],
                    b'{"x": 1}',
                )
            )
        return answers

    ((sync_status, sync_body_), (async_status, async_answer)), calls = await under_attack(
        victim, attack()
    )
    await assert_victims_unharmed(victim, calls)
    assert (sync_status, sync_body_) == (200, "a\ufffdb".encode())
    assert async_status == 200, async_answer
    envelope = orjson.loads(async_answer)
    assert (envelope["status"], envelope["error"], envelope["message"]) == (200, None, "scheduled")
    # Both recorded, the byte kept as U+FFFD.
    sync_rows = await listed(attacker, sync_id)
    async_rows = await listed(attacker, async_id)
    assert len(sync_rows) == 1 and len(async_rows) == 1
    record = await record_of(attacker, sync_rows[0]["id"])
    assert (record["outcome"], record["headers"]["x-odd"]) == ("succeeded", "a\ufffdb")
    record = await record_of(attacker, envelope["data"]["request_id"])
    assert (record["outcome"], record["headers"]["x-odd"]) == ("succeeded", "a\ufffdb")
    assert record["response"]["body"].encode() == orjson.dumps(
        {"status": 200, "error": None, "message": "ok", "data": {"value": "a\ufffdb"}}
    )


async def test_multipart_with_a_python_codec_as_charset_is_refused(api: Api, attacker: Api) -> None:
    victim = await make_victim(api)
    flow_id, token = await new_flow(
        attacker, {"steps": [{"ref_id": "echo", "type": "template", "template": "{{ web1 }}"}]}
    )
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n'
        b"Content-Type: text/plain; charset=unicode_escape\r\n\r\n\\ud800\r\n--XyZ--\r\n"
    )

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(
                    hit(
                        attacker,
                        flow_id,
                        token,
                        data=body,
                        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
                    )
                    for _ in range(3)
                )
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer in answers:
        assert_envelope(answer, 400, "bad_request", "charset")
        await assert_recorded(attacker, answer.request_id, "rejected", 400, "charset")


# --- row 8: http step secrets -----------------------------------------------------------

SECRET = "s3cr3t-DO-NOT-LEAK"


async def test_http_step_errors_never_echo_a_secret(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    host = urlsplit(endpoint.base).netloc
    closed = f"{ENDPOINT_HOST}:1"  # nothing listens on port 1
    # (url, timeout_s, a fragment the message must contain)
    cases = [
        (f"http://{closed}/hook?api_key={SECRET}&page=2", 10.0, f"http://{closed}/hook"),
        (f"http://user:{SECRET}@{closed}/hook", 10.0, f"http://{closed}/hook"),
        (f"{endpoint.base}/slow?s=3&token={SECRET}", 0.3, f"{endpoint.base}/slow"),
        (f"http://{host}\\@example.com/?api_key={SECRET}", 10.0, "backslash"),
        (f"http://{ENDPOINT_HOST}:99999/?access_token={SECRET}", 10.0, "is not valid"),
    ]
    flows = [
        await new_flow(
            attacker,
            {
                "steps": [
                    {
                        "ref_id": "call",
                        "type": "http",
                        "url": url,
                        "timeout_s": timeout_s,
                        "retries": 0,
                        "headers": {"X-Api-Key": SECRET},
                    }
                ]
            },
        )
        for url, timeout_s, _ in cases
    ]
    async_id, async_token = await async_attacker_flow(
        attacker,
        endpoint,
        [{"ref_id": "call", "type": "http", "url": cases[0][0], "retries": 0}],
    )

    async def attack() -> list[Answer]:
        return list(
            await asyncio.gather(
                *(hit(attacker, flow_id, token, json={}) for flow_id, token in flows),
                hit(attacker, async_id, async_token, json={}),
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for (url, _, fragment), answer in zip(cases, answers[:-1], strict=True):
        assert_envelope(answer, 500, "flow_error", "step 'call' failed", fragment)
        assert SECRET not in answer.body.decode(), url
        record = await assert_recorded(attacker, answer.request_id, "failed", 500, fragment)
        assert SECRET not in orjson.dumps(record).decode(), url
    asynchronous = answers[-1]
    assert_scheduled(asynchronous)
    record = await assert_recorded(attacker, asynchronous.request_id, "failed", 500, "/hook")
    assert SECRET not in orjson.dumps(record).decode()
    await assert_ran_once(endpoint, [asynchronous.request_id])


async def test_redirect_to_another_host_drops_credentials(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    secret_headers = {
        "Authorization": f"Bearer {SECRET}",
        "Cookie": f"session={SECRET}",
        "X-Api-Key": SECRET,
        "X-Custom-Token": SECRET,
        "X-Trace": "keep-me",
    }

    def via_redirect(target: str) -> dict[str, Any]:
        return {
            "steps": [
                {
                    "ref_id": "call",
                    "type": "http",
                    "url": f"{endpoint.base}/redirect?to={target}/headers",
                    "retries": 0,
                    "headers": secret_headers,
                }
            ]
        }

    other_id, other_token = await new_flow(attacker, via_redirect(endpoint.other))
    same_id, same_token = await new_flow(attacker, via_redirect(endpoint.base))

    async def attack() -> tuple[Answer, Answer]:
        other = await hit(attacker, other_id, other_token, json={})
        same = await hit(attacker, same_id, same_token, json={})
        return other, same

    (other, same), calls = await under_attack(victim, attack())
    await assert_victims_unharmed(victim, calls)
    for answer in (other, same):
        assert answer.status == 200, answer.body
        assert answer.envelope["data"]["status"] == 200
        assert SECRET not in answer.body.decode()
    assert len(endpoint.seen_headers) == 2
    to_other, to_same = ({k.lower(): v for k, v in h.items()} for h in endpoint.seen_headers)
    # Another host: none of the credentials; the rest as sent.
    assert to_other["x-trace"] == "keep-me"
    leaked = {
        k for k in ("authorization", "cookie", "x-api-key", "x-custom-token") if k in to_other
    }
    assert not leaked, leaked
    # The same host keeps them (the step works as configured).
    assert to_same["authorization"] == f"Bearer {SECRET}"
    assert to_same["x-api-key"] == SECRET
    for answer in (other, same):
        record = await record_of(attacker, answer.request_id)
        assert record["outcome"] == "succeeded"
        assert SECRET not in orjson.dumps(record).decode()


# --- row 9: secrets stored in clear in the debugger --------------------------------------

SECRET_HEADERS = [
    "X-Api-Key",
    "Api-Key",
    "X-Access-Token",
    "Private-Token",
    "Cookie",
    "X-Shopify-Access-Token",
    "X-Amz-Security-Token",
    "Proxy-Authorization",
    "X-Auth-Token",
    "X-Gitlab-Token",
    "X-Client-Secret",
    "X-Db-Password",
]
SECRET_QUERY = ["access_token", "api_key", "apikey", "client_secret", "password"]


async def test_secret_headers_and_query_parameters_are_redacted(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    headers = {name: f"{SECRET}-{i}" for i, name in enumerate(SECRET_HEADERS)}
    params = {name: f"{SECRET}-q{i}" for i, name in enumerate(SECRET_QUERY)}
    params["page"] = "2"
    # The attacker's flow sends secrets from an http step too: its trace is redacted.
    flow_id, token = await new_flow(
        attacker,
        {
            "steps": [
                {
                    "ref_id": "call",
                    "type": "http",
                    "url": f"{endpoint.base}/headers?api_key={SECRET}&page=3",
                    "retries": 0,
                    "headers": {
                        "X-Auth-Token": SECRET,
                        "Private-Token": SECRET,
                        "X-Db-Password": SECRET,
                        "X-Trace": "keep-me",
                    },
                }
            ]
        },
    )

    answer, calls = await under_attack(
        victim,
        hit(attacker, flow_id, token, json={}, headers=headers, params=params),
        at_least=20,
        at_most=40,
        headers=headers,
        params=params,
    )
    await assert_victims_unharmed(victim, calls)
    assert answer.status == 200, answer.body
    # The endpoint got the real values: redaction is only of what is stored.
    assert endpoint.seen_headers[0]["X-Auth-Token"] == SECRET

    async def check(owner: Api, request_id: str) -> dict[str, Any]:
        record = await record_of(owner, request_id)
        stored = {name.lower(): value for name, value in record["headers"].items()}
        assert "authorization" not in stored
        for name in SECRET_HEADERS:
            assert stored[name.lower()] == "[redacted]", (name, stored.get(name.lower()))
        for name in SECRET_QUERY:
            assert record["query"][name] == "[redacted]", (name, record["query"])
        assert record["query"]["page"] == "2"
        assert SECRET not in orjson.dumps(record).decode(), request_id
        return record

    await asyncio.gather(*(check(api, c.request_id) for c in calls))
    record = await check(attacker, answer.request_id)
    (call,) = record["steps"]
    assert call["input"]["headers.X-Trace"] == "keep-me"
    for name in ("X-Auth-Token", "Private-Token", "X-Db-Password"):
        assert call["input"][f"headers.{name}"] == "[redacted]", call["input"]
    assert "page=3" in call["input"]["url"], call["input"]


# --- fair share: slow flows of one workspace cannot starve the others -------------------


async def test_slow_flows_of_one_workspace_cannot_starve_another(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await make_victim(api)
    flow_id, token = await new_flow(
        attacker,
        {
            "steps": [
                {
                    "ref_id": "wait",
                    "type": "http",
                    "url": f"{endpoint.base}/slow?s=2.5",
                    "retries": 0,
                }
            ]
        },
    )

    async def attack() -> list[Answer]:
        # More runs than the runner has slots (2 workers x 16), each waiting 2.5 s.
        return list(
            await asyncio.gather(*(hit(attacker, flow_id, token, json={}) for _ in range(40)))
        )

    answers, calls = await under_attack(victim, attack(), at_most=150, pace_s=0.03)
    await assert_victims_unharmed(victim, calls)
    assert [a.status for a in answers] == [200] * 40
    assert {a.envelope["data"]["body"]["slow"] for a in answers} == {True}
