"""The debugger's ops API and its guarantees, over HTTP against running services:
listing with filters and stable pagination, replay, the live tail, stats, retention,
workspace isolation, and nothing lost or doubled when the debugger or PostgreSQL
restarts."""

import asyncio
import glob
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System, running_system

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    # Retention keeps 8 a flow: more than any other test of the module sends to one flow
    # (pagination's 7 were trimmed to 3 before they could be listed), few enough that the
    # retention test trims quickly.
    with running_system(
        FLOWHOOKS_DEBUGGER_RETENTION_MAX_PER_FLOW="8", FLOWHOOKS_DEBUGGER_RETENTION_INTERVAL_S="0.5"
    ) as running:
        yield running


async def make_flow(api: Api, template: str = "{{ web1.n }}") -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "dbg",
            "status": "live",
            "steps": [{"ref_id": "n", "type": "template", "template": template}],
        }
    )

    async def known_to_debugger() -> bool | None:
        # The debugger learns of a flow from its flow.changed event, a moment later.
        status, _ = await api.debugger(f"/v1/flows/{flow['id']}/requests")
        return True if status == 200 else None

    await eventually(known_to_debugger)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send_n(api: Api, flow_id: str, token: str, numbers: range) -> list[str]:
    ids = []
    for n in numbers:
        status, headers, _ = await api.send(flow_id, token, json={"n": n})
        assert status in (200, 500), (status, n)
        ids.append(headers["X-Request-Id"])
    return ids


async def listed(api: Api, flow_id: str, query: str = "") -> dict[str, Any]:
    status, page = await api.debugger(f"/v1/flows/{flow_id}/requests?{query}")
    assert status == 200, page
    return dict(page)


async def wait_stored(api: Api, flow_id: str, count: int) -> None:
    async def enough() -> bool | None:
        return True if len((await listed(api, flow_id, "limit=500"))["items"]) >= count else None

    await eventually(enough, timeout_s=20)


