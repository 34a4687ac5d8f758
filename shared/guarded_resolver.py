"""The resolver behind shared/outbound.py's address policy, on its own because it
subclasses aiohttp's: shared/outbound.py imports it (and aiohttp) only when a request
or a destination check is made, so that a runner worker whose flows send no request
never pays for aiohttp's client at start-up."""

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from shared.outbound import AddressPolicy


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
