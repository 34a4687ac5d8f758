"""Ordering and pacing of async runs (contract, "Ordering and pacing"): per-key FIFO with
a concurrency across two runner replicas, one of them SIGKILLed mid-run; a flow-wide
concurrency limit; debounce; delay and throttle (`waiting` meanwhile); a hot key beside
a cold one; a key read from a huge value.

Each flow's only step POSTs `{"key", "n"}` to this test's sink (harness/receiver.py
`ledger_sink`, on 127.0.0.6, the one network the runners' `http` steps may reach here),
which records the arrival order and the most runs in flight at once, per key and per
flow, holding each call `HOLD_S` so that overlapping runs would be seen."""

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pytest

from harness.client import Api, eventually
from harness.receiver import Ledger, ledger_sink
from harness.system import System, running_system
from shared.schemas.vocabulary import PENDING

pytestmark = pytest.mark.e2e

SINK_HOST = "127.0.0.6"
HOLD_S = 0.02
LEASE_S = 1.5


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """Its own system, with two runners: a test kills one."""
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{SINK_HOST}/32"]',
        FLOWHOOKS_RUNNER_PACED_LEASE_S=str(LEASE_S),
        FLOWHOOKS_RUNNER_PACED_POLL_S="0.1",
    ) as running:
        running.start("runner")
        yield running


@pytest.fixture
async def sink() -> AsyncIterator[Ledger]:
    async with ledger_sink(SINK_HOST, HOLD_S) as ledger:
        yield ledger


