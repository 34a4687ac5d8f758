"""The ingress's side of signing modes: open a flow's sealed secrets (once per flow
version, kept in memory only) and check a request's signature with `signatures.py`
(HMAC modes), `public_key_signatures.py` (`sendgrid`) or `pubsub.py` (`google-pubsub`).
Bearer flows never reach this module.

The URL-signing modes (`twilio`, `square`, `hubspot`) need the URL the sender called:
FLOWHOOKS_INGRESS_PUBLIC_URL + the request's path and query as received. Without that
setting they are answered 503 naming it (the sender is not at fault, and retries once
the operator sets it); the request's own Host and scheme are not used: behind a proxy
or a load balancer they are not what the sender signed."""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from functools import partial

import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from services.ingress.public_key_signatures import precheck_sendgrid, verify_sendgrid
from services.ingress.pubsub import JwksCache, JwksUnavailable, bearer_jwt, verify_push_token
from services.ingress.signatures import (
    URL_READERS,
    Check,
    RequestLine,
    precheck,
    secret_key,
    verify,
)
from services.ingress.sns import (
    CertificateRefused,
    CertificateUnavailable,
    SnsCertificates,
    precheck_sns,
    read_message,
    verify_signature,
)
from shared.errors import Unauthorized, Unavailable
from shared.public_keys import load_ecdsa_public_key
from shared.schemas.access import FlowWebhookSettings, SigningSettings
from shared.secret_box import SealError, SecretBox

log = structlog.get_logger(__name__)

CacheKey = tuple[str, int, tuple[str, ...]]  # flow, version, sealed values
# The modes checked by a public key or a token here, not by an HMAC reader of
# signatures.py: `sendgrid` (public_key_signatures.py), `google-pubsub` (pubsub.py),
# `sns` (sns.py: AWS's certificate).
TOKEN_AND_KEY_MODES = frozenset({"sendgrid", "google-pubsub", "sns"})


