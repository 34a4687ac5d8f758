"""shared/outbound.py beyond the runner's use of it (tests/unit/test_runner_outbound_policy.py):
the check of a URL saved for later (alerts) and not following redirects."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.outbound import AddressPolicy, OutboundHttp, OutboundRefused, check_destination

REFUSED = "a private, loopback, link-local or reserved address; the operator has not allowed it"


async def test_check_destination_refuses_private_literals_and_names() -> None:
    policy = AddressPolicy([])
    with pytest.raises(OutboundRefused, match=f"^10.0.0.1 is 10.0.0.1, {REFUSED}$"):
        await check_destination(policy, "https://10.0.0.1/hook")
    with pytest.raises(OutboundRefused, match=f"^localhost is .*, {REFUSED}$"):
        await check_destination(policy, "http://localhost:8080/hook")
    with pytest.raises(OutboundRefused, match=r"^only http and https URLs are allowed"):
        await check_destination(policy, "file:///etc/passwd")
    with pytest.raises(OutboundRefused, match=r"^cannot resolve no-such-host\.invalid"):
        await check_destination(policy, "http://no-such-host.invalid/")


async def test_check_destination_accepts_allowed_networks() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"])
    target = await check_destination(policy, "http://localhost:8080/hook?x=1")
    assert (target.host, target.port, target.path) == ("localhost", 8080, "/hook")
    assert (await check_destination(policy, "http://127.0.0.3/")).host == "127.0.0.3"


async def test_redirects_can_be_left_unfollowed() -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(text="landed")

    app = web.Application()
    app.router.add_post("/moved", moved)
    app.router.add_get("/elsewhere", elsewhere)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = OutboundHttp(AddressPolicy(["127.0.0.1/32"]))
    try:
        url = f"http://127.0.0.1:{server.port}/moved"
        status, headers, _ = await http.request(
            "POST",
            url,
            headers={},
            data=b"{}",
            timeout_s=5,
            max_response_bytes=1000,
            follow_redirects=False,
        )
        assert (status, headers["Location"]) == (302, "/elsewhere")
        status, _, body = await http.request(
            "POST", url, headers={}, data=b"{}", timeout_s=5, max_response_bytes=1000
        )
        assert (status, body) == (200, b"landed")
    finally:
        await http.close()
        await server.close()
