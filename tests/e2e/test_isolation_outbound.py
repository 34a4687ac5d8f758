"""Isolation of the outgoing senders and of replay jobs (contract, "Isolation": "a slow
or dead destination delays only its owner's deliveries"; issue 20, "Shared FIFOs").

A hostile workspace (`evil`) points its completion callbacks and alert notices at a
tarpit (an endpoint on 127.0.0.2 that accepts the connection and does not answer), or
runs bulk replay jobs of a flow that waits 3 s in an `http` step; the well-behaved
workspace (`acme`) sends one callback / one notice / one small replay job at the same
time. Measured before the fix: B's callback 96 s late, B's notice 54 s, B's job 0 of 10
for a minute. The bounds asserted are the contract's (2 s after B's run finished) and,
for the replay job, one of A's replays plus B's own work (8 s).

Also asserted: a deferral is not an attempt. Each of A's recorded attempts reached the
tarpit, and no more than the breaker allows did (3 failures in a row open it, with 2
attempts in flight per destination at most: 4); A's other callbacks and notices wait
without having burnt any attempt. Settings are small so that each test takes seconds."""

import asyncio
import base64
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from harness.client import Api, eventually, ok_or_failing_flow
from harness.receiver import serving
from harness.system import System

pytestmark = pytest.mark.e2e

TARPIT_HOST = "127.0.0.2"
RECEIVER_HOST = "127.0.0.7"
ALLOWED = f'["{TARPIT_HOST}/32", "{RECEIVER_HOST}/32"]'
SECRETS_KEY = "e2e-webhook-secrets-key-isolation-0123456789"
SECRET = "whsec_" + base64.b64encode(b"e2e-isolation-secret-0123456789a").decode()
# The contract's bound on B's delivery after its run finished.
BOUND_S = 2.0
# The breaker's settings below: at most this many attempts reach a tarpit before its
# circuit opens (3 failures in a row, with up to 2 in flight when the third fails).
MAX_TARPIT_ATTEMPTS = 3 + 2 - 1
# A's replays wait this long in their `http` step.
SLOW_REPLAY_S = 3.0


# The outgoing senders' and the replays' settings: the system is shared with
# test_isolation_debugger, whose settings are the debugger API's listing and search
# bounds, which nothing here calls (tests/e2e/conftest.py `debugger_and_outbound_system`).
SYSTEM_ENV = {
    "FLOWHOOKS_WEBHOOK_SECRETS_KEY": SECRETS_KEY,
    "FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS": ALLOWED,
    # Callbacks: a window of 8 messages, 4 attempts shared by the workspaces, 2 per
    # destination, a 2 s first-byte timeout, 3 failures open a circuit for 30 s.
    "FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS": ALLOWED,
    "FLOWHOOKS_RUNNER_CALLBACK_PREFETCH": "8",
    "FLOWHOOKS_RUNNER_CALLBACK_SLOTS": "4",
    "FLOWHOOKS_RUNNER_CALLBACK_PER_DESTINATION": "2",
    "FLOWHOOKS_RUNNER_CALLBACK_FIRST_BYTE_TIMEOUT_S": "2",
    "FLOWHOOKS_RUNNER_CALLBACK_BREAKER_FAILURES": "3",
    # Alerts: the same, with 8 notices claimed at once; evaluated and polled often.
    "FLOWHOOKS_DEBUGGER_ALERT_ALLOW_NETWORKS": ALLOWED,
    "FLOWHOOKS_DEBUGGER_ALERT_EVAL_INTERVAL_S": "0.2",
    "FLOWHOOKS_DEBUGGER_ALERT_POLL_INTERVAL_S": "0.2",
    "FLOWHOOKS_DEBUGGER_ALERT_CONCURRENCY": "8",
    "FLOWHOOKS_DEBUGGER_ALERT_SLOTS": "4",
    "FLOWHOOKS_DEBUGGER_ALERT_PER_DESTINATION": "2",
    "FLOWHOOKS_DEBUGGER_ALERT_FIRST_BYTE_TIMEOUT_S": "2",
    "FLOWHOOKS_DEBUGGER_ALERT_BREAKER_FAILURES": "3",
    # Replays: 4 in flight per debugger, jobs looked for every half second.
    "FLOWHOOKS_DEBUGGER_REPLAY_IN_FLIGHT": "4",
    "FLOWHOOKS_DEBUGGER_REPLAY_TIMEOUT_S": "10",
    "FLOWHOOKS_DEBUGGER_REPLAY_POLL_S": "0.5",
}


