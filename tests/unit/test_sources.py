"""Sources' pure parts: the ingress's cache of sources (forgotten by `source.changed`),
the fan-out's none-or-all publish, and `flowhooks sources apply`."""

import asyncio
from typing import Any

import orjson
import pytest

from cli.sources import apply_source
from harness.factories import webhook_request
from services.ingress.sources import SourceCache, SourceWebhook
from shared.errors import Unavailable
from shared.messaging.runner_client import RunnerClient
from shared.schemas.runs import StartRun
from shared.schemas.sources import GetSource, SourceAccess, SourceChanged, SourceRoute


class FakeRpc:
    reply_queue = "replies"

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.routes: list[SourceRoute] = []
        self.gate: asyncio.Event | None = None

    async def call(self, rpc: Any, request: GetSource) -> SourceAccess:
        self.asked.append(request.source_id)
        if self.gate is not None:
            await self.gate.wait()
        return SourceAccess(
            source_id=request.source_id, found=True, workspace_id="w", routes=self.routes
        )


async def test_the_cache_forgets_a_source_and_the_sources_of_a_changed_flow() -> None:
    rpc = FakeRpc()
    cache = SourceCache(rpc, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    rpc.routes = [SourceRoute(flow_id="f1", flow_version=1, paused=False)]
    await cache.get("s1")
    rpc.routes = []
    await cache.get("s2")
    await cache.get("s1")
    assert rpc.asked == ["s1", "s2"]  # cached
    await cache.changed(SourceChanged(flow_id="f1"))  # s1 routes to f1, s2 does not
    await cache.get("s1")
    await cache.get("s2")
    assert rpc.asked == ["s1", "s2", "s1"]
    await cache.changed(SourceChanged(source_id="s2"))
    await cache.get("s2")
    assert rpc.asked == ["s1", "s2", "s1", "s2"]


async def test_an_answer_fetched_across_a_change_is_not_cached() -> None:
    rpc = FakeRpc()
    cache = SourceCache(rpc, max_entries=10, ttl_s=60)  # type: ignore[arg-type]
    rpc.gate = asyncio.Event()
    pending = asyncio.create_task(cache.get("s1"))
    await asyncio.sleep(0)
    await cache.changed(SourceChanged(source_id="s1"))
    rpc.gate.set()
    await pending
    await cache.get("s1")
    assert rpc.asked == ["s1", "s1"]


class RefusingBroker:
    """Takes messages and refuses the first (a nack), as RabbitMQ may."""

    instance = "ingress-1"
    may_publish_event = None

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def publish(self, body: bytes, **_: Any) -> None:
        self.messages.append(body)
        error = Unavailable("the broker did not confirm")
        error.__cause__ = RuntimeError("nack")  # refused, not unanswered: worth a split
        raise error


class Backlog:
    def __init__(self) -> None:
        self.queued: set[str] = set()

    def scheduling(self, start: StartRun, origin: str) -> Any:
        backlog = self

        class Counted:
            async def __aenter__(self) -> None:
                backlog.queued.add(start.request.request_id)

            async def __aexit__(self, kind: Any, *_: Any) -> None:
                if kind is not None:
                    backlog.queued.discard(start.request.request_id)

        return Counted()


class Webhook:
    def __init__(self) -> None:
        self.broker = RefusingBroker()
        self.runner = RunnerClient(self.broker, FakeRpc())  # type: ignore[arg-type]
        self.backlog = Backlog()
        self.record_queued = True


async def test_the_runs_of_one_request_are_published_together_or_not_at_all() -> None:
    webhook = Webhook()
    fan_out = SourceWebhook.__new__(SourceWebhook)
    fan_out.webhook = webhook  # type: ignore[assignment]
    fan_out.max_message_bytes = 1 << 20
    starts = [
        StartRun(request=webhook_request({"n": n}, request_id=f"r-{n}"), flow_version=1)
        for n in (1, 2, 3)
    ]
    with pytest.raises(Unavailable):
        await fan_out._schedule_all(starts)
    # One message for the three runs, refused, and not split (a split could queue some):
    # none is counted as queued.
    assert len(webhook.broker.messages) == 1
    assert len(orjson.loads(webhook.broker.messages[0])["items"]) == 3
    assert webhook.backlog.queued == set()


class FakeClient:
    """The runner's API as `apply` sees it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.sources: list[dict[str, Any]] = []
        self.routes: dict[str, Any] = {}

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> Any:
        body = kwargs.get("body")
        self.calls.append((method, path, body))
        if path == "/v1/flows":
            return {"items": [{"id": "f-1", "name": "pushes"}, {"id": "f-2", "name": "x"}]}
        if path == "/v1/sources" and method == "GET":
            return {"items": self.sources}
        if path == "/v1/sources" and method == "POST":
            source = {"id": "s-1", "url": "u", "version": 1, **body}
            self.sources.append(source)
            return source
        if path.endswith("/routes"):
            return {"items": [{"flow_id": k, "filter": v} for k, v in self.routes.items()]}
        if "/routes/" in path:
            flow_id = path.rsplit("/", 1)[1]
            if method == "PUT":
                self.routes[flow_id] = body["filter"]
            else:
                del self.routes[flow_id]
            return {}
        raise AssertionError(path)


async def test_sources_apply_creates_then_converges_routes() -> None:
    client = FakeClient()
    document = {
        "name": "github",
        "routes": [{"flow": "pushes", "filter": {"headers": {"x-github-event": "push"}}}],
    }
    action, source = await apply_source(client, document)  # type: ignore[arg-type]
    assert (action, source["id"], client.routes) == (
        "created",
        "s-1",
        {"f-1": {"headers": {"x-github-event": "push"}}},
    )
    client.calls.clear()
    action, _ = await apply_source(client, document)  # type: ignore[arg-type]
    assert action == "unchanged"
    assert [call[0] for call in client.calls] == ["GET", "GET", "GET"]  # nothing written
    action, _ = await apply_source(client, {"name": "github", "routes": [{"flow": "f-2"}]})  # type: ignore[arg-type]
    assert (action, client.routes) == ("updated", {"f-2": None})
