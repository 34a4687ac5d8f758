"""Outgoing HTTP to URLs that users choose, with the private-address guard: the
runner's `http` steps and the debugger's alert notices.

Requests to loopback, private, link-local (cloud metadata: 169.254.169.254), CGNAT,
multicast, reserved or unspecified addresses are refused unless the operator allows
their network (each service has its own setting: `FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS`,
`FLOWHOOKS_DEBUGGER_ALERT_ALLOW_NETWORKS`). The check runs on the addresses
a name resolves to, inside the resolver the connection then uses, so a name cannot
resolve to a public address for the check and a private one for the connection (DNS
rebinding). aiohttp never asks the resolver about IP literals
(`http://127.0.0.1/`, `http://[::ffff:127.0.0.1]/`), so those are checked before the
request; redirects are followed by hand, each hop checked the same way.

Secrets (shared/redaction.py): a redirect to another origin (host, or scheme and port,
except an upgrade from http to https) drops every secret header (`Authorization`,
`Cookie`, `X-Api-Key`, the step's other secret headers) for that hop and the ones after
it; no cookie jar is kept (cookies set for one workspace's step must not be sent by
another's); and no message of this module quotes a URL's userinfo or query. A URL that
is not a valid absolute http(s) URL (a backslash, whitespace, control characters, no
host, a bad port) is refused before any connection.
"""

import asyncio
import contextlib
import ipaddress
import socket
from typing import TYPE_CHECKING

from yarl import URL

from shared import tracing
from shared.redaction import is_secret_header, safe_url

if TYPE_CHECKING:
    import aiohttp

# aiohttp is imported where a request is made, not at the top: the runner's workers
# import this module for every flow (the http step) but most never send a request, and
# aiohttp's client costs ~0.2 s of CPU at each worker's start (its connector builds the
# default SSL contexts when imported). The resolver, which subclasses aiohttp's, lives in
# shared/guarded_resolver.py for the same reason.

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not covered by `is_private` in every Python version: carrier-grade NAT.
_EXTRA_BLOCKED = (ipaddress.ip_network("100.64.0.0/10"),)


class OutboundRefused(Exception):
    """The destination is not allowed; the message says why."""


class AddressPolicy:
    def __init__(self, allowed_networks: list[str]) -> None:
        self.allowed: list[IpNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        ]

    def check(self, host: str, address: IpAddress) -> None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
            or any(address in network for network in _EXTRA_BLOCKED)
        ):
            raise OutboundRefused(
                f"{host} is {address}, a private, loopback, link-local or reserved address;"
                " the operator has not allowed it"
            )

    def check_literal(self, url: URL) -> None:
        host = url.host or ""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        self.check(host, address)


# Characters no URL an http step may call contains (RFC 3986 has no place for them;
# WHATWG parsers read a backslash as a slash, others do not: refuse the ambiguity).
# (A space is left to yarl, which encodes it: `?q={{ name }}` with "Ada Lovelace".)
_FORBIDDEN_IN_URL = frozenset({"\\", "\x7f"} | {chr(c) for c in range(32)})


def _refuse_bad_characters(url: str) -> None:
    bad = next((c for c in url if c in _FORBIDDEN_IN_URL), None)
    if bad is not None:
        what = "a backslash" if bad == "\\" else "a control character"
        raise OutboundRefused(f"the URL {safe_url(url)} is not valid: it contains {what}")


def parse_url(url: str) -> URL:
    """`url` as an absolute http or https URL, or OutboundRefused saying what is wrong
    (without quoting its userinfo or query)."""
    shown = safe_url(url)
    _refuse_bad_characters(url)
    try:
        target = URL(url)
        host, port = target.host, target.port
    except (ValueError, TypeError) as exc:
        raise OutboundRefused(f"the URL {shown} is not valid ({type(exc).__name__})") from None
    if target.scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs are allowed, not {shown}")
    if not host:
        raise OutboundRefused(f"the URL {shown} has no host")
    if port is not None and not 0 < port < 65536:
        raise OutboundRefused(f"the URL {shown} has an invalid port")
    return target


async def check_destination(policy: AddressPolicy, url: str) -> URL:
    """Where a URL saved for later (an alert's) would go, checked now so that the user
    hears at once: `url` parsed, its host resolved and every address checked. Raises
    OutboundRefused. The check is made again at each request (the name may change)."""
    target = parse_url(url)
    policy.check_literal(target)
    try:
        ipaddress.ip_address((target.host or "").strip("[]"))
        return target
    except ValueError:
        pass  # a name: resolve it
    from shared.guarded_resolver import GuardedResolver  # lazily: see the imports

    try:
        await GuardedResolver(policy).resolve(target.host or "", target.port or 0, socket.AF_UNSPEC)
    except OSError as exc:
        raise OutboundRefused(str(exc)) from None
    return target


