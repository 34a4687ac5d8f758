"""The debugger's web page (`/ui/`) in a real browser: Playwright driving Debian's
chromium against the running services. Sign in with a token, list a flow's requests,
open one whose stored body and headers carry XSS payloads (shown as text, never run),
see a new request arrive through the live tail, replay from the detail page.

The browser: `/usr/bin/chromium`, installed with apt when it is missing and this runs as
root (Playwright's own browser download cannot work here); skipped, saying why, only
where neither is possible. A failure leaves a screenshot under `tests/artifacts/`.
`FLOWHOOKS_UI_SCREENSHOT=docs/debugger-ui.png` writes the README's picture."""

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from harness.client import Api, eventually
from harness.system import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "<script>window.__xss=2</script>"
# Playwright's waits: generous for a shared CI machine, far below the test's budget.
WAIT_MS = 15_000


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=600
    )
    assert Path(CHROMIUM).exists(), "apt-get installed chromium but not at /usr/bin/chromium"
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Per test (one browser test): async fixtures share the test's event loop."""
    executable = ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Root cannot use chromium's sandbox; the page under test is our own.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    opened.set_default_timeout(WAIT_MS)
    # Any Content-Security-Policy violation (our own page included) is recorded.
    await opened.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    try:
        yield opened
    finally:
        await context.close()


@asynccontextmanager
async def screenshot_on_failure(page: Page, name: str) -> AsyncIterator[None]:
    """What the page showed when the test failed, under tests/artifacts/ (a test
    module cannot hook pytest's reports, so the test body is wrapped instead)."""
    try:
        yield
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{name}-{int(time.time())}.png"
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
        raise


async def make_flow(api: Api) -> tuple[str, str]:
    flow = await api.create_flow(
        {
            "name": "ui",
            "status": "live",
            "steps": [{"ref_id": "echo", "type": "template", "template": "{{ web1.name }}"}],
        }
    )

    async def known_to_debugger() -> bool | None:
        status, _ = await api.debugger(f"/v1/flows/{flow['id']}/requests")
        return True if status == 200 else None

    await eventually(known_to_debugger)
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]


async def send(api: Api, flow_id: str, token: str, body: dict[str, Any], **headers: str) -> str:
    status, answer_headers, _ = await api.send(flow_id, token, json=body, headers=headers)
    assert status == 200, status
    return answer_headers["X-Request-Id"]


async def stored(api: Api, request_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        status, body = await api.debugger(f"/v1/requests/{request_id}")
        return dict(body) if status == 200 and body["outcome"] == "succeeded" else None

    return await eventually(found, timeout_s=20)


async def test_page_headers_and_flows_api(api: Api) -> None:
    base = api.system.url("debugger")
    async with api.session.get(f"{base}/ui/") as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/html")
        csp = answer.headers["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ):
            assert directive in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        html = await answer.text()
    assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP
    async with api.session.get(f"{base}/ui/static/app.js") as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/javascript")
    async with api.session.get(f"{base}/ui/static/..%2Fui.py") as answer:
        assert answer.status == 404
    async with api.session.get(f"{base}/ui", allow_redirects=False) as answer:
        assert (answer.status, answer.headers["Location"]) == (302, "/ui/")
    async with api.session.get(f"{base}/v1/debugger/flows") as answer:
        assert answer.status == 401
    flow_id, _ = await make_flow(api)
    status, flows = await api.debugger("/v1/debugger/flows")
    assert status == 200
    assert flow_id in [flow["id"] for flow in flows["items"]]
    other = api.system.create_token("globex", "automation")
    status, flows = await api.debugger("/v1/debugger/flows", token=other)
    assert status == 200
    assert flow_id not in [flow["id"] for flow in flows["items"]]


async def test_debugger_page(api: Api, page: Page) -> None:
    async with screenshot_on_failure(page, "test_debugger_page"):
        await check_debugger_page(api, page)


async def check_debugger_page(api: Api, page: Page) -> None:
    flow_id, webhook_token = await make_flow(api)
    hostile = {"name": IMG, "note": SCRIPT, "nested": {"html": IMG + SCRIPT}}
    xss_id = await send(api, flow_id, webhook_token, hostile, **{"X-Img": IMG, "X-Script": SCRIPT})
    await stored(api, xss_id)

    answer = await page.goto(f"{api.system.url('debugger')}/ui/")
    assert answer is not None and answer.ok
    await page.fill("#token", api.token)
    await page.click("#sign-in-form button[type=submit]")
    # Signed in: the token is in the tab's session storage, not in the URL.
    await page.click(f"#flows a[href='#flow={flow_id}']")
    row = page.locator(f"#requests tr[data-id='{xss_id}']")
    await expect(row).to_contain_text("succeeded")
    assert api.token not in page.url
    assert await page.evaluate("sessionStorage.length") == 1

    # The detail: every hostile value shown as text, none of it run or parsed as HTML.
    await row.locator("a").click()
    await expect(page.locator("#input")).to_contain_text(IMG)
    await expect(page.locator("#input")).to_contain_text(SCRIPT)
    await expect(page.locator("#raw-body")).to_contain_text(IMG)
    await expect(page.locator("#raw-body")).to_contain_text(SCRIPT)
    await expect(page.locator("#headers")).to_contain_text(IMG)
    await expect(page.locator("#headers")).to_contain_text(SCRIPT)
    await expect(page.locator("#steps")).to_contain_text("echo")
    await expect(page.locator("#response")).to_contain_text("status_code")
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"
    if target := os.environ.get("FLOWHOOKS_UI_SCREENSHOT"):
        await page.screenshot(path=str(REPO / target), full_page=False)

    # The live tail: a request sent while the page is open appears without a reload.
    await page.click("#tail-toggle")
    await expect(page.locator("#tail-status")).to_contain_text("Tailing")
    live_id = await send(api, flow_id, webhook_token, {"name": "live"})
    await expect(page.locator(f"#requests tr.live[data-id='{live_id}']")).to_be_visible()

    # Replay from the detail page: a new request that points at the original.
    await page.click("#replay")
    await expect(page.locator("#replay-result")).to_be_visible()
    replay_id = (await page.locator("#replay-link").text_content() or "").strip()
    assert replay_id and replay_id != xss_id
    replayed = await stored(api, replay_id)
    assert replayed["replay_of"] == xss_id
    original = await stored(api, xss_id)
    assert replay_id in original["replays"]

    assert await page.evaluate("typeof window.__xss") == "undefined"
    assert await page.evaluate("window.__csp") == []
