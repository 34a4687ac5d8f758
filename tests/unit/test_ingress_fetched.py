"""The ingress's fetches by URL (JWKS, SNS certificates): shared, bounded, kept."""

import asyncio

from services.ingress.fetched import FetchedByUrl


def fetched(
    fetch_s: float = 0.0, *, max_entries: int = 10, max_in_flight: int = 8, wait_s: float = 1.0
) -> tuple[FetchedByUrl[str], list[str]]:
    calls: list[str] = []

    async def fetch(url: str) -> str:
        calls.append(url)
        await asyncio.sleep(fetch_s)
        return f"fetched {url}"

    cache = FetchedByUrl(
        fetch,
        max_entries=max_entries,
        wait_s=wait_s,
        max_in_flight=max_in_flight,
        timed_out=lambda url: f"timed out {url}",
        busy=lambda url: f"busy {url}",
    )
    return cache, calls


async def test_concurrent_requests_share_one_fetch_and_keep_its_entry() -> None:
    cache, calls = fetched(0.05)
    answers = await asyncio.gather(*(cache.fetch("a") for _ in range(5)))
    assert answers == ["fetched a"] * 5
    assert calls == ["a"]
    assert cache.cached("a") == "fetched a"


async def test_urls_past_the_in_flight_bound_are_answered_busy_at_once() -> None:
    cache, calls = fetched(0.2, max_in_flight=2)
    answers = await asyncio.gather(*(cache.fetch(url) for url in ("a", "b", "c")))
    assert answers == ["fetched a", "fetched b", "busy c"]
    assert calls == ["a", "b"]
    assert cache.cached("c") is None  # nothing kept for the busy answer


async def test_a_waiter_past_its_wait_is_answered_and_the_fetch_goes_on() -> None:
    cache, _ = fetched(0.3, wait_s=0.05)
    assert await cache.fetch("a") == "timed out a"
    await asyncio.sleep(0.4)
    assert cache.cached("a") == "fetched a"  # shielded: kept for the next request


async def test_the_least_recently_used_url_is_dropped_past_the_bound() -> None:
    cache, _ = fetched(max_entries=2)
    for url in ("a", "b"):
        await cache.fetch(url)
    assert cache.cached("a") == "fetched a"  # a is now the most recently used
    await cache.fetch("c")
    assert cache.urls() == ["a", "c"]
