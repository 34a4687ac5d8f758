"""The ingress's side of signing modes: open a flow's sealed secrets (once per flow
version, kept in memory only) and check a request's signature with `signatures.py`.
Bearer flows never reach this module."""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor

import structlog

from services.ingress.signatures import Check, precheck, secret_key, verify
from shared.errors import Unauthorized, Unavailable
from shared.schemas.access import FlowWebhookSettings, SigningSettings
from shared.secret_box import SealError, SecretBox

log = structlog.get_logger(__name__)

CacheKey = tuple[str, int, tuple[str, ...]]  # flow, version, sealed values


class SignatureChecks:
    def __init__(self, box: SecretBox | None, max_entries: int) -> None:
        self.box = box
        self.max_entries = max(1, max_entries)
        # Keyed by the sealed values themselves: a new secret is a new sealed value (a
        # fresh nonce), so an entry can never outlive the secrets it was opened from.
        self._checks: OrderedDict[CacheKey, Check] = OrderedDict()

    def check_for(self, flow: FlowWebhookSettings, signing: SigningSettings) -> Check:
        key = (flow.flow_id, flow.version, (*signing.secrets, signing.verify_token or ""))
        check = self._checks.get(key)
        if check is not None:
            self._checks.move_to_end(key)
            return check
        sealed_values = [*signing.secrets, *filter(None, [signing.verify_token])]
        # `discord` holds a public key only: nothing to open.
        if self.box is None and sealed_values:
            log.error("signing_key_missing", flow_id=flow.flow_id)
            raise Unavailable("this ingress cannot check signatures (no secrets key)")
        try:
            secrets = tuple(
                secret_key(signing.mode, self._open(sealed, flow)) for sealed in signing.secrets
            )
            verify_token = (
                None
                if signing.verify_token is None
                else self._open(signing.verify_token, flow).encode()
            )
        except (SealError, ValueError):
            # Another key ring than the runner's: an operator's mistake, not the sender's.
            log.error("signing_secret_unopenable", flow_id=flow.flow_id)
            raise Unavailable("this ingress cannot open the flow's signing secrets") from None
        check = Check(
            mode=signing.mode,
            secrets=secrets,
            tolerance_s=signing.tolerance_s,
            header=signing.header,
            algorithm=signing.algorithm,
            encoding=signing.encoding,
            prefix=signing.prefix,
            timestamp_header=signing.timestamp_header,
            content=signing.content,
            verify_token=verify_token,
            public_key=None if signing.public_key is None else bytes.fromhex(signing.public_key),
        )
        self._checks[key] = check
        while len(self._checks) > self.max_entries:
            self._checks.popitem(last=False)
        return check

    def _open(self, sealed: str, flow: FlowWebhookSettings) -> str:
        assert self.box is not None
        return self.box.open(sealed, flow.workspace_id)

    def precheck(self, flow: FlowWebhookSettings, headers: Mapping[str, str]) -> None:
        """401 for what the headers alone show is wrong (no signature header, a stale or
        malformed timestamp, no decodable signature), before the body is read."""
        assert flow.signing is not None
        refusal = precheck(self.check_for(flow, flow.signing), headers, time.time())
        if refusal is not None:
            raise Unauthorized(f"invalid {flow.signing.mode} signature: {refusal}")

    async def verify(
        self,
        flow: FlowWebhookSettings,
        headers: Mapping[str, str],
        body: bytes,
        executor: Executor,
        inline_max_bytes: int,
    ) -> None:
        """Returns if the body is signed by one of the flow's secrets; else 401. A body
        over `inline_max_bytes` is hashed on `executor` (hashlib releases the GIL over
        large inputs: a 1 MiB body's millisecond of HMAC does not hold the event loop)."""
        assert flow.signing is not None
        check = self.check_for(flow, flow.signing)
        now = time.time()
        if len(body) <= inline_max_bytes:
            refusal = verify(check, headers, body, now)
        else:
            loop = asyncio.get_running_loop()
            refusal = await loop.run_in_executor(executor, verify, check, headers, body, now)
        if refusal is not None:
            raise Unauthorized(f"invalid {flow.signing.mode} signature: {refusal}")