@pytest.fixture(scope="module")
def system(debugger_and_outbound_system: System) -> System:
    return debugger_and_outbound_system.with_own_workspaces()


@pytest.fixture
async def attacker(api: Api) -> Api:
    return Api(api.system, api.session, api.system.create_token("evil", "automation"))


@dataclass
class Tarpit:
    """Accepts every POST and answers only when the test ends; GET /slow?s= answers
    after `s` seconds (the target of A's slow `http` steps)."""

    base: str = ""
    hits: Counter[str] = field(default_factory=Counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def tarpit() -> AsyncIterator[Tarpit]:
    state = Tarpit()

    async def stall(request: web.Request) -> web.Response:
        state.hits[request.match_info["name"]] += 1
        with suppress(TimeoutError):
            await asyncio.wait_for(state.done.wait(), 120)
        return web.Response(status=200)

    async def slow(request: web.Request) -> web.Response:
        seconds = float(request.query["s"])
        state.hits["slow"] += 1 if seconds else 0
        await asyncio.sleep(seconds)
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_post("/stall/{name}", stall)
    app.router.add_get("/slow", slow)
    # A /slow call still in flight at the end (one of A's replays) is cancelled, not
    # waited for: nothing is checked after the test.
    async with serving(app, TARPIT_HOST, shutdown_timeout_s=0.1) as base:
        state.base = base
        yield state
        state.done.set()  # the stalled handlers end, so the server stops at once


@dataclass
class Receiver:
    """A healthy receiver: answers 200 at once, remembers when each POST arrived."""

    base: str = ""
    arrived: dict[str, list[tuple[datetime, bytes]]] = field(default_factory=dict)

    async def first(self, path: str) -> tuple[datetime, bytes]:
        async def came() -> tuple[datetime, bytes] | None:
            calls = self.arrived.get(path)
            return calls[0] if calls else None

        return await eventually(came, timeout_s=30)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def record(request: web.Request) -> web.Response:
        at = datetime.now(UTC)
        state.arrived.setdefault(request.path, []).append((at, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{name}", record)
    async with serving(app, RECEIVER_HOST) as base:
        state.base = base
        yield state


async def db_value(system: System, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(system.database_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def until(
    system: System, query: str, *args: Any, ok: Callable[[Any], bool], timeout_s: float
) -> Any:
    """The query's value, once `ok` accepts it."""

    async def reached() -> Any:
        value = await db_value(system, query, *args)
        return value if ok(value) else None

    return await eventually(reached, timeout_s=timeout_s)


# --- (a) completion callbacks ------------------------------------------------------


async def callback_flow(api: Api, url: str) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "calling back",
            "status": "live",
            "webhook": {
                "ref_id": "web1",
                "async": True,
                "callback": {"url": url, "secret": SECRET},
            },
            "steps": [],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send_async(api: Api, flow_id: str, token: str, count: int) -> list[str]:
    answers = await asyncio.gather(*(api.send(flow_id, token, json={"n": n}) for n in range(count)))
    assert [status for status, _, _ in answers] == [200] * count
    return [headers["X-Request-Id"] for _, headers, _ in answers]


async def test_a_tarpit_delays_only_its_owners_callbacks(
    api: Api, attacker: Api, tarpit: Tarpit, receiver: Receiver
) -> None:
    system = api.system
    a_flow, a_token = await callback_flow(attacker, f"{tarpit.base}/stall/callbacks")
    # Three times the runner's callback window (8), each held 2 s by the tarpit if let.
    a_requests = await send_async(attacker, a_flow, a_token, 24)
    await until(
        system,
        "SELECT count(*) FROM debugger.requests WHERE flow_id = $1 AND outcome = 'succeeded'",
        uuid.UUID(a_flow),
        ok=lambda n: n == 24,
        timeout_s=20,
    )
    await eventually(lambda: _at_least(tarpit.hits["callbacks"], 1), timeout_s=10)

    b_flow, b_token = await callback_flow(api, f"{receiver.base}/b")
    [b_request] = await send_async(api, b_flow, b_token, 1)
    arrived, body = await receiver.first("/b")
    data = orjson.loads(body)["data"]
    assert data["request_id"] == b_request and data["outcome"] == "succeeded"
    late_s = (arrived - datetime.fromisoformat(data["finished_at"])).total_seconds()
    assert late_s <= BOUND_S, f"B's callback came {late_s:.2f} s after its run finished"

    # Deferred, not attempted: every recorded attempt of A's reached the tarpit, the
    # breaker let at most MAX_TARPIT_ATTEMPTS through, and none of A's callbacks is over.
    # (Recorded == reached, at least 3: those failed, so the circuit is open and nothing
    # more reaches the tarpit during its 30 s cool-down.)
    recorded = await until(
        system,
        "SELECT count(*) FROM debugger.callback_attempts WHERE request_id = ANY($1::text[])",
        a_requests,
        ok=lambda n: n >= 3 and n == tarpit.hits["callbacks"],
        timeout_s=20,
    )
    assert recorded <= MAX_TARPIT_ATTEMPTS
    assert (
        await db_value(
            system,
            "SELECT count(*) FROM debugger.callback_attempts"
            " WHERE request_id = ANY($1::text[]) AND state <> 'delivering'",
            a_requests,
        )
        == 0
    )
    errors = await db_value(
        system,
        "SELECT array_agg(DISTINCT error) FROM debugger.callback_attempts"
        " WHERE request_id = ANY($1::text[])",
        a_requests,
    )
    assert errors == ["TimeoutError: no answer within 2 s (first byte)"]


async def _at_least(value: int, wanted: int) -> bool | None:
    return True if value >= wanted else None


# --- (b) alert notices ---------------------------------------------------------------


async def alerting_flow(api: Api, url: str) -> tuple[str, str]:
    """A flow whose first failed run fires a notice to `url`."""
    flow_id, token = await ok_or_failing_flow(api, "alerting")
    async with api.session.put(
        f"{api.system.url('debugger')}/v1/flows/{flow_id}/alert",
        json={"url": url, "failure_rate": 1.0, "window_s": 600, "min_requests": 1},
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 201, await answer.text()
    return flow_id, token


async def fail_once(api: Api, flow_id: str, token: str) -> None:
    status, _, _ = await api.send(flow_id, token, json={"ok": False})
    assert status == 500


async def test_a_tarpit_delays_only_its_owners_alert_notices(
    api: Api, attacker: Api, tarpit: Tarpit, receiver: Receiver
) -> None:
    system = api.system
    a_flows = await asyncio.gather(
        *(alerting_flow(attacker, f"{tarpit.base}/stall/alerts") for _ in range(6))
    )
    b_flow, b_token = await alerting_flow(api, f"{receiver.base}/notice")
    await asyncio.gather(*(fail_once(attacker, flow_id, token) for flow_id, token in a_flows))
    a_ids = [uuid.UUID(flow_id) for flow_id, _ in a_flows]
    await until(
        system,
        "SELECT count(*) FROM debugger.alert_notices WHERE flow_id = ANY($1::uuid[])",
        a_ids,
        ok=lambda n: n == 6,
        timeout_s=15,
    )
    await eventually(lambda: _at_least(tarpit.hits["alerts"], 1), timeout_s=10)

    sent_at = datetime.now(UTC)  # B's run finishes after this: the bound is stricter
    await fail_once(api, b_flow, b_token)
    arrived, body = await receiver.first("/notice")
    assert orjson.loads(body)["data"]["flow_id"] == b_flow
    late_s = (arrived - sent_at).total_seconds()
    assert late_s <= BOUND_S, f"B's notice came {late_s:.2f} s after its run finished"

    # Put back, not attempted: A's notices count exactly the attempts that reached the
    # tarpit (none in flight, at least 3: failed, so the circuit is open), at most what
    # the breaker lets through, and none is given up.
    attempts = await until(
        system,
        "SELECT CASE WHEN count(claimed_until) = 0 THEN sum(attempts) END"
        " FROM debugger.alert_notices WHERE flow_id = ANY($1::uuid[])",
        a_ids,
        ok=lambda n: n is not None and n >= 3 and n == tarpit.hits["alerts"],
        timeout_s=20,
    )
    assert attempts <= MAX_TARPIT_ATTEMPTS
    assert (
        await db_value(
            system,
            "SELECT count(*) FROM debugger.alert_notices WHERE flow_id = ANY($1::uuid[])"
            " AND (delivered_at IS NOT NULL OR given_up_at IS NOT NULL)",
            a_ids,
        )
        == 0
    )


# --- (c) replay jobs -----------------------------------------------------------------


async def replay_job(api: Api, flow_id: str) -> dict[str, Any]:
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/flows/{flow_id}/replays",
        data=b"{}",
        headers={**api._auth(), "Content-Type": "application/json"},
    ) as answer:
        job: dict[str, Any] = await answer.json()
        assert answer.status == 202, job
        return job


async def job_state(api: Api, job_id: str) -> dict[str, Any]:
    status, job = await api.debugger(f"/v1/replays/{job_id}")
    assert status == 200, job
    return dict(job)


def slow_step(tarpit: Tarpit, seconds: float) -> list[dict[str, Any]]:
    return [
        {"ref_id": "wait", "type": "http", "url": f"{tarpit.base}/slow?s={seconds}", "retries": 0}
    ]


async def test_slow_replay_jobs_do_not_hold_another_workspaces_job(
    api: Api, attacker: Api, tarpit: Tarpit
) -> None:
    system = api.system

    async def slow_flow() -> str:
        # Its originals are fast; then the flow is changed to wait (replays run the
        # current version), so only the replays are slow.
        flow = await attacker.create_flow(
            {"name": "slow replays", "status": "live", "steps": slow_step(tarpit, 0)}
        )
        token = (await attacker.webhook_info(flow["id"]))["token"]
        answers = await asyncio.gather(
            *(attacker.send(flow["id"], token, json={}) for _ in range(4))
        )
        assert [status for status, _, _ in answers] == [200] * 4
        await attacker.patch_flow(flow["id"], {"steps": slow_step(tarpit, SLOW_REPLAY_S)})
        return str(flow["id"])

    a_flows = await asyncio.gather(*(slow_flow() for _ in range(5)))
    b_flow = await api.create_flow(
        {
            "name": "small job",
            "status": "live",
            "steps": [{"ref_id": "n", "type": "template", "template": "{{ web1.n * 10 }}"}],
        }
    )
    b_token = (await api.webhook_info(b_flow["id"]))["token"]
    b_originals = [
        headers["X-Request-Id"]
        for _, headers, _ in await asyncio.gather(
            *(api.send(b_flow["id"], b_token, json={"n": n}) for n in range(10))
        )
    ]
    await until(
        system,
        "SELECT count(*) FROM debugger.requests WHERE flow_id = ANY($1::uuid[])",
        [uuid.UUID(flow_id) for flow_id in [*a_flows, b_flow["id"]]],
        ok=lambda n: n == 5 * 4 + 10,
        timeout_s=20,
    )

    a_jobs = [await replay_job(attacker, flow_id) for flow_id in a_flows]
    await eventually(lambda: _at_least(tarpit.hits["slow"], 1), timeout_s=10)
    await asyncio.sleep(0.5)  # A's replays hold the debugger's replay slots
    started = time.monotonic()
    b_job = await replay_job(api, b_flow["id"])

    async def finished() -> dict[str, Any] | None:
        job = await job_state(api, b_job["id"])
        return job if job["status"] != "running" else None

    done = await eventually(finished, timeout_s=30)
    took_s = time.monotonic() - started
    # One of A's replays in flight (3 s) must end before B's job has a slot; then its
    # 10 fast replays and a look for jobs (0.5 s): 8 s leaves room for a busy machine.
    assert took_s <= 8.0, f"B's job took {took_s:.1f} s"
    assert {k: done[k] for k in ("status", "total", "done", "succeeded", "failed")} == {
        "status": "finished",
        "total": 10,
        "done": 10,
        "succeeded": 10,
        "failed": 0,
    }
    # Each original replayed once, and succeeded.
    replays = await until(
        system,
        "SELECT array_agg(replay_of || ' ' || outcome ORDER BY replay_of)"
        " FROM debugger.requests WHERE replay_of = ANY($1::text[])",
        b_originals,
        ok=lambda rows: rows is not None and len(rows) >= 10,
        timeout_s=10,
    )
    assert replays == sorted(f"{original} succeeded" for original in b_originals)
    # A's jobs are worked meanwhile, one at a time on this debugger.
    states = [await job_state(attacker, job["id"]) for job in a_jobs]
    assert sum(job["done"] for job in states) >= 1
    for job in a_jobs:
        async with attacker.session.delete(
            f"{system.url('debugger')}/v1/replays/{job['id']}", headers=attacker._auth()
        ) as answer:
            assert answer.status == 200
