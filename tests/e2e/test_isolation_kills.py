"""Isolation, second round (issue 20): a worker kill hurts only the workspace that caused
it, and runner slots are shared fairly across workspaces.

Workspace B (`acme`) is well behaved: each run makes one `http` POST to a counting
endpoint, then answers. A (`evil`, and `evil2`) is hostile. For each attack, B's sync
and async webhooks, sent from before the attack until it is over, must all succeed,
each answered within 2 s, each side effect made exactly once, none recorded as
repeated. Before this round (runs of all workspaces shared worker processes): A's 16
kill-bombs at once failed 104 of 105 of B's sync runs; memory kills ran 9 of B's side
effects twice; two workspaces with hanging steps made a third's sync runs 504.
"""

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from harness.client import Api
from harness.system import System, running_system
from tests.cpu_templates import burning
from tests.e2e.test_isolation import (
    ENDPOINT_HOST,
    OTHER_HOST,
    Answer,
    Call,
    Endpoint,
    Victim,
    assert_envelope,
    assert_ran_once,
    assert_scheduled,
    assert_victims_unharmed,
    async_attacker_flow,
    attacker,
    endpoint,
    hit,
    new_flow,
    record_of,
    under_attack,
)

pytestmark = pytest.mark.e2e
__all__ = ["attacker", "endpoint"]  # fixtures, used by name

SLICE_S = 0.3
MEMORY_MB = 128
# Computes far past the slice bound without a pause: the supervisor kills its worker.
KILLED_FOR_CPU = burning(3.0, "never")
# An allocation past a 128 MiB address space that the JSON parser cannot survive: the
# worker dies (SIGSEGV) rather than raising MemoryError, as a kernel OOM kill would.
KILLED_FOR_MEMORY = "[{{ '{},' * 330000 }}{}]"
STOPPED_3_TIMES = "the run's worker process stopped 3 times while it ran"


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS=f'["{ENDPOINT_HOST}/32", "{OTHER_HOST}/32"]',
        FLOWHOOKS_RUNNER_WORKERS="2",  # up to 8 processes, 2 of them spares
        FLOWHOOKS_RUNNER_RUN_SLICE_S=str(SLICE_S),  # quick kills
        FLOWHOOKS_RUNNER_WORKER_MEMORY_MB=str(MEMORY_MB),
    ) as running:
        yield running


async def counted_victim(api: Api, endpoint: Endpoint) -> Victim:
    """B's flows: the side effect, then the answer (`test_isolation`'s bodies)."""
    effect = endpoint.side_effect_step()
    double = {"ref_id": "double", "type": "template", "template": "{{ web1.n * 2 }}"}
    triple = {"ref_id": "triple", "type": "template", "template": "{{ web1.n * 3 }}"}
    sync_id, sync_token = await new_flow(api, {"steps": [effect, double]})
    async_id, async_token = await new_flow(
        api, {"webhook": {"ref_id": "web1", "async": True}, "steps": [effect, triple]}
    )
    return Victim(api, sync_id, sync_token, async_id, async_token)


async def assert_b_unharmed(victim: Victim, endpoint: Endpoint, calls: list[Call]) -> None:
    await assert_victims_unharmed(victim, calls)  # answers, 2 s, records succeeded
    await assert_ran_once(endpoint, [call.request_id for call in calls])
    records = await asyncio.gather(*(record_of(victim.api, c.request_id) for c in calls))
    assert [r["repeated"] for r in records] == [None] * len(calls)


async def killing_attack(
    attacker: Api, endpoint: Endpoint, step: dict[str, Any], sync: int, asynchronous: int
) -> tuple[list[Answer], list[Answer]]:
    """A's runs of `step`, all at once: each kills the worker it runs on."""
    sync_id, sync_token = await new_flow(attacker, {"steps": [step]})
    async_id, async_token = await async_attacker_flow(attacker, endpoint, [step])

    async def attack() -> tuple[list[Answer], list[Answer]]:
        answers = await asyncio.gather(
            *(hit(attacker, sync_id, sync_token, json={}) for _ in range(sync)),
            *(hit(attacker, async_id, async_token, json={}) for _ in range(asynchronous)),
        )
        return list(answers[:sync]), list(answers[sync:])

    return await attack()


