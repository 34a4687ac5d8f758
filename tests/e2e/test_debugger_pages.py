"""The debugger page's views (issue 27) in Debian's chromium, against the running
services, sharing test_debugger_ui.py's browser set-up: the flows list by name with its
sparkline, a flow's chart drawn from the series API's real numbers, the requests table
and its filters restored from a deep link, the detail's step timeline and JSON viewer
with XSS payloads inert, replay with an edited input and the side-by-side diff of the
replay against its original. Plus the series API itself (exact counts, refusals,
another workspace's flow).

`FLOWHOOKS_UI_SCREENSHOTS=docs/screenshots` (`make screenshots`) writes a picture of
each view there, at 1280 px and at 390 px."""

import asyncio
import json
import os
from typing import Any

import pytest
from playwright.async_api import Page, expect

from harness.client import Api, eventually
from harness.system import REPO, ServiceProcess
from tests.e2e import test_debugger_ui as ui_module
from tests.e2e.test_cli import cli
from tests.e2e.test_debugger_ui import IMG, SCRIPT, screenshot_on_failure

# test_debugger_ui.py's browser set-up (Debian's chromium), shared rather than copied.
browser = ui_module.browser
page = ui_module.page

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]


async def make_flow(api: Api, name: str) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": name,
            "status": "live",
            "steps": [
                {"ref_id": "ratio", "type": "template", "template": "{{ 100 / web1.n }}"},
                {"ref_id": "label", "type": "template", "template": "{{ web1.name }}"},
            ],
        }
    )

    async def known_to_debugger() -> bool | None:
        status, _ = await api.debugger(f"/v1/flows/{flow['id']}/requests")
        return True if status == 200 else None

    await eventually(known_to_debugger)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send(api: Api, flow_id: str, token: str, body: dict[str, Any], **headers: str) -> str:
    status, answer_headers, _ = await api.send(flow_id, token, json=body, headers=headers)
    assert status in (200, 500), status
    return answer_headers["X-Request-Id"]


async def stored_count(api: Api, flow_id: str, count: int) -> None:
    async def all_finished() -> bool | None:
        status, page = await api.debugger(f"/v1/flows/{flow_id}/requests?limit=50")
        finished = [i for i in page["items"] if i["outcome"] in ("succeeded", "failed")]
        return True if status == 200 and len(finished) == count else None

    await eventually(all_finished, timeout_s=20)


async def test_series_api_and_named_flows(api: Api) -> None:
    flow_id, token = await make_flow(api, "orders-series")
    for n in (1, 2, 0):  # n=0 fails (division by zero)
        await send(api, flow_id, token, {"n": n, "name": "x"})
    await stored_count(api, flow_id, 3)

    status, series = await api.debugger(f"/v1/flows/{flow_id}/stats/series?window=1h")
    assert status == 200
    assert (series["window"], series["window_s"], series["bucket_s"]) == ("1h", 3600, 60)
    assert len(series["buckets"]) == 60
    assert (series["total"], series["by_outcome"]) == (3, {"succeeded": 2, "failed": 1})
    assert set(series["latency_ms"]) == {"p50", "p95", "p99"}
    assert series["latency_sample"] == 1  # every request, below 100,000
    busy = [b for b in series["buckets"] if b["total"]]
    assert sum(b["total"] for b in busy) == 3
    assert all(b["per_minute"] == b["total"] for b in busy)  # a bucket is one minute
    status, day = await api.debugger(f"/v1/flows/{flow_id}/stats/series?window=24h")
    assert (status, day["bucket_s"], len(day["buckets"]), day["total"]) == (200, 900, 96, 3)
    status, week = await api.debugger(f"/v1/flows/{flow_id}/stats/series?window=7d")
    assert (status, week["bucket_s"], len(week["buckets"]), week["total"]) == (200, 3600, 168, 3)

    # The CLI prints the API's numbers (`flowhooks requests stats`).
    printed = cli(api.system, api.token, "requests", "stats", flow_id, "--window", "7d", "--json")
    assert printed.returncode == 0, printed.stderr
    by_cli = json.loads(printed.stdout)
    assert (by_cli["total"], by_cli["by_outcome"], by_cli["latency_ms"]) == (
        week["total"],
        week["by_outcome"],
        week["latency_ms"],
    )

    status, refused = await api.debugger(f"/v1/flows/{flow_id}/stats/series?window=30d")
    assert status == 400
    assert (refused["error"], refused["data"]) == ("bad_request", {"field": "window"})
    other = api.system.create_token("globex", "automation")
    status, _ = await api.debugger(f"/v1/flows/{flow_id}/stats/series", token=other)
    assert status == 404

    status, flows = await api.debugger("/v1/debugger/flows")
    assert status == 200
    (listed,) = [flow for flow in flows["items"] if flow["id"] == flow_id]
    assert (listed["name"], listed["status"]) == ("orders-series", "live")
    assert len(listed["sparkline"]["requests"]) == 24
    assert (sum(listed["sparkline"]["requests"]), sum(listed["sparkline"]["failures"])) == (3, 1)


