"""Outgoing HTTP for `http` steps, with the private-address guard.

Requests to loopback, private, link-local (cloud metadata: 169.254.169.254), CGNAT,
multicast, reserved or unspecified addresses are refused unless the operator allows
their network (`FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS`). The check runs on the addresses
a name resolves to, inside the resolver the connection then uses, so a name cannot
resolve to a public address for the check and a private one for the connection (DNS
rebinding). aiohttp never asks the resolver about IP literals
(`http://127.0.0.1/`, `http://[::ffff:127.0.0.1]/`), so those are checked before the
request; redirects are followed by hand, each hop checked the same way.
"""

import asyncio
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

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


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses if any address is not allowed."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        results: list[ResolveResult] = []
        for family_, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            self.policy.check(host, address)
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=int(sockaddr[1]),
                    family=family_,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        return results

    async def close(self) -> None:
        return None


class OutboundHttp:
    """One aiohttp session per runner process, behind the address policy."""

    MAX_REDIRECTS = 5

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                resolver=GuardedResolver(policy), limit=200, ttl_dns_cache=None, use_dns_cache=False
            ),
            auto_decompress=True,
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: bytes | None,
        timeout_s: float,
        max_response_bytes: int,
    ) -> tuple[int, dict[str, str], bytes]:
        target = URL(url)
        for _ in range(self.MAX_REDIRECTS + 1):
            if target.scheme not in ("http", "https"):
                raise OutboundRefused(f"only http and https URLs are allowed, not {target}")
            self.policy.check_literal(target)
            async with self.session.request(
                method,
                target,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    target = target.join(URL(response.headers["Location"]))
                    if response.status == 303 or (
                        response.status in (301, 302) and method == "POST"
                    ):
                        method, data = "GET", None
                    continue
                body = await response.content.read(max_response_bytes + 1)
                if len(body) > max_response_bytes:
                    raise OutboundRefused(f"the response is larger than {max_response_bytes} bytes")
                return response.status, {str(k): v for k, v in response.headers.items()}, body
        raise OutboundRefused(f"more than {self.MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        await self.session.close()


def is_retryable(status: int) -> bool:
    return status == 429 or status >= 500
