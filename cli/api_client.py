"""A small client of flowhooks' HTTP APIs (flows on the runner, tokens on auth, requests
on the debugger) for the command line. It only speaks HTTP: the same calls a user makes
with curl, with a personal access token."""

import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import orjson
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import registry
from shared import errors

# The services whose APIs the command line calls.
Service = Literal["runner", "auth", "debugger"]


class ClientSettings(BaseSettings):
    """Where the APIs are and who calls them: FLOWHOOKS_<SERVICE>_URL, e.g.
    FLOWHOOKS_RUNNER_URL (default: the service's default port on this machine, as
    `flowhooks run` serves it), FLOWHOOKS_TOKEN or FLOWHOOKS_TOKEN_FILE."""

    model_config = SettingsConfigDict(env_prefix="FLOWHOOKS_", extra="ignore")

    # FLOWHOOKS_<SERVICE>_URL of each service that has one (read at construction, one
    # variable a service: pydantic-settings would read a dict field as one JSON variable).
    urls: dict[str, str] = Field(default_factory=dict)
    token: SecretStr | None = None
    # A file holding the token (first line): neither the process list nor the shell's
    # history shows it. One of the two, not both.
    token_file: Path | None = None
    # A sync replay waits for the run (a flow's timeout_s is at most a few minutes).
    http_timeout_s: float = Field(default=120.0, gt=0)

    def model_post_init(self, _context: Any) -> None:
        for name in registry.NAMES:
            given = os.environ.get(f"FLOWHOOKS_{name.upper()}_URL")
            if given and name not in self.urls:
                self.urls[name] = given

    def url(self, service: Service) -> str:
        base = self.urls.get(service, f"http://127.0.0.1:{registry.PORTS[service].port}")
        return base.rstrip("/")


class ApiError(Exception):
    """An answer other than 2xx, as the API's error envelope says it (or as close as the
    answer allows when it is not one: a proxy's HTML page, a refused connection)."""

    def __init__(self, status: int, kind: str, message: str, data: Any = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message
        self.data = data


def error_from_answer(status: int, body: bytes) -> ApiError:
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("error"), str):
        return ApiError(
            status, envelope["error"], str(envelope.get("message", "")), envelope.get("data")
        )
    text = body.decode(errors="replace").strip()
    return ApiError(status, f"http_{status}", text[:300] or "(no body)")


def parse_sse(lines: list[str]) -> tuple[str, str] | None:
    """One server-sent event from its lines (without the blank line that ends it):
    (event, data), or None for a comment-only block such as a heartbeat."""
    event, data = "message", []
    for line in lines:
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if not data:
        return None
    return event, "\n".join(data)


class ApiClient:
    def __init__(self, settings: ClientSettings, token: str) -> None:
        self.settings = settings
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=self.settings.http_timeout_s),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the client in `async with`"
        return self._session

    async def call(
        self,
        service: Service,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
    ) -> Any:
        """The answer's JSON (None for 204); ApiError for anything else."""
        url = self.settings.url(service) + path
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self.session.request(
                method, url, data=data, params=params, headers=headers
            ) as answer:
                raw = await answer.read()
                if answer.status >= 300:
                    raise error_from_answer(answer.status, raw)
                if answer.status == 204 or not raw:
                    return None
                return orjson.loads(raw)
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(
                0, errors.Unavailable.kind, f"cannot reach the {service} at {url}: {exc}"
            ) from None
        except TimeoutError:
            raise ApiError(
                0, errors.Timeout.kind, f"no answer from the {service} at {url}"
            ) from None

    async def events(
        self, service: Service, path: str, on_open: Callable[[], None] | None = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """A server-sent event stream as (event, parsed data), until the server ends it.
        `on_open` runs once the server has answered (it subscribes before it answers:
        whatever arrives from then on is streamed)."""
        url = self.settings.url(service) + path
        # No total timeout: a tail lasts until Ctrl-C; the server's heartbeats keep it alive.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self.session.get(
                url, timeout=timeout, headers={"Accept": "text/event-stream"}
            ) as answer:
                if answer.status >= 300:
                    raise error_from_answer(answer.status, await answer.read())
                if on_open is not None:
                    on_open()
                lines: list[str] = []
                async for raw_line in answer.content:
                    line = raw_line.decode(errors="replace").rstrip("\r\n")
                    if line:
                        lines.append(line)
                        continue
                    parsed = parse_sse(lines)
                    lines = []
                    if parsed is not None:
                        event, data = parsed
                        yield event, orjson.loads(data)
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(
                0, errors.Unavailable.kind, f"cannot reach the {service} at {url}: {exc}"
            ) from None