async def sign_in(api: Api, page: Page, fragment: str = "") -> None:
    answer = await page.goto(f"{api.system.url('debugger')}/ui/{fragment}")
    assert answer is not None and answer.ok
    await page.fill("#token", api.token)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()


async def test_debugger_views(api: Api, page: Page) -> None:
    async with screenshot_on_failure(page, "test_debugger_views"):
        await check_views(api, page)


async def check_views(api: Api, page: Page) -> None:
    shots = os.environ.get("FLOWHOOKS_UI_SCREENSHOTS")

    async def shoot(name: str) -> None:
        if shots:
            folder = REPO / shots
            folder.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    flow_id, token = await make_flow(api, "orders " + IMG)
    quiet_id, _ = await make_flow(api, "quiet-flow")
    hostile = {"n": 4, "name": IMG + SCRIPT, "nested": {"html": IMG}}
    xss_id = await send(api, flow_id, token, hostile, **{"X-Img": IMG})
    for n in (1, 2, 5, 10, 0, 0):  # two failures
        await send(api, flow_id, token, {"n": n, "name": f"order {n}"})
    await stored_count(api, flow_id, 7)

    await sign_in(api, page)
    # The flows list: by name (a hostile one shown as text), status, sparkline; search.
    link = page.locator(f"#flows a[href='#flow={flow_id}']")
    await expect(link).to_have_text("orders " + IMG)
    item = page.locator("#flows li", has=page.locator(f"a[href='#flow={flow_id}']"))
    await expect(item.locator(".badge")).to_have_text("live")
    await expect(item.locator("svg.sparkline")).to_have_attribute(
        "aria-label", "7 requests, 2 failed in the last 24 hours"
    )
    await page.fill("#flow-search", "quiet")
    await expect(page.locator("#flows li")).to_have_count(1)
    await expect(page.locator("#flows li a")).to_have_text("quiet-flow")
    await page.fill("#flow-search", "")
    await expect(page.locator(f"#flows a[href='#flow={quiet_id}']")).to_be_visible()

    # The chart, drawn from the series API: a bar part per outcome and bucket.
    await link.click()
    await expect(page.locator("#flow-title")).to_have_text("orders " + IMG)
    chart = page.locator("#chart svg")
    await expect(chart).to_have_attribute("data-buckets", "60")
    series = (await api.debugger(f"/v1/flows/{flow_id}/stats/series?window=1h"))[1]
    drawn: dict[str, int] = {}
    for bucket in series["buckets"]:
        for outcome in bucket["by_outcome"]:
            drawn[outcome] = drawn.get(outcome, 0) + 1
    for outcome, parts in drawn.items():
        await expect(chart.locator(f"rect[data-outcome='{outcome}']")).to_have_count(parts)
    await expect(page.locator("#totals")).to_contain_text("Requests7")
    await expect(page.locator("#totals")).to_contain_text("2 (28.6 %)")
    timed = sum(1 for bucket in series["buckets"] if bucket["latency_ms"])
    for name in ("p50", "p95", "p99"):
        await expect(page.locator(f"#latency-chart g.dots.{name} circle")).to_have_count(timed)
    await expect(page.locator("#legend")).to_contain_text("failed")
    rows = page.locator("#requests tbody tr")
    await expect(rows).to_have_count(7)
    await expect(rows.first.locator(".badge")).to_have_class("badge outcome-failed")
    assert await rows.first.locator("time").get_attribute("title")
    await shoot("flow")

    # Filters go to the URL; a deep link restores them, the window and the detail.
    await page.select_option("#f-outcome", "failed")
    await page.click("#filters button[type=submit]")
    await expect(rows).to_have_count(2)
    assert "outcome=failed" in page.url
    await page.click("[data-window='24h']")
    await expect(chart).to_have_attribute("data-buckets", "96")
    deep = page.url.split("#", 1)[1] + f"&request={xss_id}"
    await page.goto("about:blank")
    await page.goto(f"{api.system.url('debugger')}/ui/#{deep}")
    await expect(page.locator("#f-outcome")).to_have_value("failed")
    await expect(page.locator("[data-window='24h']")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#chart svg")).to_have_attribute("data-buckets", "96")
    await expect(rows).to_have_count(2)

    # The detail: timeline, folding JSON, hostile values as text only.
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(page.locator("#detail-outcome")).to_have_text("succeeded")
    await expect(page.locator("#steps > li")).to_have_count(2)
    await expect(page.locator("#steps > li").first).to_contain_text("ratio")
    await expect(page.locator("#steps > li").nth(1)).to_contain_text(IMG + SCRIPT)
    await expect(page.locator("#input")).to_contain_text(IMG)
    await expect(page.locator("#headers")).to_contain_text(IMG)
    await expect(page.locator("#raw-body")).to_contain_text(SCRIPT)
    nested = page.locator("#input details.json-node details.json-node").first
    await expect(nested).to_have_attribute("open", "")
    await nested.locator("summary").first.click()
    await expect(nested).not_to_have_attribute("open", "")
    await shoot("detail")

    # Replay with an edited input: refused while not JSON, then run; then the diff.
    await page.click("#edit-replay")
    await page.fill("#replay-body", '{"n": 4, "name": ')
    await expect(page.locator("#replay-body-error")).to_contain_text("Not valid JSON")
    await expect(page.locator("#replay-edited")).to_be_disabled()
    await page.fill("#replay-body", '{"n": 50, "name": "edited"}')
    await expect(page.locator("#replay-edited")).to_be_enabled()
    await page.click("#replay-edited")
    await expect(page.locator("#replay-result")).to_be_visible()
    replay_id = (await page.locator("#replay-link").text_content() or "").strip()

    async def replay_stored() -> bool | None:
        status, _ = await api.debugger(f"/v1/requests/{replay_id}")
        return True if status == 200 else None

    await eventually(replay_stored, timeout_s=20)
    await page.click("#replay-link")
    await expect(page.locator("#compare")).to_be_visible()
    await expect(page.locator("#compare-original")).to_have_text(xss_id)
    await expect(page.locator("#diff-input .diff-table")).to_contain_text('"name": "edited"')
    changed = page.locator("#diff-input tr:not(.diff-same)")
    assert await changed.count() >= 2
    await expect(page.locator("#links")).to_contain_text("Replay of " + xss_id)
    await shoot("replay-diff")

    # Bulk replay of the failures, its progress to the end; the alert settings.
    await page.click("#flow-tools summary")
    await expect(page.locator("#alert-status")).to_have_text("No alert set.")
    await page.select_option("#bulk-outcome", "failed")
    await page.click("#bulk-form button[type=submit]")
    await expect(page.locator("#bulk-status")).to_contain_text(
        ": finished, 2 of 2 replayed (0 succeeded, 2 failed, 0 skipped)", timeout=30_000
    )
    await expect(page.locator("#bulk-progress")).to_have_attribute("value", "2")
    await page.fill("#alert-url", "http://127.0.0.1:9/hook")
    await page.fill("#alert-rate", "0.5")
    await page.fill("#alert-window", "300")
    await page.fill("#alert-min", "10")
    await page.click("#alert-form button[type=submit]")
    # Loopback is refused by the alert's address policy: the API's reason is shown.
    await expect(page.locator("#alert-status")).to_contain_text("Not saved: ")
    await shoot("flow-tools")

    # Keyboard: Escape closes the detail, and nothing hostile ever ran.
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"
    assert await page.evaluate("window.__csp") == []
    if shots:
        await page.set_viewport_size({"width": 390, "height": 844})
        # The charts are drawn again to the new width (after a short debounce).
        await page.wait_for_timeout(400)
        await shoot("narrow")


TRACE_URL = "https://jaeger.example/trace/{trace_id}?from=flowhooks"


async def runner_call(api: Api, method: str, path: str, body: Any = None) -> Any:
    async with api.session.request(
        method,
        f"{api.system.url('runner')}{path}",
        json=body,
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status in (200, 201), await answer.text()
        return await answer.json()


async def to_source(api: Api, source: dict[str, Any], body: dict[str, Any]) -> str:
    async with api.session.post(
        source["url"], json=body, headers={"Authorization": f"Bearer {source['token']}"}
    ) as answer:
        assert answer.status == 200, await answer.text()
        return answer.headers["X-Request-Id"]


async def test_source_and_waiting_views(api: Api, page: Page) -> None:
    # A second debugger beside the shared one, given a tracing UI: the page links trace
    # ids there only (started first, so that it starts while the data is made).
    traced = api.system.launch("debugger", FLOWHOOKS_DEBUGGER_TRACE_URL_TEMPLATE=TRACE_URL)
    try:
        async with screenshot_on_failure(page, "test_source_and_waiting_views"):
            await check_source_and_waiting_views(api, page, traced)
    finally:
        await asyncio.to_thread(api.system.stop, traced)


async def check_source_and_waiting_views(api: Api, page: Page, traced: ServiceProcess) -> None:
    shots = os.environ.get("FLOWHOOKS_UI_SCREENSHOTS")

    async def shoot(name: str) -> None:
        if shots:
            await page.screenshot(path=str(REPO / shots / f"{name}.png"), full_page=True)

    routed_id, _ = await make_flow(api, "routed-flow")
    delayed = await api.create_flow(
        {
            "name": "delayed-flow",
            "status": "live",
            "webhook": {"async": True},
            "steps": [{"ref_id": "later", "type": "delay", "seconds": 3600}],
        }
    )
    delayed_token = (await api.webhook_info(delayed["id"]))["token"]
    source = await runner_call(api, "POST", "/v1/sources", {"name": "hooks " + IMG})
    only_positive = {"body": {"n": {"$gt": 0}}}
    await runner_call(
        api, "PUT", f"/v1/sources/{source['id']}/routes/{routed_id}", {"filter": only_positive}
    )
    await to_source(api, source, {"n": 1})  # routed to routed-flow
    await to_source(api, source, {"n": 0})  # filtered
    status, _, _ = await api.send(delayed["id"], delayed_token, json={"n": 1})
    assert status == 200  # accepted (async)

    async def waiting() -> dict[str, Any] | None:
        _, listed = await api.debugger(f"/v1/flows/{delayed['id']}/requests?outcome=waiting")
        return listed["items"][0] if listed["items"] else None

    async def source_requests() -> list[str] | None:
        _, listed = await api.debugger(f"/v1/flows/{source['id']}/requests")
        outcomes = sorted(item["outcome"] for item in listed["items"])
        return outcomes if outcomes == ["filtered", "routed"] else None

    held = await eventually(waiting, timeout_s=20)
    assert held["resume_at"] is not None and set(held) == {
        "id",
        "flow_id",
        "received_at",
        "method",
        "mode",
        "outcome",
        "status_code",
        "duration_ms",
        "resume_at",
    }
    await eventually(source_requests, timeout_s=20)

    # The API: the runner's sources with the debugger's names and 24 h counts.
    status, sources = await api.debugger("/v1/debugger/sources")
    assert (status, sources) == (
        200,
        {
            "items": [
                {
                    "id": source["id"],
                    "name": "hooks " + IMG,
                    "url": source["url"],
                    "auth_mode": None,
                    "routes": [
                        {
                            "flow_id": routed_id,
                            "flow_name": "routed-flow",
                            "filter": only_positive,
                            "paused": False,
                        }
                    ],
                    "routed_24h": 1,
                    "filtered_24h": 1,
                }
            ],
            "more": False,
        },
    )
    other = api.system.create_token("globex", "debugger.read")
    assert await api.debugger("/v1/debugger/sources", token=other) == (
        200,
        {"items": [], "more": False},
    )

    # The page: the source in the list (its hostile name as text), its routes, requests.
    await sign_in(api, page)
    source_link = page.locator(f"#sources a[href='#source={source['id']}']")
    await expect(source_link).to_have_text("hooks " + IMG)
    await expect(page.locator("#sources li").first).to_contain_text("1 routed / 1 filtered")
    await source_link.click()
    await expect(page.locator("#source-title")).to_have_text("hooks " + IMG)
    await expect(page.locator("#source-auth")).to_have_text("bearer token")
    routes = page.locator("#routes tbody tr")
    await expect(routes).to_have_count(1)
    await expect(routes.locator("a")).to_have_text("routed-flow")
    await expect(routes.locator("a")).to_have_attribute("href", f"#flow={routed_id}")
    await expect(routes).to_contain_text("$gt: 0")  # folded JSON, as text
    await expect(page.locator("#flow-panel")).to_be_hidden()
    await shoot("sources")
    await page.click("#source-requests")
    await expect(page.locator("#flow-title")).to_have_text("Source hooks " + IMG)
    await expect(page.locator("#requests tbody tr")).to_have_count(2)
    await expect(page.locator("#source-panel")).to_be_hidden()

    # Waiting runs: the flow's requests filtered on `waiting`, each with its resume time.
    await page.goto(f"{api.system.url('debugger')}/ui/#flow={delayed['id']}")
    await page.click("#waiting-link")
    await expect(page.locator("#f-outcome")).to_have_value("waiting")
    rows = page.locator("#requests tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.locator(".badge")).to_have_text("waiting")
    resume = rows.locator(".resume time")
    await expect(resume).to_have_text("in 60 min")
    assert await resume.get_attribute("datetime") == held["resume_at"]
    await shoot("waiting")

    # The trace id: text here (no tracing UI configured)...
    await rows.locator("a").click()
    _, detail = await api.debugger(f"/v1/requests/{held['id']}")
    await expect(page.locator("#summary")).to_contain_text(detail["trace_id"])
    assert await page.locator("#trace-link").count() == 0
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"
    assert await page.evaluate("window.__csp") == []

    # ... a link on the debugger given a tracing UI (another origin: signed in again).
    await asyncio.to_thread(api.system.wait_ready, traced)
    await page.goto(f"{traced.url}/ui/#flow={delayed['id']}&request={held['id']}")
    await page.fill("#token", api.token)
    await page.click("#sign-in-form button[type=submit]")
    trace_link = page.locator("#trace-link")
    await expect(trace_link).to_have_text(detail["trace_id"])
    await expect(trace_link).to_have_attribute(
        "href", TRACE_URL.replace("{trace_id}", detail["trace_id"])
    )
    await expect(trace_link).to_have_attribute("rel", "noopener noreferrer")
    assert await page.evaluate("window.__csp") == []
