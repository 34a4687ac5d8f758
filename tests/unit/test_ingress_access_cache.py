"""The cache's eviction rules (pure logic; the RPC peer is a stand-in that counts)."""

from datetime import UTC, datetime, timedelta
from typing import Any

from services.ingress.access_cache import AccessCache
from shared.schemas.access import FlowAccessChanged, FlowWebhookSettings, WebhookAccess


class CountingAuth:
    def __init__(self, answer: WebhookAccess) -> None:
        self.answer = answer
        self.calls = 0
        self.on_call: Any = None

    async def call(self, *args: Any, **kwargs: Any) -> WebhookAccess:
        self.calls += 1
        if self.on_call:
            self.on_call()
        return self.answer


def allowed(expires_at: datetime | None = None) -> WebhookAccess:
    flow = FlowWebhookSettings(flow_id="f1", workspace_id="w1", version=1, status="live")
    return WebhookAccess(decision="allowed", flow=flow, expires_at=expires_at)


async def test_allowed_answers_are_cached_until_evicted() -> None:
    auth = CountingAuth(allowed())
    cache = AccessCache(auth, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    for _ in range(3):
        assert (await cache.authorize("f1", "h1")).decision == "allowed"
    assert auth.calls == 1
    cache.forget(flow_id="f1")
    await cache.authorize("f1", "h1")
    assert auth.calls == 2
    cache.forget(bearer_hash="h1")
    await cache.authorize("f1", "h1")
    assert auth.calls == 3
    cache.forget(flow_id="other", bearer_hash="other")
    await cache.authorize("f1", "h1")
    assert auth.calls == 3


async def test_a_change_of_every_flow_drops_every_answer() -> None:
    """auth's notice after the key ring changed (flow_id None): a dropped key's tokens
    may be cached for any flow."""
    auth = CountingAuth(allowed())
    cache = AccessCache(auth, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    for flow_id, bearer in (("f1", "h1"), ("f2", "h2")):
        await cache.authorize(flow_id, bearer)
    await cache._flow_access_changed(FlowAccessChanged(flow_id="f1"))
    await cache.authorize("f2", "h2")
    assert auth.calls == 2  # one flow's change keeps the other's answers
    await cache._flow_access_changed(FlowAccessChanged(flow_id=None))
    for flow_id, bearer in (("f1", "h1"), ("f2", "h2")):
        await cache.authorize(flow_id, bearer)
    assert auth.calls == 4


async def test_refusals_are_cached_until_the_flow_changes() -> None:
    auth = CountingAuth(WebhookAccess(decision="not_found"))
    cache = AccessCache(auth, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    await cache.authorize("f1", "h1")
    await cache.authorize("f1", "h1")
    assert auth.calls == 1
    # The flow is created (auth announces it): the next answer is fetched again.
    auth.answer = allowed()
    cache.forget(flow_id="f1")
    assert (await cache.authorize("f1", "h1")).decision == "allowed"
    assert auth.calls == 2


async def test_expired_token_answer_is_not_reused() -> None:
    auth = CountingAuth(allowed(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    cache = AccessCache(auth, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    await cache.authorize("f1", "h1")
    await cache.authorize("f1", "h1")
    assert auth.calls == 2


async def test_answer_racing_a_change_event_is_not_cached() -> None:
    auth = CountingAuth(allowed())
    cache = AccessCache(auth, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    auth.on_call = lambda: cache.forget(flow_id="f1")  # the event lands mid-call
    await cache.authorize("f1", "h1")
    auth.on_call = None
    await cache.authorize("f1", "h1")
    assert auth.calls == 2


async def test_size_bound_evicts_least_recently_used() -> None:
    auth = CountingAuth(allowed())
    cache = AccessCache(auth, max_entries=2, ttl_s=60)  # type: ignore[arg-type]
    await cache.authorize("f1", "a")
    await cache.authorize("f1", "b")
    await cache.authorize("f1", "a")  # a is now the most recent
    await cache.authorize("f1", "c")  # evicts b
    assert auth.calls == 3
    await cache.authorize("f1", "a")
    assert auth.calls == 3
    await cache.authorize("f1", "b")
    assert auth.calls == 4
