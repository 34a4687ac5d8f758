"""The flow-token key ring (FLOWHOOKS_RUNNER_TOKEN_KEYS) over real HTTP, with two ingress
replicas whose access caches are warm: adding a key keeps old tokens working and shows
new ones, `flowhooks flows rotate-all-tokens` stops every old token within a second, a
key dropped from the ring stops its tokens within a second of the runner being up, and
a previous key's end time stops its tokens then."""

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from harness.client import Api
from harness.system import REPO, System, running_system

pytestmark = pytest.mark.e2e

# The contract: a token change takes effect on every ingress replica within one second.
DEADLINE_S = 1.0

ECHO_FLOW = {
    "name": "echo",
    "status": "live",
    "webhook": {"ref_id": "web1"},
    "steps": [{"ref_id": "echo", "type": "template", "template": "ok"}],
}


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    # Starts on the former single variable (FLOWHOOKS_RUNNER_TOKEN_KEY): a ring of one.
    with running_system(FLOWHOOKS_RUNNER_WORKERS="1") as running:
        running.start("ingress")  # a second replica, with a cache of its own
        yield running


def ring_env(ring: str) -> dict[str, str]:
    # The system's environment also has the former single key: unset it.
    return {"FLOWHOOKS_RUNNER_TOKEN_KEYS": ring, "FLOWHOOKS_RUNNER_TOKEN_KEY": ""}


def restart_runner(system: System, ring: str) -> float:
    """Restart the runner with this ring; returns when it is ready (monotonic)."""
    assert system.stop(system.processes["runner"][0]) == 0
    system.start("runner", **ring_env(ring))
    return time.monotonic()


def rotate_all_tokens(system: System, ring: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "flows", "rotate-all-tokens"],
        cwd=REPO,
        env=system.env() | ring_env(ring),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def statuses(api: Api, flow_id: str, token: str) -> list[int]:
    """The answer of every ingress replica to this token."""
    codes = []
    for replica in api.system.processes["ingress"]:
        async with api.session.post(
            f"{replica.url}/v1/flow-webhook/{flow_id}",
            json={},
            headers={"Authorization": f"Bearer {token}"},
        ) as answer:
            await answer.read()
            codes.append(answer.status)
    return codes


async def settles(api: Api, flow_id: str, token: str, status: int, since: float) -> None:
    """Every replica answers `status` within the deadline counted from `since`."""
    while True:
        codes = await statuses(api, flow_id, token)
        if codes == [status] * len(codes):
            return
        elapsed = time.monotonic() - since
        assert elapsed < DEADLINE_S, f"{codes} instead of {status} after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def shown_token(api: Api, flow_id: str) -> str:
    return str((await api.webhook_info(flow_id))["token"])


async def test_key_ring_rotation(api: Api) -> None:
    system = api.system
    key_b, key_c, key_d = (secrets.token_urlsafe(32) for _ in range(3))
    key_a = system.token_key
    flow_id = (await api.create_flow(ECHO_FLOW))["id"]
    token_a = await shown_token(api, flow_id)
    assert await statuses(api, flow_id, token_a) == [200, 200]

    # A new current key, the old one kept: the API shows the new key's token, both work.
    ready = restart_runner(system, f"{key_b},{key_a}")
    token_b = await shown_token(api, flow_id)
    assert token_b != token_a
    await settles(api, flow_id, token_b, 200, since=ready)
    assert await statuses(api, flow_id, token_a) == [200, 200]

    # The command refuses a ring the runners do not run, and changes nothing.
    refused = rotate_all_tokens(system, f"{key_c},{key_b},{key_a}")
    assert refused.returncode == 1, refused.stderr
    assert "not the one the runners announced last" in refused.stderr
    assert await shown_token(api, flow_id) == token_b
    assert await statuses(api, flow_id, token_a) == [200, 200]

    # rotate-all-tokens: every token shown before is refused, the new one works.
    done = rotate_all_tokens(system, f"{key_b},{key_a}")
    assert done.returncode == 0, done.stderr
    rotated_at = time.monotonic()
    assert "every flow has a new webhook token (1 flow(s))" in done.stdout
    await settles(api, flow_id, token_a, 401, since=rotated_at)
    await settles(api, flow_id, token_b, 401, since=rotated_at)
    token_b2 = await shown_token(api, flow_id)
    assert token_b2 not in (token_a, token_b)
    await settles(api, flow_id, token_b2, 200, since=rotated_at)

    # Another key added: the rotated token (key B) still works beside key C's.
    ready = restart_runner(system, f"{key_c},{key_b}")
    token_c = await shown_token(api, flow_id)
    await settles(api, flow_id, token_c, 200, since=ready)
    assert await statuses(api, flow_id, token_b2) == [200, 200]  # the caches hold it now

    # Key B dropped (say it leaked), key C kept only for a few seconds: B's token is
    # refused within a second of the runner being up, C's until its end time.
    not_after = datetime.now(UTC) + timedelta(seconds=10)
    ready = restart_runner(system, f"{key_d},{key_c}@{not_after.isoformat()}")
    await settles(api, flow_id, token_b2, 401, since=ready)
    token_d = await shown_token(api, flow_id)
    await settles(api, flow_id, token_d, 200, since=ready)
    assert datetime.now(UTC) < not_after - timedelta(seconds=1), "the runner took too long"
    assert await statuses(api, flow_id, token_c) == [200, 200]  # cached until its end
    await asyncio.sleep((not_after - datetime.now(UTC)).total_seconds())
    await settles(api, flow_id, token_c, 401, since=time.monotonic())
    assert await statuses(api, flow_id, token_d) == [200, 200]
