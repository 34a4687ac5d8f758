"""`python -m bench.pattern`: the architecture's own ceiling, measured in the same run as the
bare-aiohttp ceiling (about 40 s).

flowhooks' hot path with none of flowhooks' work: an aiohttp ingress whose requests join
the next batch (group commit: while one batch's publish awaits its confirm, the next
gathers), one persistent message a batch to a durable queue (sync: classic, like
`flowhooks.runner.sync-runs`; async: quorum, like `flowhooks.runner.async-runs`, 200
after the confirm); a worker process that consumes batches (prefetch 4), builds a small
result an item, publishes one confirmed "finished" message a batch to a quorum queue
(the debugger's events queue) and then, for sync, one grouped reply a batch to the
ingress's exclusive reply queue, and acks; a sink process that consumes the finished
messages. No authentication, normalisation, worker pool, template, record or index.
The same wrk closed loop and the same body as the ceiling's.

What the system does beyond this pattern is what flowhooks adds; what this pattern
itself costs is the architecture's floor on the machine of the run (RabbitMQ's share
included), so issue 29's aims, ratios to the bare-aiohttp ceiling, can be held against
what the architecture reaches in the same sitting (docs/performance.md). `make bench`
measures it beside Node-RED; alone: `python -m bench.pattern [--seconds 8]`, which
writes `bench/results/pattern-<date>.json` and `.md`.

The three parts run as `python -m bench.pattern ingress PORT URL`, `... worker URL`,
`... sink URL`, each its own process on uvloop."""

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aiohttp import web

from shared.group_commit import GroupCommit

SYNC_QUEUE = "pattern.sync-runs"
ASYNC_QUEUE = "pattern.async-runs"
FINISHED_QUEUE = "pattern.finished"
QUORUM = {"x-queue-type": "quorum"}
PREFETCH = 4
ANSWER = orjson.dumps({"status": 200, "error": None, "message": "ok", "data": None})
SCHEDULED = orjson.dumps({"status": 200, "message": "scheduled"})
PROCESSES = ("pattern_ingress", "pattern_worker", "pattern_sink")


async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
    await channel.declare_queue(SYNC_QUEUE, durable=True)
    await channel.declare_queue(ASYNC_QUEUE, durable=True, arguments=QUORUM)
    await channel.declare_queue(FINISHED_QUEUE, durable=True, arguments=QUORUM)


class PatternIngress:
    """The ingress: a request joins the next batch of its kind; sync waits for its
    item's reply, async for its batch's confirm."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.items = {SYNC_QUEUE: 0, ASYNC_QUEUE: 0}
        self.messages = {SYNC_QUEUE: 0, ASYNC_QUEUE: 0}

    async def start(self, app: web.Application) -> Any:
        connection = await aio_pika.connect(self.url)
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        await replies.consume(self.on_replies, no_ack=True)
        self.reply_to = replies.name
        self.exchange = channel.default_exchange
        self.sync = GroupCommit(self.flush(SYNC_QUEUE, reply_to=self.reply_to))
        self.async_ = GroupCommit(self.flush(ASYNC_QUEUE, reply_to=None))
        yield
        await connection.close()

    def flush(self, queue: str, reply_to: str | None) -> Any:
        async def publish(items: list[bytes]) -> None:
            self.items[queue] += len(items)
            self.messages[queue] += 1
            body = b"[" + b",".join(items) + b"]"
            message = aio_pika.Message(body, delivery_mode=2, reply_to=reply_to)
            await self.exchange.publish(message, routing_key=queue, mandatory=False)

        return publish

    async def stats(self, request: web.Request) -> web.Response:
        """Messages and items published so far, by queue (items per message)."""
        return web.json_response({"items": self.items, "messages": self.messages})

    async def on_replies(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        for reply in orjson.loads(message.body):
            waiting = self.waiting.pop(reply["id"], None)
            if waiting is not None and not waiting.done():
                waiting.set_result(orjson.dumps(reply["answer"]))

    async def handle(self, request: web.Request) -> web.Response:
        item_id = next(self.ids)
        item = orjson.dumps({"id": item_id, "input": orjson.loads(await request.read())})
        if request.match_info["kind"] == "async":
            await self.async_.add(item)
            return web.Response(body=SCHEDULED, content_type="application/json")
        answered = asyncio.get_running_loop().create_future()
        self.waiting[item_id] = answered
        try:
            await self.sync.add(item)
            body = await asyncio.wait_for(answered, 30)
        finally:
            self.waiting.pop(item_id, None)
        return web.Response(body=body, content_type="application/json")


async def work(url: str) -> None:
    """The worker: a result an item, the batch's finished message confirmed, then the
    sync batch's grouped reply, then the ack."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=PREFETCH)
    await declare(channel)
    exchange = channel.default_exchange

    async def on_batch(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        items = orjson.loads(message.body)
        results = [
            {"id": item["id"], "status": 200, "answer": {"received": item["input"]}}
            for item in items
        ]
        finished = aio_pika.Message(orjson.dumps(results), delivery_mode=2)
        await exchange.publish(finished, routing_key=FINISHED_QUEUE, mandatory=False)
        if message.reply_to:
            reply = aio_pika.Message(orjson.dumps(results))
            await exchange.publish(reply, routing_key=message.reply_to, mandatory=False)
        await message.ack()

    for name in (SYNC_QUEUE, ASYNC_QUEUE):
        queue = await channel.get_queue(name)
        await queue.consume(on_batch)
    await asyncio.Future()


async def sink(url: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    await declare(channel)

    async def on_finished(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        orjson.loads(message.body)
        await message.ack()

    queue = await channel.get_queue(FINISHED_QUEUE)
    await queue.consume(on_finished)
    await asyncio.Future()


def serve(part: str, argv: list[str]) -> None:
    import uvloop

    uvloop.install()
    if part == "ingress":
        port, url = int(argv[0]), argv[1]
        ingress = PatternIngress(url)
        app = web.Application()
        app.cleanup_ctx.append(ingress.start)
        app.router.add_post("/v1/flow-webhook/{kind}", ingress.handle)
        app.router.add_get("/stats", ingress.stats)
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    elif part == "worker":
        asyncio.run(work(argv[0]))
    else:
        asyncio.run(sink(argv[0]))


@contextmanager
def running(amqp_url: str) -> Iterator[tuple[dict[str, int], str]]:
    """The pattern's three processes on `amqp_url`: their pids and the ingress's URL."""
    from bench.measure import wait_listening
    from harness.system import REPO, free_port

    port = free_port()
    commands = {
        "pattern_sink": ["sink", amqp_url],
        "pattern_worker": ["worker", amqp_url],
        "pattern_ingress": ["ingress", str(port), amqp_url],
    }
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "bench.pattern", *args], cwd=REPO)
        for name, args in commands.items()
    }
    try:
        wait_listening(port)
        yield {name: p.pid for name, p in processes.items()}, f"http://127.0.0.1:{port}"
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait()