async def db_count(system: System, flow_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(system.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, count(*) AS n FROM debugger.requests WHERE flow_id = $1::uuid GROUP BY id",
            flow_id,
        )
    finally:
        await conn.close()
    return {row["id"]: row["n"] for row in rows}


async def test_pagination_is_stable_while_requests_arrive(api: Api) -> None:
    flow_id, token = await make_flow(api)
    first = await send_n(api, flow_id, token, range(5))
    await wait_stored(api, flow_id, 5)
    page1 = await listed(api, flow_id, "limit=2")
    assert [i["id"] for i in page1["items"]] == first[::-1][:2]
    newer = await send_n(api, flow_id, token, range(5, 7))
    await wait_stored(api, flow_id, 7)
    page2 = await listed(api, flow_id, f"limit=2&cursor={page1['next_cursor']}")
    assert [i["id"] for i in page2["items"]] == first[::-1][2:4]
    page3 = await listed(api, flow_id, f"limit=2&cursor={page2['next_cursor']}")
    assert [i["id"] for i in page3["items"]] == first[::-1][4:]
    assert (await listed(api, flow_id, "limit=2"))["items"][0]["id"] == newer[-1]
    item = page1["items"][0]
    assert (item["method"], item["mode"], item["outcome"], item["status_code"]) == (
        "POST",
        "sync",
        "succeeded",
        200,
    )


async def test_filters_and_workspace_isolation(api: Api) -> None:
    flow_id, token = await make_flow(api, "{{ web1.n + web1.missing }}")
    failed = await send_n(api, flow_id, token, range(2))
    status, headers, _ = await api.send(
        flow_id, token, data=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    await wait_stored(api, flow_id, 3)
    assert {i["id"] for i in (await listed(api, flow_id, "outcome=failed"))["items"]} == set(failed)
    assert [i["id"] for i in (await listed(api, flow_id, "outcome=rejected"))["items"]] == [
        headers["X-Request-Id"]
    ]
    assert (await listed(api, flow_id, "mode=async"))["items"] == []
    status, error = await api.debugger(f"/v1/flows/{flow_id}/requests?outcome=nope")
    assert status == 400 and error["data"] == {"field": "outcome"}

    other = api.system.create_token("globex", "automation")
    for path in (
        f"/v1/flows/{flow_id}/requests",
        f"/v1/requests/{failed[0]}",
        f"/v1/flows/{flow_id}/stats",
        "/v1/flows/not-a-uuid/requests",
        "/v1/flows/00000000-0000-0000-0000-000000000000/requests",
    ):
        status, body = await api.debugger(path, token=other)
        assert status == 404, path
        assert body["error"] == "not_found"
    no_scope = api.system.create_token("acme", "automation.webhook_run")
    status, _ = await api.debugger(f"/v1/flows/{flow_id}/requests", token=no_scope)
    assert status == 403


async def test_replay_runs_the_same_input_again(api: Api) -> None:
    flow_id, token = await make_flow(api, "{{ web1.n * 10 }}")
    (original,) = await send_n(api, flow_id, token, range(4, 5))
    await wait_stored(api, flow_id, 1)
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/requests/{original}/replay",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 200
        replay = await answer.json()
    assert replay["replay_of"] == original
    assert replay["outcome"] == "succeeded"
    assert orjson.loads(replay["response"]["body"])["data"] == {"value": 40}
    await wait_stored(api, flow_id, 2)
    status, record = await api.debugger(f"/v1/requests/{replay['request_id']}")
    assert status == 200
    assert (record["replay_of"], record["input"]) == (original, {"n": 4})


async def test_live_tail_receives_new_requests(api: Api) -> None:
    flow_id, token = await make_flow(api)
    url = f"{api.system.url('debugger')}/v1/flows/{flow_id}/requests/stream"
    async with api.session.get(url, headers={"Authorization": f"Bearer {api.token}"}) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert await stream.content.readline() == b": tailing\n"
        await stream.content.readline()
        (request_id,) = await send_n(api, flow_id, token, range(7, 8))
        event = await asyncio.wait_for(stream.content.readline(), 10)
        data = await asyncio.wait_for(stream.content.readline(), 10)
    assert event == b"event: request\n"
    summary = orjson.loads(data.removeprefix(b"data: "))
    assert (summary["id"], summary["outcome"], summary["status_code"]) == (
        request_id,
        "succeeded",
        200,
    )


async def test_stats(api: Api) -> None:
    flow_id, token = await make_flow(api, "{{ 1 / web1.n }}")
    await send_n(api, flow_id, token, range(3))  # n=0 fails (division by zero)
    await wait_stored(api, flow_id, 3)
    status, stats = await api.debugger(f"/v1/flows/{flow_id}/stats?window_s=600")
    assert status == 200
    assert (stats["total"], stats["by_outcome"]) == (3, {"succeeded": 2, "failed": 1})
    assert set(stats["latency_ms"]) == {"p50", "p90", "p99"}
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]


async def test_retention_by_count_and_age(api: Api) -> None:
    flow_id, token = await make_flow(api)
    ids = await send_n(api, flow_id, token, range(11))
    small_id, small_token = await make_flow(api)
    small = await send_n(api, small_id, small_token, range(2))

    async def trimmed() -> dict[str, int] | None:
        counts = await db_count(api.system, flow_id)
        return counts if len(counts) == 8 and ids[-1] in counts else None

    kept = await eventually(trimmed, timeout_s=20)
    assert set(kept) == set(ids[3:])  # the newest eight

    async def small_stored() -> dict[str, int] | None:
        counts = await db_count(api.system, small_id)
        return counts if set(counts) == set(small) else None

    # Backdate only once the row is stored: a write after the UPDATE would undo it.
    await eventually(small_stored, timeout_s=20)
    conn = await asyncpg.connect(api.system.database_url)
    try:
        status = await conn.execute(
            "UPDATE debugger.requests SET received_at = now() - interval '31 days' WHERE id = $1",
            small[0],
        )
        assert status == "UPDATE 1"
    finally:
        await conn.close()

    async def aged() -> dict[str, int] | None:
        counts = await db_count(api.system, small_id)
        return counts if set(counts) == {small[1]} else None

    await eventually(aged, timeout_s=20)
    assert set(await db_count(api.system, flow_id)) == set(ids[3:])  # nothing else touched


async def test_debugger_down_then_back_stores_everything_once(api: Api) -> None:
    system = api.system
    flow_id, token = await make_flow(api)
    for debugger in list(system.processes["debugger"]):
        system.stop(debugger)
    try:
        ids = await send_n(api, flow_id, token, range(3))  # answers while it is down
    finally:
        system.start("debugger")

    async def all_there() -> dict[str, int] | None:
        counts = await db_count(system, flow_id)
        return counts if len(counts) == 3 else None

    assert await eventually(all_there, timeout_s=20) == dict.fromkeys(ids, 1)


def restart_postgresql() -> None:
    version = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
    )


async def test_postgresql_restart_loses_nothing(api: Api) -> None:
    system = api.system
    # Two flows of three requests each: this module's debugger keeps few a flow
    # (FLOWHOOKS_DEBUGGER_RETENTION_MAX_PER_FLOW).
    flow_before, token_before = await make_flow(api)
    flow_after, token_after = await make_flow(api)
    before = await send_n(api, flow_before, token_before, range(3))
    await asyncio.to_thread(restart_postgresql)
    after = await send_n(api, flow_after, token_after, range(3, 6))

    async def all_there() -> dict[str, int] | None:
        try:
            counts = await db_count(system, flow_before) | await db_count(system, flow_after)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        return counts if len(counts) == 6 else None

    assert await eventually(all_there, timeout_s=60) == dict.fromkeys(before + after, 1)
