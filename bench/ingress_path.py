"""`python -m bench.ingress_path [--mode async] [--requests N] [--profile]`: the
ingress's own CPU per webhook request, in-process and alone on one core: the app's
middleware and the webhook handler with the real `RunnerClient`, `BatchPublisher` and
`RpcClient`, over a broker stand-in that takes every message at once and answers each
sync run (a grouped reply, as the runner sends). No HTTP parsing or socket writes (they
are aiohttp's, the same for every route), no auth (the access cache is pre-filled).

What changes on the hot path shows here in microseconds, without the noise of a shared
machine; `bench.compare` then says what it is worth in the running system."""

import argparse
import asyncio
import cProfile
import pstats
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion11
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from services.ingress.access_cache import AccessCache
from services.ingress.dedup import Deduplicator
from services.ingress.settings import IngressSettings
from services.ingress.signing import SignatureChecks
from services.ingress.webhook import WebhookHandler
from shared.bearer import hash_token
from shared.messaging.contracts import SYNC_RUNS
from shared.messaging.rpc import REPLIES, RESULT, RpcClient, reply_item
from shared.messaging.runner_client import RunnerClient
from shared.schemas.access import FlowWebhookSettings, WebhookAccess
from shared.schemas.runs import RunResult
from shared.web import OPS, Ops, envelope_middleware

BODY = b'{"kind": "myResult", "company_id": 123456, "user_id": 789123}'
TOKEN = "bench-token"
# A run's result as the runner replies it (every field, as its model dumps it).
RESULT_BODY = (
    RunResult(
        request_id="",
        outcome="succeeded",
        status_code=200,
        content_type="application/json",
        body='{"ok": true}',
        started_at=datetime(2026, 12, 7, tzinfo=UTC),
        finished_at=datetime(2026, 12, 7, 0, 0, 0, 1000, tzinfo=UTC),
    )
    .model_dump_json()
    .encode()
)


class _Message:
    """What `RpcClient._on_reply` reads of an incoming message."""

    def __init__(self, body: bytes) -> None:
        self.type = REPLIES
        self.body = body
        self.correlation_id = None
        self.content_encoding = None


class InstantBroker:
    """Takes every publish at once; a sync-runs message is answered on the next turn of
    the loop with one grouped reply holding every run's result."""

    service = "ingress"
    instance = "bench"
    may_publish_event = None

    def __init__(self) -> None:
        self.rpc: RpcClient | None = None
        self.messages = 0

    async def publish(self, body: bytes, *, routing_key: str, **_: Any) -> None:
        self.messages += 1
        if routing_key == SYNC_RUNS.queue.name and self.rpc is not None:
            ids = [item["request"]["request_id"] for item in orjson.loads(body)["items"]]
            reply = (
                b'{"items":['
                + b",".join(reply_item(request_id, RESULT, RESULT_BODY) for request_id in ids)
                + b"]}"
            )
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.rpc._on_reply(_Message(reply)))  # type: ignore[union-attr,arg-type]
            )

    async def publish_event(self, *_: Any, **__: Any) -> None:
        self.messages += 1


def build(mode: str) -> tuple[web.Application, WebhookHandler, str]:
    settings = IngressSettings(ingress_flow_rate_limit_per_s=0)
    broker: Any = InstantBroker()
    rpc = RpcClient(broker, 5.0)
    broker.rpc = rpc
    flow = FlowWebhookSettings(
        flow_id="f" * 32,
        workspace_id="w" * 32,
        version=3,
        status="live",
        is_async=mode == "async",
    )
    access = AccessCache(rpc, 1000, 3600)
    access._store((flow.flow_id, hash_token(TOKEN)), WebhookAccess(decision="allowed", flow=flow))
    handler = WebhookHandler(
        access,
        RunnerClient(broker, rpc),
        broker,
        settings,
        SignatureChecks(None, 100),
        Deduplicator(rpc, broker),
        learner=None,
    )
    app = web.Application(middlewares=[envelope_middleware])
    app[OPS] = Ops("ingress")
    app.router.add_post("/v1/flow-webhook/{flow_id}", handler.handle)
    return app, handler, flow.flow_id


HEADERS = {
    "Host": "127.0.0.1:8080",
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/json",
    "Content-Length": str(len(BODY)),
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "User-Agent": "Python/3.11 aiohttp/3.11",
}


class _Protocol:
    """What a request reads of its connection's protocol."""

    ssl_context = None
    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8080)
    _reading_paused = False

    def pause_reading(self, **_: Any) -> None: ...

    def resume_reading(self, **_: Any) -> None: ...


def request(app: web.Application, flow_id: str) -> web.Request:
    """A request as aiohttp's parser hands it over (body already received)."""
    protocol: Any = _Protocol()
    loop = asyncio.get_running_loop()
    payload = StreamReader(protocol, 2**16, loop=loop)
    payload.feed_data(BODY)
    payload.feed_eof()
    path = f"/v1/flow-webhook/{flow_id}"
    message = RawRequestMessage(
        "POST",
        path,
        HttpVersion11,
        CIMultiDictProxy(CIMultiDict(HEADERS)),
        tuple((name.encode(), value.encode()) for name, value in HEADERS.items()),
        False,
        None,
        False,
        False,
        URL.build(path=path, encoded=True),
    )
    return app._make_request(message, payload, protocol, None, None)  # type: ignore[arg-type]


async def drive(
    app: web.Application, handler: WebhookHandler, flow_id: str, total: int, concurrency: int
) -> tuple[list[int], float]:
    """The answers' statuses, and the CPU seconds spent handling them (building the
    requests left out)."""
    statuses: list[int] = []
    spent = 0.0

    async def one(received: web.Request) -> None:
        response = await app._handle(received)
        statuses.append(response.status)

    for _ in range(total // concurrency):
        received = [request(app, flow_id) for _ in range(concurrency)]
        started = time.process_time()
        await asyncio.gather(*(one(each) for each in received))
        spent += time.process_time() - started
        handler.backlog.clear()  # as the runners' reports would (async)
    return statuses, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument("--requests", type=int, default=5_000, help="a round's")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="cProfile, top 40 by own time")
    args = parser.parse_args()

    async def run() -> None:
        app, handler, flow_id = build(args.mode)
        app.freeze()
        await drive(app, handler, flow_id, 2_000, args.concurrency)  # warm-up
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        # Rounds, their best and median: on a shared machine the others' load only
        # ever adds (cache misses, preemption).
        per_request = []
        for _ in range(args.rounds):
            statuses, spent = await drive(app, handler, flow_id, args.requests, args.concurrency)
            assert set(statuses) == {200}, set(statuses)
            per_request.append(1e6 * spent / len(statuses))
        if profiler is not None:
            profiler.disable()
        per_request.sort()
        print(
            f"{args.mode}: {per_request[0]:.1f} µs CPU per request (best of {args.rounds}),"
            f" median {per_request[len(per_request) // 2]:.1f}"
        )
        handler.close()
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(70)

    uvloop.run(run())  # as the service runs (shared/web.py)


if __name__ == "__main__":
    main()