def same_origin(before: URL, after: URL) -> bool:
    """Whether a redirect from `before` to `after` may keep the secret headers: the
    same host, scheme and port, or the same host upgraded from http to https."""
    if (before.host or "").lower() != (after.host or "").lower():
        return False
    if (before.scheme, before.port) == (after.scheme, after.port):
        return True
    return (before.scheme, before.port, after.scheme, after.port) == ("http", 80, "https", 443)


def without_secrets(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if not is_secret_header(name)}


class OutboundHttp:
    """One aiohttp session per process, behind the address policy."""

    MAX_REDIRECTS = 5

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        # Made at the first request (aiohttp is imported then: see the imports).
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def prepared(self) -> bool:
        return self._session is not None or self._closed

    def prepare(self) -> None:
        """Import aiohttp and make the session now rather than at the first request (a
        runner worker does it outside any run's metered CPU and slices)."""
        self._the_session()

    def _the_session(self) -> "aiohttp.ClientSession":
        if self._session is None:
            if self._closed:
                raise RuntimeError("Session is closed")  # what aiohttp says after close
            import aiohttp

            from shared.guarded_resolver import GuardedResolver

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(self.policy),
                    limit=200,
                    ttl_dns_cache=None,
                    use_dns_cache=False,
                ),
                auto_decompress=True,
                # No cookie jar: the session is shared by every workspace's runs.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: bytes | None,
        timeout_s: float,
        max_response_bytes: int,
        follow_redirects: bool = True,
        connect_timeout_s: float | None = None,
        first_byte_timeout_s: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """`follow_redirects=False`: a 3xx is the answer (Standard Webhooks counts it as
        a failed delivery: the sender should fix the URL, not follow it).

        `timeout_s` bounds the whole request, answer included; `connect_timeout_s` the
        TCP (and TLS) connection; `first_byte_timeout_s` the wait for the answer's
        status and headers after the request started (connection included). The
        platform's senders (callbacks, alert notices) set the short two so that a
        destination that accepts and then stalls (a tarpit) is given up on early and
        counted by the circuit breaker (shared/delivery_guard.py); None: only the total."""
        target = parse_url(url)
        # A client span (never the path or query: a URL may hold a secret) whose context
        # the destination receives as `traceparent`.
        with tracing.span(
            method,
            kind=tracing.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": target.host or "",
                "server.port": target.port or 0,
                "url.scheme": target.scheme,
            },
        ) as span:
            if tracing.carrier():  # off too: the request's own context passes through
                headers = dict(headers)
                tracing.inject(headers)
            answer = await self._request(
                method,
                target,
                headers,
                data,
                timeout_s,
                max_response_bytes,
                follow_redirects,
                connect_timeout_s,
                first_byte_timeout_s,
            )
            if span is not None:
                span.set_attribute("http.response.status_code", answer[0])
                if answer[0] >= 500:
                    tracing.failed(span, str(answer[0]))
            return answer

    async def _request(
        self,
        method: str,
        target: URL,
        headers: dict[str, str],
        data: bytes | None,
        timeout_s: float,
        max_response_bytes: int,
        follow_redirects: bool,
        connect_timeout_s: float | None,
        first_byte_timeout_s: float | None,
    ) -> tuple[int, dict[str, str], bytes]:
        session = self._the_session()
        import aiohttp  # loaded by _the_session: see the imports

        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        for _ in range(self.MAX_REDIRECTS + 1):
            self.policy.check_literal(target)
            async with contextlib.AsyncExitStack() as stack:
                headers_due = asyncio.timeout(first_byte_timeout_s)
                try:
                    async with headers_due:
                        response = await stack.enter_async_context(
                            session.request(
                                method,
                                target,
                                headers=headers,
                                data=data,
                                allow_redirects=False,
                                timeout=timeout,
                            )
                        )
                except TimeoutError:
                    if headers_due.expired():
                        raise TimeoutError(
                            f"no answer within {first_byte_timeout_s:g} s (first byte)"
                        ) from None
                    raise
                if (
                    follow_redirects
                    and response.status in (301, 302, 303, 307, 308)
                    and "Location" in response.headers
                ):
                    _refuse_bad_characters(response.headers["Location"])
                    try:
                        location = target.join(URL(response.headers["Location"]))
                    except (ValueError, TypeError):
                        raise OutboundRefused(
                            f"{safe_url(str(target))} redirected to a URL that is not valid"
                        ) from None
                    following = parse_url(str(location))
                    if not same_origin(target, following):
                        headers = without_secrets(headers)
                    target = following
                    if response.status == 303 or (
                        response.status in (301, 302) and method == "POST"
                    ):
                        method, data = "GET", None
                        headers = {
                            name: value
                            for name, value in headers.items()
                            if name.lower() not in ("content-type", "content-length")
                        }
                    continue
                body = await response.content.read(max_response_bytes + 1)
                if len(body) > max_response_bytes:
                    raise OutboundRefused(f"the response is larger than {max_response_bytes} bytes")
                return response.status, {str(k): v for k, v in response.headers.items()}, body
        raise OutboundRefused(f"more than {self.MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def is_retryable(status: int) -> bool:
    return status == 429 or status >= 500
