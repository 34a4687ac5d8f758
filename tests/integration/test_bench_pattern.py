"""bench/pattern.py, the architecture alone that `make bench` holds the aims against: its
three processes on a real broker answer sync requests with the worker's result and
async ones after the confirm, and batch what arrives together."""

import asyncio

import aiohttp
import orjson

from bench import pattern


async def send(url: str, kind: str, body: dict[str, int], count: int) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession() as session:

        async def one(index: int) -> tuple[int, bytes]:
            payload = orjson.dumps({**body, "index": index})
            async with session.post(f"{url}/v1/flow-webhook/{kind}", data=payload) as answer:
                return answer.status, await answer.read()

        return await asyncio.gather(*(one(index) for index in range(count)))


def test_the_pattern_answers_sync_with_the_worker_result_and_async_after_the_confirm(
    amqp_url: str,
) -> None:
    with pattern.running(amqp_url) as (pids, url):
        assert set(pids) == set(pattern.PROCESSES)
        before = pattern.published(url)
        sync = asyncio.run(send(url, "sync", {"company_id": 7}, 40))
        scheduled = asyncio.run(send(url, "async", {"company_id": 8}, 40))
        after = pattern.published(url)

    assert sync == [
        (200, orjson.dumps({"received": {"company_id": 7, "index": index}})) for index in range(40)
    ]
    assert scheduled == [(200, b'{"status":200,"message":"scheduled"}')] * 40
    for queue in (pattern.SYNC_QUEUE, pattern.ASYNC_QUEUE):
        assert after["items"][queue] - before["items"][queue] == 40
        # 40 requests at once: while the first batch's publish awaits its confirm, the
        # rest gather into fewer messages than requests.
        assert 1 <= after["messages"][queue] - before["messages"][queue] < 40
