"""`http`: an outgoing HTTP request. Templated `method`, `url`, `headers` and `body`
(a body that renders to a JSON object or list is sent as JSON, anything else as text);
`timeout_s`; `retries` on connection errors, 5xx and 429 with exponential backoff; an
answer retried that carries `Retry-After` (delta-seconds or an HTTP-date) waits at least
what it asks, at most FLOWHOOKS_RUNNER_HTTP_RETRY_AFTER_MAX_S, and a wait that would
pass the run's timeout fails the step at once, naming Retry-After and the time left
(rather than the run being ended by its timeout while it sleeps).
Output `{"status", "headers", "body"}` (the body parsed when it is JSON). Private and
metadata addresses are refused (shared/outbound.py).

Every request carries `Idempotency-Key: <request id>:<ref_id>` (`:<i>.<j>...`, the loop
indexes, for a step inside loops), unless the flow sets that header itself: the same on
every attempt and retry of the step and on every run of the same request (a run repeated
after its worker or runner died), different for each step and loop iteration, so the
receiving API can drop a repeat. The step's fields render as one unit: one render budget
for all of them, with a pause before each, so that many header templates cannot make
one slice that holds the worker past its bound.

Secrets (shared/redaction.py, the list the debugger uses too): secret header values and
secret query parameters of the URL are redacted in the step trace and in the output's
response headers; an error message names the URL by scheme, host, port and path only
(never its userinfo or query), and exception texts are scrubbed the same way; a URL
that is not valid is a clean step failure."""

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from pydantic import Field

from services.runner.steps.base import RunContext, StepModel, StepType
from services.runner.templates import TemplateFailure, parse_if_json
from shared.outbound import OutboundRefused, is_retryable
from shared.redaction import (
    REDACTED,
    SECRET_HEADERS,
    is_secret_header,
    redact_headers,
    redact_url_text,
    safe_url,
    scrub_urls,
)
from shared.retry import RetryPolicy, parse_retry_after, retry_after_wait_s

__all__ = ["HTTP", "IDEMPOTENCY_KEY", "REDACTED", "SECRET_HEADERS", "HttpStep", "redact"]

log = structlog.get_logger(__name__)

IDEMPOTENCY_KEY = "Idempotency-Key"


class HttpStepFailed(TemplateFailure):
    """The step failed although the server answered: `answered_status` is its status
    (what a flow's `on_error` steps see as `error.status`)."""

    def __init__(self, message: str, answered_status: int) -> None:
        super().__init__(message)
        self.answered_status = answered_status


class HttpStep(StepModel):
    type: Literal["http"]
    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.2, ge=0, le=30)

    def retry_policy(self) -> RetryPolicy:
        """The pause before the n-th retry: `retry_backoff_s`, doubling."""
        return RetryPolicy.doubling(self.retry_backoff_s, self.retry_backoff_s * 2**self.retries)

    def templates(self) -> dict[str, str]:
        fields = {"method": self.method, "url": self.url}
        fields.update({f"headers.{name}": value for name, value in self.headers.items()})
        if self.body is not None:
            fields["body"] = self.body
        return fields

    def trace_input(self) -> dict[str, Any]:
        data = self.templates()
        data["url"] = redact_url_text(data["url"])
        return {
            k: (REDACTED if k.startswith("headers.") and is_secret_header(k[8:]) else v)
            for k, v in data.items()
        }


def redact(headers: dict[str, str]) -> dict[str, str]:
    return redact_headers(headers)


def idempotency_key(request_id: str, ref_id: str, iterations: tuple[int, ...]) -> str:
    """The key of a step's request within a run: nothing that changes between attempts
    or runs of the same request. Ref-ids are unique in a flow and request ids are the
    ingress's UUIDs; at most 32 + 1 + 64 + 1 + 154 characters (31 nested loops under
    the 10,000 iterations bound), within the 255 that APIs such as Stripe accept."""
    key = f"{request_id}:{ref_id}"
    if iterations:
        key += ":" + ".".join(str(index) for index in iterations)
    return key


