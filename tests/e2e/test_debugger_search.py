"""The debugger's search (`match=`, `header=`) with the other filters and the cursor,
ownership known as soon as the flows API answered (read-through to the runner), and the
scopes matrix of the debugger's ops tokens, over HTTP against running services."""

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import orjson
import pytest

from harness.client import Api, eventually
from harness.system import System

pytestmark = pytest.mark.e2e

MATCH_7 = quote('{"customer": {"id": 7}}')
MATCH_TEXT_7 = quote('{"customer": {"id": "7"}}')
MATCH_TAG = quote('{"tags": ["y"]}')
MATCH_9 = quote('{"customer": {"id": 9}}')


async def live_flow(api: Api, template: str = "{{ web1.n }}") -> tuple[str, str]:
    """A new flow and its webhook token, with no wait for the debugger."""
    flow = await api.create_flow(
        {
            "name": "search",
            "status": "live",
            "steps": [{"ref_id": "n", "type": "template", "template": template}],
        },
        wait_usable=False,  # nor for auth: that would give the debugger time too
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send(
    api: Api, flow_id: str, token: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> str:
    status, answer_headers, answer = await api.send(
        flow_id, token, json=body, headers=headers or {}
    )
    assert status in (200, 500), (status, answer)
    return answer_headers["X-Request-Id"]


async def ids(api: Api, flow_id: str, query: str, token: str | None = None) -> list[str]:
    status, page = await api.debugger(f"/v1/flows/{flow_id}/requests?{query}", token)
    assert status == 200, page
    return [item["id"] for item in page["items"]]


async def page(api: Api, flow_id: str, query: str) -> dict[str, Any]:
    status, body = await api.debugger(f"/v1/flows/{flow_id}/requests?{query}")
    assert status == 200, body
    return dict(body)


async def wait_stored(api: Api, flow_id: str, count: int) -> None:
    async def enough() -> bool | None:
        return True if len(await ids(api, flow_id, "limit=500")) >= count else None

    await eventually(enough, timeout_s=20)


async def flow_row(system: System, flow_id: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(system.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT workspace_id::text, version, deleted FROM debugger.flows"
            " WHERE flow_id = $1::uuid",
            flow_id,
        )
    finally:
        await conn.close()
    return dict(row) if row else None


async def runner_flow(system: System, flow_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(system.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT workspace_id::text, version FROM runner.flows WHERE id = $1::uuid", flow_id
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def test_containment_header_and_combined_filters(api: Api) -> None:
    # d = 0 fails the run (division by zero): outcomes to combine with.
    flow_id, token = await live_flow(api, "{{ 10 / web1.d }}")
    push = {"X-GitHub-Event": "push"}
    issues = {"X-GitHub-Event": "issues"}
    a = await send(api, flow_id, token, {"customer": {"id": 7, "name": "Ann"}, "d": 1}, push)
    b = await send(api, flow_id, token, {"customer": {"id": 8}, "d": 1}, push)
    c = await send(api, flow_id, token, {"customer": {"id": 7}, "d": 0, "tags": ["x", "y"]}, issues)
    d = await send(api, flow_id, token, {"customer": {"id": "7"}, "d": 1}, issues)
    await wait_stored(api, flow_id, 4)

    # Containment: a subset at every level, numbers not strings, arrays by elements.
    assert await ids(api, flow_id, f"match={MATCH_7}") == [c, a]
    assert await ids(api, flow_id, f"match={MATCH_TEXT_7}") == [d]
    assert await ids(api, flow_id, f"match={MATCH_TAG}") == [c]
    assert await ids(api, flow_id, f"match={MATCH_9}") == []
    assert await ids(api, flow_id, "match=%7B%7D") == [d, c, b, a]
    # Header: the name in any case, the value exact.
    assert await ids(api, flow_id, "header=X-GitHub-Event:push") == [b, a]
    assert await ids(api, flow_id, "header=x-github-event:%20push") == [b, a]
    assert await ids(api, flow_id, "header=X-GITHUB-EVENT:Push") == []
    assert await ids(api, flow_id, "header=Content-Type:application/json") == [d, c, b, a]
    # Combined with each other and with the existing filters.
    assert await ids(api, flow_id, f"match={MATCH_7}&header=X-GitHub-Event:issues") == [c]
    assert await ids(
        api, flow_id, "header=X-GitHub-Event:issues&header=Content-Type:application/json"
    ) == [d, c]
    assert await ids(api, flow_id, f"match={MATCH_7}&outcome=failed") == [c]
    assert await ids(api, flow_id, f"match={MATCH_7}&outcome=succeeded") == [a]
    assert await ids(api, flow_id, f"match={MATCH_7}&mode=async") == []
    status, record = await api.debugger(f"/v1/requests/{c}")
    assert status == 200
    assert record["input"] == {"customer": {"id": 7}, "d": 0, "tags": ["x", "y"]}
    assert record["headers"]["x-github-event"] == "issues"
    assert (record["outcome"], record["response"]["status_code"]) == ("failed", 500)
    since = quote(record["received_at"])
    assert await ids(api, flow_id, f"match={MATCH_7}&since={since}") == [c]
    assert await ids(api, flow_id, f"match={MATCH_7}&until={since}") == [a]

    # Invalid parameters: 400 envelopes naming the parameter.
    status, error = await api.debugger(f"/v1/flows/{flow_id}/requests?match=%7Bid%3A%207")
    assert status == 400
    assert (error["status"], error["error"], error["data"]) == (
        400,
        "bad_request",
        {"field": "match"},
    )
    assert error["message"].startswith("match must be JSON")
    status, error = await api.debugger(f"/v1/flows/{flow_id}/requests?header=X-GitHub-Event")
    assert (status, error["error"], error["data"]) == (400, "bad_request", {"field": "header"})
    assert error["message"] == "header must be Name:value, e.g. X-GitHub-Event:push"


async def test_search_pagination_is_stable_under_new_arrivals(api: Api) -> None:
    flow_id, token = await live_flow(api)
    matching = []
    for n in range(5):
        matching.append(await send(api, flow_id, token, {"n": n, "customer": {"id": 7}}))
        await send(api, flow_id, token, {"n": n, "customer": {"id": 8}})
    await wait_stored(api, flow_id, 10)
    newest_first = matching[::-1]
    first = await page(api, flow_id, f"match={MATCH_7}&limit=2")
    assert [i["id"] for i in first["items"]] == newest_first[:2]
    # New requests arrive (matching and not) while the pages are read.
    newer = [await send(api, flow_id, token, {"n": 9, "customer": {"id": 7}})]
    await send(api, flow_id, token, {"n": 9, "customer": {"id": 8}})
    await wait_stored(api, flow_id, 12)
    second = await page(api, flow_id, f"match={MATCH_7}&limit=2&cursor={first['next_cursor']}")
    assert [i["id"] for i in second["items"]] == newest_first[2:4]
    third = await page(api, flow_id, f"match={MATCH_7}&limit=2&cursor={second['next_cursor']}")
    assert [i["id"] for i in third["items"]] == newest_first[4:]
    assert third["next_cursor"] is None
    assert await ids(api, flow_id, f"match={MATCH_7}&limit=2") == [newer[0], newest_first[0]]


async def test_another_workspace_gets_404_for_the_flow(api: Api) -> None:
    flow_id, token = await live_flow(api)
    request_id = await send(api, flow_id, token, {"customer": {"id": 7}})
    await wait_stored(api, flow_id, 1)
    other = api.system.create_token("globex", "automation")
    for path in (
        f"/v1/flows/{flow_id}/requests?match={MATCH_7}",
        f"/v1/flows/{flow_id}/requests?header=Content-Type:application/json",
        f"/v1/requests/{request_id}",
    ):
        status, body = await api.debugger(path, token=other)
        assert (status, body["error"], body["message"]) == (
            404,
            "not_found",
            "no such request" if "/v1/requests/" in path else "no such flow",
        ), path
    assert await ids(api, flow_id, f"match={MATCH_7}") == [request_id]


async def test_listing_answers_right_after_creation(api: Api) -> None:
    """The flows API answered, one webhook too: the debugger answers at once, before it
    consumed the flow's `flow.changed` (it asks the runner), every time."""
    for _ in range(8):
        flow_id, token = await live_flow(api)
        status, listed = await api.debugger(f"/v1/flows/{flow_id}/requests")
        assert (status, listed) == (200, {"items": [], "next_cursor": None})
        request_id = await send(api, flow_id, token, {"n": 1})
        status, _ = await api.debugger(f"/v1/flows/{flow_id}/requests")
        assert status == 200
        status, _ = await api.debugger(f"/v1/flows/{flow_id}/stats")
        assert status == 200
        # Remembered as the runner has it (its own table, in the same database here).
        assert await flow_row(api.system, flow_id) == {
            **await runner_flow(api.system, flow_id),
            "deleted": False,
        }
        await wait_stored(api, flow_id, 1)
        assert await ids(api, flow_id, "") == [request_id]
    # A flow of another workspace, read through before its owner ever listed it: 404
    # for the other workspace, 200 for its own.
    flow_id, _ = await live_flow(api)
    other = api.system.create_token("globex", "automation")
    status, body = await api.debugger(f"/v1/flows/{flow_id}/requests", token=other)
    assert (status, body["message"]) == (404, "no such flow")
    status, _ = await api.debugger(f"/v1/flows/{flow_id}/requests")
    assert status == 200


async def test_unknown_and_deleted_flows_stay_404(api: Api) -> None:
    unknown = "6f1f7d5e-0000-4000-8000-000000000000"
    status, body = await api.debugger(f"/v1/flows/{unknown}/requests")
    assert (status, body["error"], body["message"]) == (404, "not_found", "no such flow")
    assert await flow_row(api.system, unknown) is None  # nothing remembered

    flow_id, _ = await live_flow(api)
    async with api.session.delete(
        f"{api.system.url('runner')}/v1/flows/{flow_id}",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 204

    async def tombstone() -> dict[str, Any] | None:
        row = await flow_row(api.system, flow_id)
        return row if row is not None and row["deleted"] else None

    assert (await eventually(tombstone))["version"] == 2
    status, body = await api.debugger(f"/v1/flows/{flow_id}/requests")
    assert (status, body["message"]) == (404, "no such flow")


async def create_token(api: Api, manager: str, *scopes: str) -> tuple[int, dict[str, Any]]:
    async with api.session.post(
        f"{api.system.url('auth')}/v1/access-tokens",
        json={"name": "ops", "scopes": list(scopes)},
        headers={"Authorization": f"Bearer {manager}"},
    ) as answer:
        return answer.status, dict(await answer.json())


async def status_of(api: Api, method: str, url: str, token: str | None, **kwargs: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with api.session.request(method, url, headers=headers, **kwargs) as answer:
        return answer.status


async def test_scopes_matrix(api: Api) -> None:
    manage = api.system.create_token("acme", "automation.manage")
    tokens = {"automation": api.token, "automation.manage": manage}
    # A manage token grants the debugger scopes: they open nothing it does not open.
    for scope, manager in (
        ("debugger.read", manage),
        ("debugger.replay", manage),
        ("automation.webhook_run", api.token),
    ):
        status, created = await create_token(api, manager, scope)
        assert (status, created["scopes"]) == (201, [scope]), created
        tokens[scope] = created["token"]
    # An ops token manages no tokens, so it hands out none.
    status, refused = await create_token(api, tokens["debugger.replay"], "debugger.read")
    assert (status, refused["error"]) == (403, "forbidden")

    flow_id, webhook_token = await live_flow(api)
    request_id = await send(api, flow_id, webhook_token, {"n": 1})
    await wait_stored(api, flow_id, 1)
    debugger, runner = api.system.url("debugger"), api.system.url("runner")
    ingress = api.system.url("ingress")
    reads = {
        "list": ("GET", f"{debugger}/v1/flows/{flow_id}/requests?match={MATCH_7}"),
        "detail": ("GET", f"{debugger}/v1/requests/{request_id}"),
        "stats": ("GET", f"{debugger}/v1/flows/{flow_id}/stats"),
        "stream": ("GET", f"{debugger}/v1/flows/{flow_id}/requests/stream"),
    }
    elsewhere = {
        "flows": ("GET", f"{runner}/v1/flows"),
        "flow": ("GET", f"{runner}/v1/flows/{flow_id}"),
        "webhook": ("POST", f"{ingress}/v1/flow-webhook/{flow_id}"),
        "tokens": ("GET", f"{api.system.url('auth')}/v1/access-tokens"),
        "replay": ("POST", f"{debugger}/v1/requests/{request_id}/replay"),
    }
    expected = {
        # scope: (debugger reads, flows, flow, webhook, tokens, replay)
        "automation": (200, 200, 200, 200, 200, None),
        "automation.manage": (200, 200, 200, 200, 200, None),
        "debugger.read": (200, 403, 403, 403, 403, 403),
        "debugger.replay": (200, 403, 403, 403, 403, None),
        "automation.webhook_run": (403, 403, 403, 200, 403, 403),
        "": (401, 401, 401, 401, 401, 401),
    }
    seen: dict[str, tuple[int | None, ...]] = {}
    for scope, wanted in expected.items():
        token = tokens.get(scope)
        read_statuses = set()
        for name, (method, url) in reads.items():
            if name == "stream":
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with api.session.get(url, headers=headers) as answer:
                    read_statuses.add(answer.status)  # leaves the stream at once
            else:
                read_statuses.add(await status_of(api, method, url, token))
        assert len(read_statuses) == 1, (scope, read_statuses)
        row: list[int | None] = [read_statuses.pop()]
        for name, (method, url) in elsewhere.items():
            if wanted[len(row)] is None:  # replay's own scopes: not this module's
                row.append(None)
                continue
            body = orjson.dumps({"n": 1}) if name == "webhook" else None
            row.append(await status_of(api, method, url, token, data=body))
        seen[scope] = tuple(row)
    assert seen == expected


async def test_stream_opens_right_after_creation(api: Api) -> None:
    flow_id, _ = await live_flow(api)
    url = f"{api.system.url('debugger')}/v1/flows/{flow_id}/requests/stream"
    timeout = aiohttp.ClientTimeout(total=10)
    async with api.session.get(
        url, headers={"Authorization": f"Bearer {api.token}"}, timeout=timeout
    ) as stream:
        assert stream.status == 200
        assert await asyncio.wait_for(stream.content.readline(), 5) == b": tailing\n"


async def test_runner_away_unknown_flow_is_503_known_flow_still_answers(api: Api) -> None:
    known, _ = await live_flow(api)
    status, _ = await api.debugger(f"/v1/flows/{known}/requests")
    assert status == 200  # now in debugger.flows
    system = api.system
    system.stop(system.processes["runner"][0])
    try:
        status, _ = await api.debugger(f"/v1/flows/{known}/requests")
        assert status == 200  # no question to the runner
        unknown = "6f1f7d5e-0000-4000-8000-000000000001"
        status, body = await api.debugger(f"/v1/flows/{unknown}/requests")
        assert (status, body["error"], body["message"]) == (
            503,
            "unavailable",
            "the runner did not answer",
        )
        assert await flow_row(system, unknown) is None
    finally:
        system.start("runner")
