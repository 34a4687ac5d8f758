"""Replays over HTTP against running services: an edited replay (body and headers,
redacted headers never sent), a paused flow (409 unless forced), a rejected request, and
bulk replay jobs (hundreds of failed requests after the flow is fixed, live traffic answered
meanwhile; one job per flow; cancel; resumed after the debugger is killed, each
original replayed exactly once). Throttle and lease settings are shortened here."""

import asyncio
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

FAILING = "{{ web1.n + web1.missing }}"
# A bulk job's failed originals: four chunks of the replay settings below, more than a
# second's replays at their rate, so a live webhook and a cancel land mid-job.
JOB_SIZE = 200
# The debugger is killed once 100 are done: 200 left for the one started after it.
KILLED_JOB_SIZE = 300
FIXED = "{{ web1.n * 10 }}"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_DEBUGGER_REPLAY_RATE="250",
        FLOWHOOKS_DEBUGGER_REPLAY_IN_FLIGHT="8",
        FLOWHOOKS_DEBUGGER_REPLAY_CHUNK="50",
        FLOWHOOKS_DEBUGGER_REPLAY_LEASE_S="2",
        FLOWHOOKS_DEBUGGER_REPLAY_POLL_S="0.5",
        FLOWHOOKS_DEBUGGER_REPLAY_TIMEOUT_S="5",
    ) as running:
        yield running


async def post(api: Api, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    async with api.session.post(
        f"{api.system.url('debugger')}{path}",
        data=orjson.dumps(body) if body is not None else None,
        headers={**api._auth(token), "Content-Type": "application/json"},
    ) as answer:
        return answer.status, await answer.json()


async def delete(api: Api, path: str, token: str | None = None) -> tuple[int, Any]:
    async with api.session.delete(
        f"{api.system.url('debugger')}{path}", headers=api._auth(token)
    ) as answer:
        return answer.status, await answer.json()


async def make_flow(api: Api, template: str) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "replays",
            "status": "live",
            "steps": [{"ref_id": "n", "type": "template", "template": template}],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def set_template(api: Api, flow_id: str, template: str) -> None:
    await api.patch_flow(
        flow_id, {"steps": [{"ref_id": "n", "type": "template", "template": template}]}
    )


async def stored(api: Api, request_id: str) -> dict[str, Any]:
    """The request's record, once its final outcome is stored."""

    async def final() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        if status == 200 and record["outcome"] not in ("queued", "running"):
            return dict(record)
        return None

    return await eventually(final, timeout_s=20)


async def replays_listed(api: Api, request_id: str, count: int) -> list[str]:
    """The original's `replays`, once it lists `count` (replays are stored a moment
    after their answer)."""

    async def listed() -> list[str] | None:
        replays = (await stored(api, request_id))["replays"]
        return list(replays) if len(replays) >= count else None

    return await eventually(listed, timeout_s=20)


async def send_many(api: Api, flow_id: str, token: str, count: int) -> list[str]:
    """`count` webhooks, 25 at a time; their request ids."""
    ids: list[str] = []
    for start in range(0, count, 25):
        answers = await asyncio.gather(
            *(api.send(flow_id, token, json={"n": n}) for n in range(start, min(count, start + 25)))
        )
        ids += [headers["X-Request-Id"] for _, headers, _ in answers]
    return ids


async def all_failed(system: System, originals: list[str]) -> None:
    """Until every original is stored, failed."""

    async def stored_failed() -> bool | None:
        conn = await asyncpg.connect(system.database_url)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM debugger.requests WHERE id = ANY($1::text[])"
                " AND outcome = 'failed'",
                originals,
            )
        finally:
            await conn.close()
        return True if n == len(originals) else None

    await eventually(stored_failed, timeout_s=30)


async def replay_counts(system: System, originals: list[str]) -> dict[str, int]:
    """How many records replay each original (0 for those not replayed)."""
    conn = await asyncpg.connect(system.database_url)
    try:
        rows = await conn.fetch(
            "SELECT replay_of, count(*) AS n FROM debugger.requests"
            " WHERE replay_of = ANY($1::text[]) GROUP BY replay_of",
            originals,
        )
    finally:
        await conn.close()
    counts = {original: 0 for original in originals}
    counts.update({row["replay_of"]: row["n"] for row in rows})
    return counts