def _problem(exc: BaseException) -> str:
    """An exception as an error message may show it: URLs in it cut to scheme, host and
    path, secret query parameters redacted, bounded."""
    text = scrub_urls(str(exc)[:2000])[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after_s(headers: dict[str, str]) -> float | None:
    """What the answer's `Retry-After` asks to wait (None: no such header, or one that is
    not valid: the retry policy's delay applies)."""
    value = next((v for name, v in headers.items() if name.lower() == "retry-after"), None)
    return None if value is None else parse_retry_after(value, datetime.now(UTC))


async def run(step: HttpStep, ctx: RunContext) -> Any:
    # Imported here, not at the top: this module is imported by every runner worker
    # (STEP_TYPES), and aiohttp's client costs ~0.2 s of CPU at each worker's start
    # although most flows have no http step. Already loaded once a request is made.
    import aiohttp

    if ctx.http is None:
        raise TemplateFailure(f"{ctx.path}: outgoing HTTP is not available in this runner")
    budget = ctx.templates.budget("the step's method, url, headers and body")
    render = ctx.templates.render_text
    method = render(step.method, ctx.values, f"{ctx.path}.method", budget).strip().upper()
    await asyncio.sleep(0)  # a pause between two templates: see the module docstring
    url = render(step.url, ctx.values, f"{ctx.path}.url", budget).strip()
    headers = {}
    for name, value in step.headers.items():
        await asyncio.sleep(0)
        headers[name] = render(value, ctx.values, f"{ctx.path}.headers.{name}", budget)
    if not any(name.lower() == IDEMPOTENCY_KEY.lower() for name in headers):
        headers[IDEMPOTENCY_KEY] = idempotency_key(
            ctx.state.request_id, step.ref_id, ctx.iterations
        )
    data: bytes | None = None
    if step.body is not None:
        await asyncio.sleep(0)
        body = ctx.templates.render_value(step.body, ctx.values, f"{ctx.path}.body", budget)
        if isinstance(body, (dict, list)):
            data = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        else:
            data = str(body).encode()
    retry = step.retry_policy()
    attempt = 0
    while True:
        try:
            status, response_headers, raw = await ctx.http.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout_s=step.timeout_s,
                max_response_bytes=ctx.limits.http_max_response_bytes,
            )
            if not is_retryable(status) or attempt >= step.retries:
                break
            problem = f"HTTP {status}"
            retry_after_s = _retry_after_s(response_headers)
        except OutboundRefused as exc:
            raise TemplateFailure(f"{ctx.path}.url: {scrub_urls(str(exc))}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.InvalidURL) or attempt >= step.retries:
                raise TemplateFailure(
                    f"{ctx.path}: {method[:16]} {safe_url(url)} failed after {attempt + 1}"
                    f" attempts: {_problem(exc)}"
                ) from None
            problem = type(exc).__name__
            retry_after_s = None
        except Exception as exc:
            # Whatever else the request refuses (a method or header value aiohttp will
            # not send, ...): this step's failure, never the runner's.
            raise TemplateFailure(
                f"{ctx.path}: {method[:16]} {safe_url(url)} could not be sent: {_problem(exc)}"
            ) from None
        attempt += 1
        wait_s = retry_after_wait_s(
            retry.delay_s(attempt), retry_after_s, ctx.limits.http_retry_after_max_s
        )
        remaining_s = ctx.state.remaining_s()
        if retry_after_s is not None and remaining_s is not None and wait_s >= remaining_s:
            raise HttpStepFailed(
                f"{ctx.path}: {method[:16]} {safe_url(url)} answered {problem} with"
                f" Retry-After of {retry_after_s:g} s: waiting {wait_s:g} s would pass the"
                f" run's timeout ({max(remaining_s, 0.0):.1f} s left), so it is not"
                f" retried (after attempt {attempt} of {step.retries + 1})",
                status,
            )
        log.info(
            "http_step_retry", step=step.ref_id, attempt=attempt, problem=problem, wait_s=wait_s
        )
        await asyncio.sleep(wait_s)
    text = raw.decode(errors="replace")
    content_type = response_headers.get("Content-Type", "")
    parsed = parse_if_json(text) if "json" in content_type else text
    return {"status": status, "headers": redact(response_headers), "body": parsed}


HTTP = StepType("http", HttpStep, run)
