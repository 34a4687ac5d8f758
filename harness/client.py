"""A small HTTP client for the e2e tests: the calls a user makes with curl."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import asyncpg
from multidict import CIMultiDict

from harness.system import System

T = TypeVar("T")


class Api:
    def __init__(self, system: System, session: aiohttp.ClientSession, token: str) -> None:
        self.system = system
        self.session = session
        self.token = token
        # Flows created with wait_usable=False: their first `send` waits instead.
        self._not_yet_usable: dict[str, int] = {}

    def _auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def create_flow(
        self, definition: dict[str, Any], *, wait_usable: bool = True
    ) -> dict[str, Any]:
        """The new flow, once its webhook can be called (`usable`); with
        wait_usable=False at once, and its first `send` waits."""
        async with self.session.post(
            f"{self.system.url('runner')}/v1/flows", json=definition, headers=self._auth()
        ) as answer:
            body = await answer.json()
            assert answer.status == 201, body
        if wait_usable:
            await self.usable(body["id"], body["version"])
        else:
            self._not_yet_usable[body["id"]] = body["version"]
        return dict(body)

    async def usable(self, flow_id: str, version: int, timeout_s: float = 15) -> None:
        """Until auth has applied the flow at `version` (from the runner's flow.changed
        event): before that the ingress refuses the new flow's webhook (401). It takes
        milliseconds alone; seconds while two e2e modules share two cores (make test).
        Read in auth's table, as a test cannot ask that over HTTP."""
        conn = await asyncpg.connect(self.system.database_url)
        try:
            deadline = time.monotonic() + timeout_s
            while (
                await conn.fetchval(
                    "SELECT version FROM auth.flow_access WHERE flow_id = $1", uuid.UUID(flow_id)
                )
                or 0
            ) < version:
                assert time.monotonic() < deadline, (
                    f"auth did not learn of flow {flow_id} version {version} in {timeout_s} s"
                )
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    async def patch_flow(self, flow_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        async with self.session.patch(
            f"{self.system.url('runner')}/v1/flows/{flow_id}", json=patch, headers=self._auth()
        ) as answer:
            body = await answer.json()
            assert answer.status == 200, body
        # Like a creation, a change reaches the ingress through auth's copy: until auth
        # has applied it, the ingress still answers as before (the contract allows 1 s).
        await self.usable(body["id"], body["version"])
        return dict(body)

    async def webhook_info(self, flow_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.system.url('runner')}/v1/flows/{flow_id}/webhook", headers=self._auth()
        ) as answer:
            body = await answer.json()
            assert answer.status == 200, body
            return dict(body)

    async def send(
        self, flow_id: str, token: str | None, *, method: str = "POST", **kwargs: Any
    ) -> tuple[int, CIMultiDict[str], bytes]:
        if flow_id in self._not_yet_usable:
            await self.usable(flow_id, self._not_yet_usable.pop(flow_id))
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method,
            f"{self.system.url('ingress')}/v1/flow-webhook/{flow_id}",
            headers=headers,
            **kwargs,
        ) as answer:
            # Header names are case-insensitive (aiohttp sends X-Request-ID).
            return answer.status, CIMultiDict(answer.headers), await answer.read()

    async def debugger(self, path: str, token: str | None = None) -> tuple[int, Any]:
        async with self.session.get(
            f"{self.system.url('debugger')}{path}", headers=self._auth(token)
        ) as answer:
            return answer.status, await answer.json()


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout_s: float = 10.0) -> T:
    """Poll until `probe` returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


async def ok_or_failing_flow(api: Api, name: str, *, mode_async: bool = False) -> tuple[str, str]:
    """A live flow (its id and webhook token) that fails when the input says
    `"ok": false` and answers "fine" otherwise."""
    flow = await api.create_flow(
        {
            "name": name,
            "status": "live",
            "webhook": {"ref_id": "web1", "async": mode_async},
            "steps": [
                {
                    "ref_id": "check",
                    "type": "condition",
                    "if": "{{ web1.ok }}",
                    "then": [{"ref_id": "fine", "type": "template", "template": "fine"}],
                    "else": [{"ref_id": "boom", "type": "fail", "message": "not ok"}],
                }
            ],
        }
    )
    return flow["id"], (await api.webhook_info(flow["id"]))["token"]