class SignatureChecks:
    def __init__(
        self,
        box: SecretBox | None,
        max_entries: int,
        public_url: str | None = None,
        jwks: JwksCache | None = None,
        sns_certificates: SnsCertificates | None = None,
    ) -> None:
        self.box = box
        self.max_entries = max(1, max_entries)
        # FLOWHOOKS_INGRESS_PUBLIC_URL, without its trailing slash.
        self.public_url = public_url.rstrip("/") if public_url else None
        self.jwks = jwks
        self.sns_certificates = sns_certificates
        # Keyed by the sealed values themselves: a new secret is a new sealed value (a
        # fresh nonce), so an entry can never outlive the secrets it was opened from.
        self._checks: OrderedDict[CacheKey, Check] = OrderedDict()

    def check_for(self, flow: FlowWebhookSettings, signing: SigningSettings) -> Check:
        key = (flow.flow_id, flow.version, (*signing.secrets, signing.verify_token or ""))
        check = self._checks.get(key)
        if check is not None:
            self._checks.move_to_end(key)
            return check
        secrets = self._open(flow, signing.mode, signing.secrets)
        # `meta`'s verify token is sealed like a secret (and compared as its text).
        verify_token = (
            None
            if signing.verify_token is None
            else self._open(flow, signing.mode, [signing.verify_token])[0]
        )
        public_key = self._public_key(flow, signing)
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
            public_key=public_key,
        )
        self._checks[key] = check
        while len(self._checks) > self.max_entries:
            self._checks.popitem(last=False)
        return check

    def _open(
        self, flow: FlowWebhookSettings, mode: str, sealed_values: list[str]
    ) -> tuple[bytes, ...]:
        """The sealed values opened (HMAC keys as `secret_key` makes them); none for the
        public-key modes."""
        if not sealed_values:
            return ()
        if self.box is None:
            log.error("signing_key_missing", flow_id=flow.flow_id)
            raise Unavailable("this ingress cannot check signatures (no secrets key)")
        try:
            return tuple(
                secret_key(mode, self.box.open(sealed, flow.workspace_id))
                for sealed in sealed_values
            )
        except (SealError, ValueError):
            # Another key ring than the runner's: an operator's mistake, not the sender's.
            log.error("signing_secret_unopenable", flow_id=flow.flow_id)
            raise Unavailable("this ingress cannot open the flow's signing secrets") from None

    @staticmethod
    def _public_key(flow: FlowWebhookSettings, signing: SigningSettings) -> object | None:
        """The flow's public key as its mode checks it: `discord`'s raw Ed25519 bytes,
        `sendgrid`'s loaded ECDSA key."""
        if signing.public_key is None:
            return None
        try:
            if signing.mode == "discord":
                return bytes.fromhex(signing.public_key)
            return load_ecdsa_public_key(signing.public_key)
        except ValueError:
            # Checked on save: only a runner of another version could have let it in.
            log.error("signing_public_key_unreadable", flow_id=flow.flow_id)
            raise Unavailable("this ingress cannot read the flow's public key") from None

    def _public_line(self, mode: str, line: RequestLine | None) -> RequestLine | None:
        """The request's method and public URL, for the modes that sign the URL."""
        if mode not in URL_READERS:
            return None
        if self.public_url is None:
            log.error("public_url_missing", mode=mode)
            raise Unavailable(
                f"this ingress cannot check {mode} signatures: they sign the URL the sender"
                " called, and FLOWHOOKS_INGRESS_PUBLIC_URL is not set"
            )
        assert line is not None
        return RequestLine(line.method, self.public_url + line.url)

    async def precheck(
        self,
        flow: FlowWebhookSettings,
        headers: Mapping[str, str],
        line: RequestLine | None = None,
    ) -> None:
        """401 for what the headers alone show is wrong (no signature header, a stale or
        malformed timestamp, no decodable signature), before the body is read. A
        `google-pubsub` token is checked in full here (it signs no body). `line`: the
        request's method and its path and query as received."""
        signing = flow.signing
        assert signing is not None
        check = self.check_for(flow, signing)
        now = time.time()
        if signing.mode == "google-pubsub":
            refusal = await self._check_push_token(signing, headers)
        elif signing.mode == "sendgrid":
            refusal = precheck_sendgrid(headers, check.tolerance_s, now)
        elif signing.mode == "sns":
            refusal = precheck_sns(headers, signing.topic_arns)
        else:
            refusal = precheck(check, headers, now, self._public_line(signing.mode, line))
        if refusal is not None:
            raise Unauthorized(f"invalid {signing.mode} signature: {refusal}")

    async def _check_push_token(
        self, signing: SigningSettings, headers: Mapping[str, str]
    ) -> str | None:
        token = bearer_jwt(headers)
        if token is None:
            return "no Authorization header with a bearer JWT (the push subscription's token)"
        assert signing.audience is not None and signing.email is not None  # checked on save
        if self.jwks is None:
            raise Unavailable("this ingress cannot check google-pubsub tokens (no JWKS client)")
        try:
            return await verify_push_token(
                token, signing.audience, signing.email, signing.jwks_url, self.jwks
            )
        except JwksUnavailable as exc:
            raise Unavailable(f"cannot check the google-pubsub token now: {exc}") from None

    async def verify(
        self,
        flow: FlowWebhookSettings,
        headers: Mapping[str, str],
        body: bytes,
        executor: Executor,
        inline_max_bytes: int,
        line: RequestLine | None = None,
    ) -> None:
        """Returns if the body is signed by one of the flow's secrets; else 401. A body
        over `inline_max_bytes` is hashed on `executor` (hashlib releases the GIL over
        large inputs: a 1 MiB body's millisecond of HMAC does not hold the event loop)."""
        assert flow.signing is not None
        mode = flow.signing.mode
        if mode == "google-pubsub":
            return  # the token signs no body: checked in full by `precheck`
        check = self.check_for(flow, flow.signing)
        now = time.time()
        if mode == "sns":
            await self._verify_sns(flow.signing, headers, body, executor, inline_max_bytes, now)
            return
        if mode == "sendgrid":
            assert isinstance(check.public_key, ec.EllipticCurvePublicKey)
            job = partial(verify_sendgrid, check.public_key, headers, body, check.tolerance_s, now)
        else:
            job = partial(verify, check, headers, body, now, self._public_line(mode, line))
        if len(body) <= inline_max_bytes:
            refusal = job()
        else:
            refusal = await asyncio.get_running_loop().run_in_executor(executor, job)
        if refusal is not None:
            raise Unauthorized(f"invalid {flow.signing.mode} signature: {refusal}")

    async def _verify_sns(
        self,
        signing: SigningSettings,
        headers: Mapping[str, str],
        body: bytes,
        executor: Executor,
        inline_max_bytes: int,
        now: float,
    ) -> None:
        """An SNS message: read from the body, its certificate fetched (cached), its
        signature checked; 401 naming what is wrong, 503 when the certificate cannot be
        fetched now (SNS retries). A large body is read and hashed on `executor`."""
        certificates = self.sns_certificates
        if certificates is None:
            raise Unavailable("this ingress cannot check sns signatures (no certificate client)")
        loop = asyncio.get_running_loop()
        large = len(body) > inline_max_bytes
        read = partial(
            read_message, body, headers, signing.topic_arns, certificates, signing.tolerance_s, now
        )
        message = await loop.run_in_executor(executor, read) if large else read()
        if isinstance(message, str):
            raise Unauthorized(f"invalid sns signature: {message}")
        try:
            key = await certificates.key(message.cert_url)
        except CertificateRefused as exc:
            raise Unauthorized(f"invalid sns signature: {exc}") from None
        except CertificateUnavailable as exc:
            raise Unavailable(f"cannot check the sns signature now: {exc}") from None
        check = partial(verify_signature, key, message)
        refusal = await loop.run_in_executor(executor, check) if large else check()
        if refusal is not None:
            raise Unauthorized(f"invalid sns signature: {refusal}")