def published(url: str) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as answer:  # noqa: S310 (loopback http)
        return dict(json.loads(answer.read()))


def measure(
    seconds: float, concurrency: int, generator: str, warmup: float
) -> dict[str, dict[str, Any]]:
    """The pattern under the closed loop, sync then async: each a load result with the
    CPU a request of its three processes and RabbitMQ's."""
    from bench.measure import SMALL_JSON, Bench, broker_pid
    from harness.infra import fresh_vhost
    from harness.system import System

    results: dict[str, dict[str, Any]] = {}
    with fresh_vhost() as amqp_url, running(amqp_url) as (pids, url):
        broker = broker_pid()
        measured = pids | ({"rabbitmq": broker} if broker is not None else {})
        bench = Bench(System("", ""), seconds, concurrency, measured, generator=generator)
        for kind, queue in (("sync", SYNC_QUEUE), ("async", ASYNC_QUEUE)):
            load = {"url": f"{url}/v1/flow-webhook/{kind}", "body": SMALL_JSON}
            bench.warm_up(load, warmup)
            before = published(url)
            result = bench.measure(f"pattern_{kind}", load)
            after = published(url)
            result.pop("ids", None)
            messages = after["messages"][queue] - before["messages"][queue]
            items = after["items"][queue] - before["items"][queue]
            result["items_per_message"] = round(items / max(1, messages), 2)
            results[kind] = result
    return results


def table(ceiling: dict[str, Any], pattern: dict[str, dict[str, Any]]) -> list[str]:
    kinds = tuple(pattern)
    lines = [
        f"ceiling {ceiling['rps']} req/s ({ceiling['generator']})",
        "",
        "| the pattern | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for key in (*PROCESSES, "rabbitmq"):
        cells = [f"{pattern[k]['cpu_ms_per_request'].get(key, 0.0):.3f}" for k in kinds]
        lines.append(f"| CPU ms a request: {key} | " + " | ".join(cells) + " |")
    totals = [
        sum(pattern[k]["cpu_ms_per_request"].get(key, 0.0) for key in (*PROCESSES, "rabbitmq"))
        for k in kinds
    ]
    lines.append("| CPU ms a request: all | " + " | ".join(f"{t:.3f}" for t in totals) + " |")
    lines.append(
        "| req/s (ratio to ceiling) | "
        + " | ".join(
            f"{pattern[k]['rps']} ({pattern[k]['rps'] / ceiling['rps']:.3f})" for k in kinds
        )
        + " |"
    )
    lines.append(
        "| items a message (each of its 2-3 hops) | "
        + " | ".join(str(pattern[k]["items_per_message"]) for k in kinds)
        + " |"
    )
    lines.append(
        "| p50 / p99 ms | "
        + " | ".join(f"{pattern[k]['p50_ms']} / {pattern[k]['p99_ms']}" for k in kinds)
        + " |"
    )
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("ingress", "worker", "sink"):
        serve(sys.argv[1], sys.argv[2:])
        return
    from bench.measure import RESULTS, default_generator, measure_ceiling

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    args = parser.parse_args()
    generator = default_generator()
    ceiling = measure_ceiling(args.seconds, args.concurrency, generator)
    pattern = measure(args.seconds, args.concurrency, generator, args.warmup)
    lines = table(ceiling, pattern)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    found = {"ceiling": ceiling, "pattern": pattern}
    (RESULTS / f"pattern-{stamp}.json").write_text(json.dumps(found, indent=2))
    (RESULTS / f"pattern-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: bench/results/pattern-{stamp}.json and .md")


if __name__ == "__main__":
    main()
