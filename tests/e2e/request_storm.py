"""A hostile client in a process of its own: `python -m tests.e2e.request_storm URL TOKEN
N` sends N concurrent GETs of URL in a closed loop (the next as soon as an answer comes,
whatever it is) until its stdin closes, then prints one JSON line: the count of each
status, and up to three refusals (429) with their headers and body.

A process of its own so that handling its answers does not slow the test's own event
loop, whose timings are the victim's figures. It prints `started` once its requests
are on their way."""

import asyncio
import sys
from typing import Any

import aiohttp
import orjson


async def storm(url: str, token: str, concurrency: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    stop = asyncio.Event()
    statuses: dict[str, int] = {}
    refusals: list[tuple[dict[str, str], Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            while not stop.is_set():
                async with session.get(url, headers=headers) as answer:
                    body = await answer.read()
                status = str(answer.status)
                statuses[status] = statuses.get(status, 0) + 1
                if answer.status == 429 and len(refusals) < 3:
                    # str(): aiohttp's header names are istr, which orjson refuses.
                    named = {str(name): value for name, value in answer.headers.items()}
                    refusals.append((named, orjson.loads(body)))

        tasks = [asyncio.create_task(one()) for _ in range(concurrency)]
        print("started", flush=True)
        await stdin.read()  # until EOF
        stop.set()
        await asyncio.gather(*tasks)
    return {"statuses": statuses, "refusals": refusals}


def main() -> None:
    url, token, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(orjson.dumps(asyncio.run(storm(url, token, concurrency))).decode(), flush=True)


if __name__ == "__main__":
    main()
