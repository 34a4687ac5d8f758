"""`/v1/flow-webhook/{flow_id}`: check the bearer, refuse or answer paused flows,
normalise the body, run the flow over RPC and answer with the flow's response."""

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

from services.ingress.access_cache import AccessCache
from services.ingress.normalise import BodyLimits, webhook_request
from services.ingress.settings import IngressSettings
from shared.bearer import bearer_from_header, hash_token
from shared.errors import (
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Timeout,
    Unauthorized,
)
from shared.messaging import naming
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.runs import RunResult, StartRun
from shared.web import REQUEST_ID

log = structlog.get_logger(__name__)

# The original product's answer for a paused flow, byte for byte (contract).
PAUSED_BODY = (
    b'{"status": 200, "error": "biz_logic", "message": "Flow status is `paused`. '
    b'Unpause to run this flow using a webhook", "data": null}'
)


class WebhookHandler:
    def __init__(self, access: AccessCache, rpc: RpcClient, settings: IngressSettings) -> None:
        self.access = access
        self.rpc = rpc
        self.max_body_bytes = settings.ingress_max_body_bytes
        self.body_timeout_s = settings.ingress_body_timeout_s
        self.limits = BodyLimits(settings.ingress_max_json_depth, settings.ingress_max_xml_depth)

    async def handle(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC)
        request_id: str = request[REQUEST_ID]
        flow_id = request.match_info["flow_id"]
        flow = await self._authorize(request, flow_id)
        if flow.status == "paused":
            # Neither run nor stored (contract).
            return web.Response(body=PAUSED_BODY, content_type="application/json")
        body = await self._read_body(request)
        normalised = webhook_request(
            request_id=request_id,
            flow_id=flow.flow_id,
            workspace_id=flow.workspace_id,
            received_at=received_at,
            method=request.method,
            path=request.path,
            query=request.query.items(),
            headers=request.headers,
            content_type=request.headers.get("Content-Type"),
            body=body,
            mode="async" if flow.is_async else "sync",
            limits=self.limits,
        )
        start = StartRun(
            request=normalised,
            flow_version=flow.version,
            deadline=received_at + timedelta(seconds=flow.timeout_s),
        )
        try:
            result = await self.rpc.call(
                naming.SYNC_RUNS_QUEUE,
                naming.START_RUN,
                start,
                RunResult,
                timeout_s=flow.timeout_s,
                correlation_id=request_id,
            )
        except Timeout:
            raise Timeout(
                f"the flow did not finish within {flow.timeout_s:g} s (request {request_id})",
                data={"request_id": request_id},
            ) from None
        return web.Response(
            body=result.body.encode(),
            status=result.status_code,
            headers={"Content-Type": result.content_type},
        )

    async def _authorize(self, request: web.Request, flow_id: str) -> FlowWebhookSettings:
        bearer_hash = hash_token(bearer_from_header(request.headers.get("Authorization")))
        access = await self.access.authorize(flow_id, bearer_hash)
        if access.decision == "unauthorized":
            raise Unauthorized("unknown, expired or revoked token")
        if access.decision == "forbidden":
            raise Forbidden(
                "this token needs the scope automation.webhook_run, automation.manage or automation"
            )
        if access.decision == "not_found" or access.flow is None:
            raise NotFound("no such flow")
        return access.flow

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise PayloadTooLarge(
                            f"the body is larger than {self.max_body_bytes} bytes"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self.body_timeout_s:g} s"
            ) from None
        return b"".join(chunks)
