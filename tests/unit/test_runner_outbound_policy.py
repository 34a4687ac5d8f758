import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from shared.guarded_resolver import GuardedResolver
from shared.outbound import (
    AddressPolicy,
    OutboundHttp,
    OutboundRefused,
    parse_url,
    same_origin,
)

DEFAULT = AddressPolicy([])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
    ],
)
def test_private_addresses_refused(address: str) -> None:
    with pytest.raises(OutboundRefused, match="the operator has not allowed it"):
        DEFAULT.check("host", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    DEFAULT.check("host", ipaddress.ip_address(address))


def test_allow_list() -> None:
    policy = AddressPolicy(["127.0.0.2/32", "10.0.0.0/8"])
    policy.check("h", ipaddress.ip_address("127.0.0.2"))
    policy.check("h", ipaddress.ip_address("10.9.9.9"))
    with pytest.raises(OutboundRefused):
        policy.check("h", ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/",
        "http://[::1]:8080/",
        "http://10.0.0.1/",
    ],
)
def test_ip_literals_checked_before_any_connection(url: str) -> None:
    with pytest.raises(OutboundRefused):
        DEFAULT.check_literal(URL(url))


def test_names_are_left_to_the_resolver() -> None:
    DEFAULT.check_literal(URL("http://example.com/"))


async def test_resolver_refuses_a_name_for_loopback() -> None:
    with pytest.raises(OutboundRefused, match=r"localhost is 127\.0\.0\.1"):
        await GuardedResolver(DEFAULT).resolve("localhost", 80)


# --- URLs and redirects (issue 9) -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://a.example\\@b.example/?token=S3CRET", "contains a backslash"),
        ("https://a.example/\r\n?token=S3CRET", "contains a control character"),
        ("https://[::1/?token=S3CRET", "is not valid"),
        ("gopher://u:S3CRET@a.example/", "only http and https"),
        ("https:///path?token=S3CRET", "has no host"),
        ("https://a.example:70000/?token=S3CRET", "is not valid"),
    ],
)
def test_malformed_urls_are_refused_without_echoing_secrets(url: str, why: str) -> None:
    with pytest.raises(OutboundRefused, match=why) as refused:
        parse_url(url)
    assert "S3CRET" not in str(refused.value)


def test_valid_urls_parse() -> None:
    assert parse_url("https://a.example/p?q=a b").host == "a.example"
    assert parse_url("http://127.0.0.1:8080/").port == 8080


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [
        ("https://a.example/x", "https://a.example/y", True),
        ("https://a.example/x", "https://A.EXAMPLE/y", True),
        ("http://a.example/x", "https://a.example/y", True),  # an upgrade
        ("https://a.example/x", "http://a.example/y", False),  # a downgrade
        ("https://a.example/x", "https://a.example:8443/y", False),
        ("https://a.example/x", "https://b.example/y", False),
        ("https://a.example/x", "https://a.example.evil/y", False),
    ],
)
def test_same_origin(before: str, after: str, same: bool) -> None:
    assert same_origin(URL(before), URL(after)) is same


LOCAL = AddressPolicy(["127.0.0.0/8", "::1/128"])
SECRETS = {
    "Authorization": "Bearer S3CRET",
    "Cookie": "sid=S3CRET",
    "X-Api-Key": "S3CRET",
    "X-Shopify-Access-Token": "S3CRET",
    "X-Custom-Secret": "S3CRET",
    "X-Trace": "kept",
}


async def test_redirects_to_another_host_drop_secret_headers() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.host.split(":")[0], dict(request.headers)))
        return web.Response(text="ok", headers={"Set-Cookie": "jar=S3CRET"})

    target = web.Application()
    target.router.add_get("/land", record)
    target_server = TestServer(target, host="127.0.0.1")
    await target_server.start_server()
    port = target_server.port

    async def away(request: web.Request) -> web.Response:
        # "localhost" is another host than "127.0.0.1", though the same machine.
        raise web.HTTPFound(f"http://localhost:{port}/land")

    async def same(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{port}/land")

    start = web.Application()
    start.router.add_get("/away", away)
    start.router.add_get("/same", same)
    start_server = TestServer(start, host="127.0.0.1")
    await start_server.start_server()
    http = OutboundHttp(LOCAL)
    try:
        status, _, _ = await http.request(
            "GET",
            f"http://127.0.0.1:{start_server.port}/away",
            headers=dict(SECRETS),
            data=None,
            timeout_s=5,
            max_response_bytes=1000,
        )
        assert status == 200
        host, headers = seen[-1]
        assert host == "localhost"
        assert headers["X-Trace"] == "kept"
        assert not set(SECRETS) - {"X-Trace"} & set(headers)
        # Called directly, the target gets them all.
        await http.request(
            "GET",
            f"http://127.0.0.1:{port}/land",
            headers=dict(SECRETS),
            data=None,
            timeout_s=5,
            max_response_bytes=1000,
        )
        _, headers = seen[-1]
        assert headers["X-Api-Key"] == "S3CRET" and headers["Authorization"] == "Bearer S3CRET"
        # No cookie jar: the cookie the target set is never sent back by anyone's step.
        assert headers["Cookie"] == "sid=S3CRET"
        await http.request(
            "GET",
            f"http://127.0.0.1:{port}/land",
            headers={},
            data=None,
            timeout_s=5,
            max_response_bytes=1000,
        )
        assert "Cookie" not in seen[-1][1]
    finally:
        await http.close()
        await start_server.close()
        await target_server.close()


async def test_redirect_within_the_origin_keeps_secret_headers() -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/start":
            raise web.HTTPFound("/land")
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/start", handler)
    app.router.add_get("/land", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = OutboundHttp(LOCAL)
    try:
        await http.request(
            "GET",
            f"http://127.0.0.1:{server.port}/start",
            headers=dict(SECRETS),
            data=None,
            timeout_s=5,
            max_response_bytes=1000,
        )
        assert seen[0]["X-Api-Key"] == "S3CRET" and seen[0]["Cookie"] == "sid=S3CRET"
    finally:
        await http.close()
        await server.close()


async def test_a_redirect_to_a_malformed_location_is_refused_cleanly() -> None:
    async def handler(request: web.Request) -> web.Response:
        location = "http://evil.example\\@127.0.0.1/?token=S3CRET"
        return web.Response(status=302, headers={"Location": location})

    app = web.Application()
    app.router.add_get("/start", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = OutboundHttp(LOCAL)
    try:
        with pytest.raises(OutboundRefused, match="backslash") as refused:
            await http.request(
                "GET",
                f"http://127.0.0.1:{server.port}/start",
                headers={},
                data=None,
                timeout_s=5,
                max_response_bytes=1000,
            )
        assert "S3CRET" not in str(refused.value)
    finally:
        await http.close()
        await server.close()
