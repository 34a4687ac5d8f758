"""`runner.dedup_keys` on a real PostgreSQL (services/runner/dedup.py): who is first, what
the duplicates get, and that a failed first lets go of its key without ever letting two
of its retries run."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from services.runner.app import DATABASE
from services.runner.dedup import DedupKeys, holds_key
from shared.db import open_pool
from shared.schemas.dedup import ClaimDedupKey
from shared.schemas.runs import RunResult
from shared.schemas.vocabulary import Outcome


@pytest.fixture
async def keys(database_url: str) -> AsyncIterator[DedupKeys]:
    pool = await open_pool(database_url, 20, DATABASE.schema, DATABASE.migrations)
    try:
        yield DedupKeys(pool)
    finally:
        await pool.close()


def claim(request_id: str, mode: str = "claim", lease_s: float | None = None) -> ClaimDedupKey:
    return ClaimDedupKey.model_validate(
        {
            "flow_id": "flow-1",
            "key": "evt_1",
            "request_id": request_id,
            "window_s": 3600,
            "lease_s": lease_s,
            "mode": mode,
        }
    )


def result(request_id: str, status_code: int, outcome: Outcome = "succeeded") -> RunResult:
    now = datetime.now(UTC)
    return RunResult(
        request_id=request_id,
        outcome=outcome,
        status_code=status_code,
        content_type="application/json",
        body=f'{{"status": {status_code}}}',
        headers={"X-Status": str(status_code)},
        started_at=now,
        finished_at=now,
    )


@pytest.mark.parametrize(
    ("status_code", "outcome", "held"),
    [
        (200, "succeeded", True),
        (201, "succeeded", True),
        (302, "succeeded", True),
        (400, "succeeded", True),
        (409, "succeeded", True),
        (500, "succeeded", False),  # the flow answers 5xx itself
        (503, "succeeded", False),
        (500, "failed", False),
        (404, "failed", False),  # "no such flow": nothing ran
        (504, "timeout", False),
        (504, "expired", False),
    ],
)
def test_what_holds_a_key(status_code: int, outcome: Outcome, held: bool) -> None:
    assert holds_key(result("r", status_code, outcome)) is held


async def test_a_success_and_a_client_error_are_replayed(keys: DedupKeys) -> None:
    assert (await keys.claim(claim("r1"))).state == "first"
    pending = await keys.claim(claim("r2"))
    assert (pending.state, pending.first_request_id) == ("pending", "r1")
    await keys.record("flow-1", "evt_1", result("r1", 422))
    done = await keys.claim(claim("r3"))
    assert (done.state, done.first_request_id) == ("done", "r1")
    assert done.result is not None
    assert (done.result.status_code, done.result.body) == (422, '{"status": 422}')
    assert done.result.headers == {"X-Status": "422"}
    # A waiting duplicate reads the same.
    waited = await keys.claim(claim("r2", mode="wait"))
    assert (waited.state, waited.result) == ("done", done.result)


@pytest.mark.parametrize(("status_code", "outcome"), [(500, "failed"), (503, "succeeded")])
async def test_a_failed_first_lets_go_and_the_retry_runs(
    keys: DedupKeys, status_code: int, outcome: Outcome
) -> None:
    assert (await keys.claim(claim("r1"))).state == "first"
    await keys.record("flow-1", "evt_1", result("r1", status_code, outcome))
    # A duplicate that waited for it is told so; it never gets the failure.
    waited = await keys.claim(claim("r2", mode="wait"))
    assert (waited.state, waited.result) == ("released", None)
    # Waiting never takes the key.
    assert (await keys.claim(claim("r2", mode="wait"))).state == "released"
    retry = await keys.claim(claim("r3"))
    assert (retry.state, retry.first_request_id) == ("first", "r3")
    await keys.record("flow-1", "evt_1", result("r3", 200))
    later = await keys.claim(claim("r4"))
    assert later.state == "done" and later.result is not None
    assert later.result.status_code == 200


async def test_a_waiting_duplicate_follows_the_retry_that_took_over(keys: DedupKeys) -> None:
    await keys.claim(claim("r1"))
    await keys.record("flow-1", "evt_1", result("r1", 500, "failed"))
    await keys.claim(claim("r3"))  # the retry, on another replica
    waited = await keys.claim(claim("r2", mode="wait"))
    assert (waited.state, waited.first_request_id) == ("pending", "r3")


async def test_a_late_result_of_a_first_that_lost_the_key_changes_nothing(
    keys: DedupKeys,
) -> None:
    await keys.claim(claim("r1"))
    await keys.claim(claim("r1", mode="release"))  # refused at the ingress (503)
    assert (await keys.claim(claim("r2"))).state == "first"
    # r1's message was delivered after all: neither its success nor its failure touches
    # the key r2 holds now.
    await keys.record("flow-1", "evt_1", result("r1", 200))
    await keys.record("flow-1", "evt_1", result("r1", 500, "failed"))
    state = await keys.claim(claim("r9"))
    assert (state.state, state.first_request_id) == ("pending", "r2")
    # Nor may r1 release it.
    await keys.claim(claim("r1", mode="release"))
    assert (await keys.claim(claim("r9"))).first_request_id == "r2"


async def test_after_a_release_concurrent_retries_run_once(keys: DedupKeys) -> None:
    for round_ in range(5):
        key = f"evt_{round_}"
        assert (await keys.claim(claim("first").model_copy(update={"key": key}))).state == "first"
        await keys.record("flow-1", key, result("first", 502, "failed"))
        retries = [claim(f"retry-{i}").model_copy(update={"key": key}) for i in range(30)]
        # 30 retries at once, on 20 connections: one statement still decides one first.
        answers = await asyncio.gather(*(keys.claim(retry) for retry in retries))
        firsts = [answer.first_request_id for answer in answers if answer.state == "first"]
        assert len(firsts) == 1
        others = {(a.state, a.first_request_id) for a in answers if a.state != "first"}
        assert others == {("pending", firsts[0])}
