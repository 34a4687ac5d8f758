"""Waiting duplicates at the ingress (services/ingress/dedup.py): one poller per (flow,
key) asks the runner for all of them, a bound per flow, and a failed first is never
replayed. The runner's side is a scripted stand-in for `runner.claim_dedup_key` (its
real behaviour: tests/integration/test_dedup_claims.py)."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.ingress.dedup import Deduplicator
from shared.errors import RateLimited, Timeout, Unavailable
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.dedup import ClaimDedupKey, DedupClaim, StoredResult
from shared.schemas.runs import WebhookRequest


class Runner:
    """Answers claims: `pending` for `polls_until_final` waits, then `final`."""

    def __init__(self, final: DedupClaim, polls_until_final: int = 3) -> None:
        self.final = final
        self.polls_until_final = polls_until_final
        self.calls: list[ClaimDedupKey] = []

    async def call(self, _rpc: object, request: ClaimDedupKey) -> DedupClaim:
        self.calls.append(request)
        await asyncio.sleep(0)
        waits = sum(1 for call in self.calls if call.mode == "wait")
        if request.mode == "wait" and waits >= self.polls_until_final:
            return self.final
        return DedupClaim(state="pending", first_request_id="first")

    def modes(self) -> list[str]:
        return [call.mode for call in self.calls]


class Broker:
    """Takes the `duplicate` records."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, body: bytes, **_: Any) -> None:
        self.published.append(body)


def flow(timeout_s: float = 5.0, on_timeout: str = "error") -> FlowWebhookSettings:
    return FlowWebhookSettings.model_validate(
        {
            "flow_id": "flow-1",
            "workspace_id": "ws-1",
            "version": 1,
            "status": "live",
            "timeout_s": timeout_s,
            "on_timeout": on_timeout,
            "dedup": {"key": "header:Idempotency-Key", "window_s": 60},
        }
    )


def request(index: int) -> WebhookRequest:
    return WebhookRequest(
        request_id=f"dup-{index}",
        flow_id="flow-1",
        workspace_id="ws-1",
        received_at=datetime.now(UTC),
        method="POST",
        path="/v1/flow-webhook/flow-1",
        query={},
        headers={"idempotency-key": "k"},
        content_type="application/json",
        raw_body="{}",
        input={},
    )


DONE = DedupClaim(
    state="done",
    first_request_id="first",
    result=StoredResult(
        status_code=201, content_type="application/json", body='{"ok": true}', headers={"X": "1"}
    ),
)


def deduplicator(runner: Runner, max_waiting: int = 1000) -> Deduplicator:
    return Deduplicator(runner, Broker(), max_waiting)  # type: ignore[arg-type]


async def duplicate(dedup: Deduplicator, settings: FlowWebhookSettings, index: int) -> Any:
    incoming = request(index)
    claim = await dedup.claim(settings, incoming.request_id, "k")
    return await dedup.answer(settings, incoming, "k", claim, incoming.received_at)


async def test_many_waiting_duplicates_make_one_poller() -> None:
    runner = Runner(DONE)
    dedup = deduplicator(runner)
    settings = flow()
    first_wait = asyncio.create_task(duplicate(dedup, settings, 0))
    await asyncio.sleep(0.01)  # its claim answered `pending`: it polls now
    answers = await asyncio.gather(
        first_wait, *(duplicate(dedup, settings, index) for index in range(1, 200))
    )
    assert {(a.status, a.body, a.headers["Idempotent-Replayed"]) for a in answers} == {
        (201, b'{"ok": true}', "true")
    }
    assert all(answer.headers["X"] == "1" for answer in answers)
    # One claim (the first waiter's), then one poller's three reads: the other 199
    # joined it without asking the runner.
    assert runner.modes() == ["claim", "wait", "wait", "wait"]
    # Done: the next request asks the runner again.
    assert dedup._pollers == {}
    await dedup.claim(settings, "later", "k")
    assert runner.modes()[-1] == "claim"


async def test_a_released_first_is_never_replayed() -> None:
    runner = Runner(DedupClaim(state="released", first_request_id=""), polls_until_final=2)
    dedup = deduplicator(runner)
    settings = flow()
    answers = await asyncio.gather(*(duplicate(dedup, settings, index) for index in range(5)))
    for answer in answers:
        body = orjson.loads(answer.body)
        assert (answer.status, body["error"]) == (503, "unavailable")
        assert "failed" in body["message"] and "send this request again" in body["message"]
        assert body["data"]["duplicate_of"] == "first"
        assert answer.headers["Retry-After"] == "1"
        assert "Idempotent-Replayed" not in answer.headers


async def test_waiters_of_a_flow_are_bounded() -> None:
    runner = Runner(DONE, polls_until_final=10**9)
    dedup = deduplicator(runner, max_waiting=3)
    settings = flow(timeout_s=0.3)
    waiting = [asyncio.create_task(duplicate(dedup, settings, index)) for index in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(RateLimited) as refused:
        await duplicate(dedup, settings, 3)
    assert refused.value.headers() == {"Retry-After": "1"}
    assert "FLOWHOOKS_INGRESS_DEDUP_MAX_WAITING" in refused.value.message
    assert dedup.waiters_refused == 1
    # Another flow's duplicates are not counted against it.
    other = flow(timeout_s=0.3).model_copy(update={"flow_id": "flow-2"})
    other_task = asyncio.create_task(duplicate(dedup, other, 4))
    answers = await asyncio.gather(*waiting, other_task)
    # Past their timeout: 504, and the poller stops with its last waiter.
    assert {answer.status for answer in answers} == {504}
    await asyncio.sleep(0)
    assert dedup._pollers == {} and not dedup._waiting


async def test_a_waiter_past_its_timeout_leaves_the_others_waiting() -> None:
    runner = Runner(DONE, polls_until_final=4)
    dedup = deduplicator(runner)
    early = request(0)
    early.received_at = datetime.now(UTC) - timedelta(seconds=4.9)
    settings = flow(timeout_s=5.0)
    claim = await dedup.claim(settings, early.request_id, "k")
    short = asyncio.create_task(dedup.answer(settings, early, "k", claim, early.received_at))
    await asyncio.sleep(0.01)
    late = asyncio.create_task(duplicate(dedup, settings, 1))
    assert (await short).status == 504
    assert (await late).status == 201
    assert runner.modes().count("claim") == 1


async def test_accept_flows_answer_the_first_status_url_at_their_timeout() -> None:
    runner = Runner(DONE, polls_until_final=10**9)
    dedup = deduplicator(runner)
    answer = await duplicate(dedup, flow(timeout_s=0.2, on_timeout="accept"), 0)
    body = orjson.loads(answer.body)
    assert (answer.status, body["data"]["request_id"]) == (202, "first")


class LostAnswers(Runner):
    """Claims that time out (the runner may have made them); releases answered."""

    async def call(self, _rpc: object, request: ClaimDedupKey) -> DedupClaim:
        self.calls.append(request)
        if request.mode == "claim":
            raise Timeout("runner.claim_dedup_key did not answer within 5 s")
        return DedupClaim(state="released", first_request_id=request.request_id)


async def test_a_claim_whose_answer_is_lost_is_released() -> None:
    runner = LostAnswers(DONE)
    dedup = deduplicator(runner)
    with pytest.raises(Unavailable):
        await dedup.claim(flow(), "first", "k")
    await dedup.drain()
    assert [(call.mode, call.request_id) for call in runner.calls] == [
        ("claim", "first"),
        ("release", "first"),
    ]
