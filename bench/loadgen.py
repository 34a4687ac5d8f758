"""Load generator, run in its own process: `python -m bench.loadgen '<json spec>'`.

Closed loop: `concurrency` workers send back to back for `seconds` (or until
`max_requests`). Open loop: `rate` requests a second are started on schedule whatever
the answers do (latency then includes queueing, as a real sender sees it). Loopback
only; bounded in time and count. Prints one JSON line: count, per-status counts,
requests a second, latency p50/p90/p99/max in ms, the request ids answered 200.
`key_count`: `%KEY%` in the body becomes `k<n mod key_count>` (n: the request's number),
for flows ordered or paced by a key read from the body."""

import asyncio
import itertools
import sys
import time
from typing import Any

import aiohttp
import orjson
import uvloop


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    url: str = spec["url"]
    assert url.startswith(("http://127.", "http://localhost")), "loopback only"
    # `bodies`: sent in turn (a share of requests that differ: bench/sources.py).
    bodies: list[bytes] = [text.encode() for text in spec.get("bodies", [spec.get("body", "{}")])]
    turn = 0
    headers = {
        "Content-Type": spec.get("content_type", "application/json"),
        **spec.get("headers", {}),
    }
    seconds = float(spec.get("seconds", 5))
    max_requests = int(spec.get("max_requests", 10_000_000))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    ids: list[str] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        key_count = int(spec.get("key_count", 0))
        numbered = itertools.count()

        async def one() -> None:
            nonlocal errors, turn
            body = bodies[turn % len(bodies)]
            turn += 1
            started = time.perf_counter()
            data = body
            if key_count:
                data = body.replace(b"%KEY%", f"k{next(numbered) % key_count}".encode())
            try:
                async with session.post(url, data=data, headers=headers) as answer:
                    await answer.read()
                    statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
                    if answer.status == 200 and spec.get("collect_ids"):
                        ids.append(answer.headers.get("X-Request-Id", ""))
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        deadline = began + seconds
        sent = 0
        if "rate" in spec:
            interval = 1 / float(spec["rate"])
            tasks = set()
            while time.perf_counter() < deadline and sent < max_requests:
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                next_at = began + sent * interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        else:

            async def worker() -> None:
                nonlocal sent
                while time.perf_counter() < deadline and sent < max_requests:
                    sent += 1
                    await one()

            await asyncio.gather(*(worker() for _ in range(int(spec.get("concurrency", 50)))))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "count": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p90_ms": round(percentile(latencies, 0.9), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "ids": ids,
    }


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    result = uvloop.run(run(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