async def replay_outcomes(system: System, originals: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(system.database_url)
    try:
        rows = await conn.fetch(
            "SELECT outcome, count(*) AS n FROM debugger.requests"
            " WHERE replay_of = ANY($1::text[]) GROUP BY outcome",
            originals,
        )
    finally:
        await conn.close()
    return {row["outcome"]: row["n"] for row in rows}


async def job_state(api: Api, job_id: str, token: str | None = None) -> dict[str, Any]:
    status, job = await api.debugger(f"/v1/replays/{job_id}", token=token)
    assert status == 200, job
    return dict(job)


async def until_over(api: Api, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    async def over() -> dict[str, Any] | None:
        job = await job_state(api, job_id)
        return job if job["status"] != "running" else None

    return await eventually(over, timeout_s=timeout_s)


async def test_edited_replay_sends_the_edit_and_links_both_ways(api: Api) -> None:
    flow_id, token = await make_flow(
        api, "{{ [web1.n * 10, request.headers.get('x-tag'), request.headers.get('x-api-key')] }}"
    )
    status, headers, _ = await api.send(
        flow_id, token, json={"n": 4}, headers={"X-Tag": "first", "X-Api-Key": "s3cret"}
    )
    assert status == 200
    original = headers["X-Request-Id"]
    record = await stored(api, original)
    assert record["headers"]["x-api-key"] == "[redacted]"
    assert record["replays"] == []

    # As stored: the redacted header is left out, never sent as "[redacted]".
    status, plain = await post(api, f"/v1/requests/{original}/replay")
    assert status == 200, plain
    assert orjson.loads(plain["response"]["body"])["data"] == {"value": [40, "first", None]}

    status, edited = await post(
        api,
        f"/v1/requests/{original}/replay",
        {"body": {"n": 7}, "headers": {"X-Tag": "edited", "X-Api-Key": "new-key"}},
    )
    assert status == 200, edited
    assert (edited["replay_of"], edited["outcome"]) == (original, "succeeded")
    assert edited["response"]["status_code"] == 200
    assert orjson.loads(edited["response"]["body"])["data"] == {"value": [70, "edited", "new-key"]}
    replay = await stored(api, edited["request_id"])
    assert (replay["replay_of"], replay["input"], replay["outcome"]) == (
        original,
        {"n": 7},
        "succeeded",
    )
    assert orjson.loads(replay["raw_body"]) == {"n": 7}
    assert replay["content_type"] == "application/json"
    assert replay["headers"]["x-tag"] == "edited"
    assert replay["headers"]["x-api-key"] == "[redacted]"  # stored redacted again
    # null removes a header.
    status, removed = await post(
        api, f"/v1/requests/{original}/replay", {"headers": {"x-tag": None}}
    )
    assert status == 200, removed
    assert orjson.loads(removed["response"]["body"])["data"] == {"value": [40, None, None]}

    assert await replays_listed(api, original, 3) == [
        plain["request_id"],
        edited["request_id"],
        removed["request_id"],
    ]

    for body, field in (
        ({"headers": {"Authorization": "Bearer x"}}, "headers"),
        ({"headers": {"x-tag": 1}}, "headers"),
        ({"force": "yes"}, "force"),
        ({"bodies": {}}, "bodies"),
    ):
        status, error = await post(api, f"/v1/requests/{original}/replay", body)
        assert (status, error["error"], error["data"]) == (400, "bad_request", {"field": field})


async def test_paused_flow_is_409_unless_forced(api: Api) -> None:
    flow_id, token = await make_flow(api, FIXED)
    status, headers, _ = await api.send(flow_id, token, json={"n": 2})
    assert status == 200
    original = headers["X-Request-Id"]
    await stored(api, original)
    await api.patch_flow(flow_id, {"status": "paused"})

    status, error = await post(api, f"/v1/requests/{original}/replay")
    assert status == 409
    assert error == {
        "status": 409,
        "error": "conflict",
        "message": "the flow is paused: unpause it, or replay with force",
        "data": {"flow_id": flow_id},
    }
    # Nothing ran, nothing was stored.
    assert (await stored(api, original))["replays"] == []

    status, forced = await post(api, f"/v1/requests/{original}/replay", {"force": True})
    assert status == 200, forced
    assert orjson.loads(forced["response"]["body"])["data"] == {"value": 20}
    assert (await stored(api, forced["request_id"]))["replay_of"] == original
    assert await replays_listed(api, original, 1) == [forced["request_id"]]

    # A bulk job on a paused flow stops at its first replay, with the reason.
    status, job = await post(api, f"/v1/flows/{flow_id}/replays", {"filter": {}})
    assert status == 202, job
    over = await until_over(api, job["id"])
    assert (over["status"], over["done"], over["reason"]) == (
        "cancelled",
        0,
        "the flow is paused: unpause it, or start the job with force: true",
    )


async def test_rejected_request_is_replayed_with_a_body(api: Api) -> None:
    flow_id, token = await make_flow(api, FIXED)
    status, headers, _ = await api.send(
        flow_id, token, data=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    original = headers["X-Request-Id"]
    assert (await stored(api, original))["outcome"] == "rejected"

    status, error = await post(api, f"/v1/requests/{original}/replay")
    assert (status, error["error"], error["data"]) == (400, "bad_request", {"field": "body"})

    status, replay = await post(api, f"/v1/requests/{original}/replay", {"body": {"n": 3}})
    assert status == 200, replay
    assert (replay["replay_of"], replay["outcome"]) == (original, "succeeded")
    assert orjson.loads(replay["response"]["body"])["data"] == {"value": 30}
    record = await stored(api, replay["request_id"])
    assert (record["input"], record["raw_body"], record["replay_of"]) == (
        {"n": 3},
        '{"n":3}',
        original,
    )


async def test_scopes_and_workspaces(api: Api) -> None:
    flow_id, token = await make_flow(api, FIXED)
    status, headers, _ = await api.send(flow_id, token, json={"n": 1})
    original = headers["X-Request-Id"]
    await stored(api, original)
    status, job = await post(api, f"/v1/flows/{flow_id}/replays", {"filter": {}})
    assert status == 202, job
    await until_over(api, job["id"])

    reader = api.system.create_token("acme", "debugger.read")
    status, error = await post(api, f"/v1/requests/{original}/replay", token=reader)
    assert (status, error["error"]) == (403, "forbidden")
    status, error = await post(api, f"/v1/flows/{flow_id}/replays", {}, token=reader)
    assert (status, error["error"]) == (403, "forbidden")
    status, error = await delete(api, f"/v1/replays/{job['id']}", token=reader)
    assert (status, error["error"]) == (403, "forbidden")
    assert (await job_state(api, job["id"], token=reader))["status"] == "finished"

    replayer = api.system.create_token("acme", "debugger.replay")
    status, replay = await post(api, f"/v1/requests/{original}/replay", token=replayer)
    assert (status, replay["outcome"]) == (200, "succeeded")

    other = api.system.create_token("globex", "automation")
    for status, error in (
        await post(api, f"/v1/requests/{original}/replay", token=other),
        await post(api, f"/v1/flows/{flow_id}/replays", {}, token=other),
        await api.debugger(f"/v1/replays/{job['id']}", token=other),
        await delete(api, f"/v1/replays/{job['id']}", token=other),
        await api.debugger(f"/v1/replays/{uuid.uuid4()}"),
        await api.debugger("/v1/replays/not-a-uuid"),
    ):
        assert (status, error["error"]) == (404, "not_found")

    status, error = await post(
        api, f"/v1/flows/{flow_id}/replays", {"filter": {"outcome": "queued"}}
    )
    assert (status, error["data"]) == (400, {"field": "filter.outcome"})
    status, error = await post(
        api, f"/v1/flows/{flow_id}/replays", {"filter": {"since": "2024-01-01T00:00:00"}}
    )
    assert (status, error["data"]) == (400, {"field": "filter.since"})


async def test_bulk_replay_after_the_fix_with_live_traffic(api: Api) -> None:
    flow_id, token = await make_flow(api, FAILING)
    originals = await send_many(api, flow_id, token, JOB_SIZE)
    for original in (originals[0], originals[-1]):
        assert (await stored(api, original))["outcome"] == "failed"
    # Webhooks sent while the fix reaches the ingress (within a second) may fail too:
    # the job's filter ends here.
    until = datetime.now(UTC).isoformat()
    await set_template(api, flow_id, FIXED)

    async def fixed() -> bool | None:
        status, _, _ = await api.send(flow_id, token, json={"n": 1})
        return True if status == 200 else None

    await eventually(fixed)

    await all_failed(api.system, originals)

    status, job = await post(
        api, f"/v1/flows/{flow_id}/replays", {"filter": {"outcome": "failed", "until": until}}
    )
    assert status == 202, job
    assert (job["status"], job["total"], job["done"], job["flow_id"]) == (
        "running",
        JOB_SIZE,
        0,
        flow_id,
    )
    assert job["filter"] == {"outcome": "failed", "since": None, "until": until}
    status, error = await post(api, f"/v1/flows/{flow_id}/replays", {})
    assert (status, error["error"], error["data"]) == (409, "conflict", {"job_id": job["id"]})

    # Live webhooks keep being answered while the job runs.
    live: list[int] = []
    while (await job_state(api, job["id"]))["status"] == "running" and len(live) < 2000:
        answers = await asyncio.gather(*(api.send(flow_id, token, json={"n": 5}) for _ in range(5)))
        live += [status for status, _, _ in answers]
    done = await until_over(api, job["id"])
    assert live and set(live) == {200}
    assert {k: done[k] for k in ("status", "total", "done", "succeeded", "failed", "skipped")} == {
        "status": "finished",
        "total": JOB_SIZE,
        "done": JOB_SIZE,
        "succeeded": JOB_SIZE,
        "failed": 0,
        "skipped": 0,
    }

    async def all_recorded() -> dict[str, int] | None:
        counts = await replay_counts(api.system, originals)
        return counts if all(n == 1 for n in counts.values()) else None

    await eventually(all_recorded, timeout_s=20)
    assert await replay_outcomes(api.system, originals) == {"succeeded": JOB_SIZE}
    (replay_id,) = await replays_listed(api, originals[123], 1)
    replay = await stored(api, replay_id)
    assert (replay["replay_of"], replay["input"], replay["outcome"]) == (
        originals[123],
        {"n": 123},
        "succeeded",
    )

    # The job is over: another may start.
    status, again = await post(
        api, f"/v1/flows/{flow_id}/replays", {"filter": {"outcome": "timeout"}}
    )
    assert (status, again["status"], again["total"]) == (202, "finished", 0)


async def test_cancel_stops_the_job(api: Api) -> None:
    flow_id, token = await make_flow(api, FAILING)
    originals = await send_many(api, flow_id, token, JOB_SIZE)
    await all_failed(api.system, originals)
    status, job = await post(api, f"/v1/flows/{flow_id}/replays", {"filter": {"outcome": "failed"}})
    assert status == 202, job
    await eventually(lambda: _at_least(api, job["id"], 1), timeout_s=20)
    status, cancelled = await delete(api, f"/v1/replays/{job['id']}")
    assert status == 200, cancelled
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "cancelled")
    assert cancelled["finished_at"] is not None
    await asyncio.sleep(1.5)  # the replays in flight settle; nothing new starts
    settled = await job_state(api, job["id"])
    await asyncio.sleep(1.0)
    assert await job_state(api, job["id"]) == settled
    assert settled["status"] == "cancelled"
    assert 0 < settled["done"] < JOB_SIZE
    assert settled["done"] == settled["failed"]  # the flow still fails
    counts = await replay_counts(api.system, originals)
    assert sum(counts.values()) == settled["done"]
    # Cancelled: a new job may start; cancelling twice answers the job as it is.
    status, again = await delete(api, f"/v1/replays/{job['id']}")
    assert (status, again["status"]) == (200, "cancelled")


async def _at_least(api: Api, job_id: str, done: int) -> bool | None:
    return True if (await job_state(api, job_id))["done"] >= done else None


async def test_job_resumes_after_the_debugger_is_killed(api: Api) -> None:
    system = api.system
    flow_id, token = await make_flow(api, FAILING)
    originals = await send_many(api, flow_id, token, KILLED_JOB_SIZE)
    await all_failed(api.system, originals)
    await set_template(api, flow_id, FIXED)
    status, job = await post(api, f"/v1/flows/{flow_id}/replays", {"filter": {"outcome": "failed"}})
    assert status == 202, job
    await eventually(lambda: _at_least(api, job["id"], 100), timeout_s=20)

    system.stop(system.processes["debugger"][0], signal.SIGKILL)
    system.start("debugger")
    done = await until_over(api, job["id"], timeout_s=90)
    assert {k: done[k] for k in ("status", "total", "done", "succeeded", "failed")} == {
        "status": "finished",
        "total": KILLED_JOB_SIZE,
        "done": KILLED_JOB_SIZE,
        "succeeded": KILLED_JOB_SIZE,
        "failed": 0,
    }

    async def all_recorded() -> dict[str, int] | None:
        counts = await replay_counts(system, originals)
        return counts if all(n >= 1 for n in counts.values()) else None

    counts = await eventually(all_recorded, timeout_s=20)
    await asyncio.sleep(1.0)  # anything sent twice would be stored by now
    assert counts == await replay_counts(system, originals)
    assert set(counts.values()) == {1}
    assert await replay_outcomes(system, originals) == {"succeeded": KILLED_JOB_SIZE}