async def paced_flow(api: Api, sink: Ledger, name: str, **webhook: Any) -> tuple[str, str]:
    """An async flow whose run POSTs its input's `k` and `n` to the sink's /ledger/<name>."""
    flow = await api.create_flow(
        {
            "name": name,
            "status": "live",
            "webhook": {"ref_id": "web1", "async": True, **webhook},
            "steps": [
                {
                    "ref_id": "post",
                    "type": "http",
                    "method": "POST",
                    "url": f"{sink.base}/ledger/{name}",
                    "body": '{"key": "{{ web1.k }}", "n": {{ web1.n }},'
                    ' "hold": {{ web1.hold | default(0) }}}',
                    "retries": 0,
                }
            ],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send(api: Api, flow_id: str, token: str, body: dict[str, Any]) -> str:
    status, headers, raw = await api.send(flow_id, token, json=body)
    assert status == 200, raw
    return headers["X-Request-Id"]


async def send_in_order(api: Api, flow_id: str, token: str, key: str, count: int) -> list[str]:
    """`count` events of `key`, each sent once the previous one was accepted."""
    return [await send(api, flow_id, token, {"k": key, "n": n}) for n in range(count)]


async def outcomes(database_url: str, flow_id: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, outcome, input::text, repeated, debounced_by, received_at, started_at"
            " FROM debugger.requests WHERE flow_id = $1::uuid",
            flow_id,
        )
    finally:
        await conn.close()
    return {row["id"]: dict(row) for row in rows}


async def all_recorded(
    system: System, flow_id: str, ids: list[str], timeout_s: float = 30
) -> dict[str, dict[str, Any]]:
    """Once every one of `ids` has a final outcome."""

    async def probe() -> dict[str, dict[str, Any]] | None:
        rows = await outcomes(system.database_url, flow_id)
        done = {i: row for i, row in rows.items() if row["outcome"] not in PENDING}
        return done if set(ids) <= done.keys() else None

    return await eventually(probe, timeout_s=timeout_s)


def without_repeats(ns: list[int]) -> list[int]:
    """A run killed after it reached the sink shows twice in a row: once is its order."""
    return [n for i, n in enumerate(ns) if i == 0 or ns[i - 1] != n]


async def test_per_key_fifo_holds_across_replicas_when_one_is_killed(
    api: Api, sink: Ledger
) -> None:
    system = api.system
    keys, events = 20, 20
    flow_id, token = await paced_flow(
        api, sink, "fifo", ordering={"key": "json:/k", "concurrency": 1}
    )
    sending = asyncio.gather(
        *(send_in_order(api, flow_id, token, f"key{k}", events) for k in range(keys))
    )

    async def mid_run() -> int | None:
        seen = len(sink.entries.get("fifo", []))
        return seen if seen >= keys * events // 4 else None

    await eventually(mid_run, timeout_s=30)
    victim = system.processes["runner"][0]
    system.stop(victim, signal.SIGKILL)
    accepted = [request_id for chain in await sending for request_id in chain]
    # The other tests need one runner or more, not two: none is started again.
    rows = await all_recorded(system, flow_id, accepted, timeout_s=60)

    assert {row["outcome"] for row in rows.values()} == {"succeeded"}
    for k in range(keys):
        # Every event ran, in its key's order (a killed run again before the next one).
        assert without_repeats(sink.of_key("fifo", f"key{k}")) == list(range(events))
        assert sink.most_per_key[("fifo", f"key{k}")] == 1  # never two of a key at once
    assert len(sink.entries["fifo"]) < keys * events + 2 * keys, "repeats beyond the killed"
    repeated = [row for row in rows.values() if row["repeated"]]
    assert len(sink.entries["fifo"]) - keys * events <= len(repeated)


async def test_concurrency_limit_is_reached_and_never_passed(api: Api, sink: Ledger) -> None:
    # All queued before the first may start; each run holds the sink long enough for
    # three to overlap.
    flow_id, token = await paced_flow(api, sink, "limit", concurrency={"limit": 3}, delay_s=0.5)
    accepted = await asyncio.gather(
        *(send(api, flow_id, token, {"k": f"k{n}", "n": n, "hold": 0.4}) for n in range(9))
    )
    rows = await all_recorded(api.system, flow_id, accepted)
    assert {row["outcome"] for row in rows.values()} == {"succeeded"}
    assert sorted(entry.n for entry in sink.entries["limit"]) == list(range(9))
    assert sink.most["limit"] == 3  # waited, not refused; the limit and never more


async def test_a_hot_key_does_not_starve_another(api: Api, sink: Ledger) -> None:
    """Five of a key may run at once, one run of the flow at a time: the cold key's one
    run, sent after the hot key's backlog, goes before most of it (by arrival it
    would be last)."""
    flow_id, token = await paced_flow(
        api,
        sink,
        "hot",
        ordering={"key": "json:/k", "concurrency": 5},
        concurrency={"limit": 1},
        delay_s=0.5,  # all are queued before the first starts
    )
    hot = await asyncio.gather(
        *(send(api, flow_id, token, {"k": "hot", "n": n, "hold": 0.1}) for n in range(8))
    )
    cold = await send(api, flow_id, token, {"k": "cold", "n": 100})
    rows = await all_recorded(api.system, flow_id, [*hot, cold])
    order = [entry.key for entry in sink.entries["hot"]]
    assert order.index("cold") <= 3, order
    arrival = sorted(hot, key=lambda request_id: rows[request_id]["received_at"])
    by_arrival = [orjson.loads(rows[request_id]["input"])["n"] for request_id in arrival]
    assert sink.of_key("hot", "hot") == by_arrival  # the hot key's own order holds
    assert sink.most["hot"] == 1


async def test_debounce_runs_the_last_of_each_burst(api: Api, sink: Ledger) -> None:
    system = api.system
    flow_id, token = await paced_flow(
        api, sink, "debounce", debounce={"key": "json:/k", "period_s": 0.5, "max_wait_s": 5}
    )
    burst_a = [await send(api, flow_id, token, {"k": "a", "n": n}) for n in range(4)]
    burst_b = [await send(api, flow_id, token, {"k": "b", "n": n}) for n in range(2)]
    rows = await all_recorded(system, flow_id, [*burst_a, *burst_b])
    assert sink.of_key("debounce", "a") == [3]  # one run per burst, the last input
    assert sink.of_key("debounce", "b") == [1]
    for burst in (burst_a, burst_b):
        last = burst[-1]
        assert rows[last]["outcome"] == "succeeded"
        for request_id in burst[:-1]:
            assert (rows[request_id]["outcome"], rows[request_id]["debounced_by"]) == (
                "debounced",
                last,
            )
    status, detail = await api.debugger(f"/v1/requests/{burst_a[0]}")
    assert (status, detail["outcome"], detail["debounced_by"]) == (200, "debounced", burst_a[-1])
    async with api.session.get(
        f"{system.url('ingress')}/v1/flow-webhook/{flow_id}/runs/{burst_a[0]}",
        headers={"Authorization": f"Bearer {token}"},
    ) as answer:
        assert answer.status == 200
        assert orjson.loads(await answer.read()) == {
            "status": 200,
            "error": None,
            "message": "debounced",
            "data": {"request_id": burst_a[-1]},
        }


async def test_delayed_and_throttled_runs_wait_then_all_run(api: Api, sink: Ledger) -> None:
    system = api.system
    flow_id, token = await paced_flow(
        api,
        sink,
        "throttle",
        throttle={"key": "json:/k", "limit": 2, "period_s": 0.5},
        delay_s=1,
    )
    accepted = [await send(api, flow_id, token, {"k": "t", "n": n}) for n in range(5)]

    async def waiting() -> bool | None:
        rows = await outcomes(system.database_url, flow_id)
        return True if rows.get(accepted[0], {}).get("outcome") == "waiting" else None

    await eventually(waiting)
    async with api.session.get(
        f"{system.url('ingress')}/v1/flow-webhook/{flow_id}/runs/{accepted[0]}",
        headers={"Authorization": f"Bearer {token}"},
    ) as answer:
        assert answer.status == 202
        assert orjson.loads(await answer.read())["message"] == "waiting"
    assert sink.entries.get("throttle", []) == []  # not before its delay
    rows = await all_recorded(system, flow_id, accepted)
    assert {row["outcome"] for row in rows.values()} == {"succeeded"}  # delayed, not dropped
    # Claimed in order; two claimed together may reach the sink either way round.
    assert sorted(sink.of_key("throttle", "t")) == list(range(5))
    starts = sorted(row["started_at"] for row in rows.values())
    # At most two starts in any period: the third of a window comes a period later.
    for first, third in zip(starts, starts[2:], strict=False):
        assert (third - first).total_seconds() >= 0.45


async def test_a_key_read_from_a_huge_value_is_bounded(api: Api, sink: Ledger) -> None:
    """The key spec reads a 200 KB string: stored as its SHA-256 (as dedup keys are),
    the runs of that key still in order."""
    flow_id, token = await paced_flow(
        api, sink, "huge", ordering={"key": "json:/big", "concurrency": 1}, delay_s=0.3
    )
    big = "x" * 200_000
    accepted = [await send(api, flow_id, token, {"k": "h", "n": n, "big": big}) for n in range(3)]
    conn = await asyncpg.connect(api.system.database_url)
    try:
        keys = await conn.fetch(
            "SELECT DISTINCT order_key FROM runner.paced_runs WHERE flow_id = $1", flow_id
        )
    finally:
        await conn.close()
    assert [len(row["order_key"]) for row in keys] in ([], [71])  # "sha256:" + 64 hex
    await all_recorded(api.system, flow_id, accepted)
    assert sink.of_key("huge", "h") == [0, 1, 2]