async def assert_a_paid(
    attacker: Api, sync: list[Answer], asynchronous: list[Answer], *blamed: str
) -> None:
    """A's runs failed: the one computing when its worker went was blamed (for one of
    the bounds `blamed`), the others beside it ran again, marked, until stopped 3 times;
    at least one was blamed and one repeated."""
    messages = []
    for answer in sync:
        assert_envelope(answer, 500, "flow_error")
        messages.append(answer.envelope["message"])

    def names_a_bound(message: str) -> bool:
        return any(bound in message for bound in blamed)

    assert all(names_a_bound(m) or m == STOPPED_3_TIMES for m in messages), messages
    assert any(names_a_bound(m) for m in messages), messages
    for answer in asynchronous:
        assert_scheduled(answer)
    records = await asyncio.gather(
        *(record_of(attacker, a.request_id) for a in sync + asynchronous)
    )
    assert {r["outcome"] for r in records} == {"failed"}
    repeated = [r["repeated"] for r in records if r["error"] == STOPPED_3_TIMES]
    assert repeated, [r["error"] for r in records]
    assert all(
        why.startswith("its worker process stopped (") and why.endswith("(attempt 3 of 3)")
        for why in repeated
    ), repeated


async def test_kill_storm_of_one_workspace_costs_another_nothing(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await counted_victim(api, endpoint)
    bomb = {"ref_id": "bomb", "type": "template", "template": KILLED_FOR_CPU}
    (sync, asynchronous), calls = await under_attack(
        victim, killing_attack(attacker, endpoint, bomb, sync=12, asynchronous=4)
    )
    await assert_b_unharmed(victim, endpoint, calls)
    await assert_a_paid(attacker, sync, asynchronous, "FLOWHOOKS_RUNNER_RUN_SLICE_S")


async def test_memory_kills_of_one_workspace_cost_another_nothing(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await counted_victim(api, endpoint)
    hog = {"ref_id": "hog", "type": "template", "template": KILLED_FOR_MEMORY}
    (sync, asynchronous), calls = await under_attack(
        victim, killing_attack(attacker, endpoint, hog, sync=8, asynchronous=4)
    )
    await assert_b_unharmed(victim, endpoint, calls)
    # A memory bomb computes while it allocates: on a loaded machine the slice bound
    # (0.3 s here) may stop it before its memory bound does. Either is A's own cost.
    await assert_a_paid(
        attacker,
        sync,
        asynchronous,
        f"a run may use at most {MEMORY_MB} MiB",
        "FLOWHOOKS_RUNNER_RUN_SLICE_S",
    )


async def test_two_workspaces_with_hanging_runs_cannot_starve_a_third(
    api: Api, attacker: Api, endpoint: Endpoint
) -> None:
    victim = await counted_victim(api, endpoint)
    other = Api(api.system, api.session, api.system.create_token("evil2", "automation"))
    hanging = {"steps": [{"ref_id": "wait", "type": "http", "url": f"{endpoint.base}/slow?s=3"}]}
    flows = [(a, *await new_flow(a, hanging)) for a in (attacker, other)]

    async def attack() -> list[Answer]:
        # 80 hanging runs: with slots shared by share (the old 16 of 32 each) they took
        # every slot. Now each holds 3 of the runner's 8 workers (16 slots each), and
        # the last 2 free ones are the reserve, for a workspace holding none: B.
        return list(
            await asyncio.gather(
                *(hit(a, flow_id, token, json={}) for a, flow_id, token in flows for _ in range(40))
            )
        )

    answers, calls = await under_attack(victim, attack())
    await assert_b_unharmed(victim, endpoint, calls)
    assert [a.status for a in answers] == [200] * 80
    assert {a.envelope["data"]["body"]["slow"] for a in answers} == {True}
