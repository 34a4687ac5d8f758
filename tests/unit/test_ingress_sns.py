"""The `sns` mode (services/ingress/sns.py): messages signed as SNS signs them
(harness/sns.py: a test CA, a certificate it issued, SignatureVersion 1 and 2 over
AWS's canonical string), the certificate served on loopback and fetched through the
outgoing-request rules; the certificate URL pattern, the topic allow-list, the exact
401 and 503 messages, the certificate cache's bounds, the SubscribeURL visit, the
handshake's answer, the flow's input, and the mode's fields on save."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from harness import sns as aws
from services.ingress import handshake
from services.ingress.normalise import BodyLimits
from services.ingress.signatures import Check
from services.ingress.signing import SignatureChecks
from services.ingress.sns import (
    DEFAULT_CERT_URL_PATTERN,
    SnsCertificates,
    SubscribeVisits,
    canonical_string,
    parse_sns_input,
    precheck_sns,
)
from services.runner.access import signing_settings
from services.runner.definition import parse_definition
from services.runner.templates import TemplateEngine
from services.runner.webhook_secrets import public_webhook
from shared.errors import BadRequest, Unauthorized, Unavailable
from shared.outbound import AddressPolicy, OutboundHttp
from shared.schemas.access import FlowWebhookSettings, SigningSettings

LOOPBACK_PATTERN = r"^http://127\.0\.0\.1:\d+/"
SIGNER = aws.SnsSigner()


@dataclass
class CertServer:
    base: str = ""
    certificate: bytes = SIGNER.certificate_pem
    status: int = 200
    hang: bool = False
    fetches: int = 0
    visits: int = 0

    @property
    def cert_url(self) -> str:
        return f"{self.base}/SimpleNotificationService-test.pem"

    @property
    def subscribe_url(self) -> str:
        return f"{self.base}/?Action=ConfirmSubscription&Token=abc"


@pytest.fixture
async def server() -> AsyncIterator[CertServer]:
    state = CertServer()

    async def certificate(request: web.Request) -> web.Response:
        state.fetches += 1
        if state.hang:
            await asyncio.sleep(30)
        return web.Response(body=state.certificate, status=state.status)

    async def confirm(request: web.Request) -> web.Response:
        state.visits += 1
        if request.query.get("redirect"):
            raise web.HTTPFound("http://127.0.0.1:1/elsewhere")
        return web.Response(body=b"<ConfirmSubscriptionResponse/>", content_type="text/xml")

    app = web.Application()
    app.router.add_get("/SimpleNotificationService-test.pem", certificate)
    app.router.add_get("/", confirm)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.base = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def make_certificates() -> AsyncIterator[Callable[..., SnsCertificates]]:
    sessions: list[OutboundHttp] = []

    def make(
        pattern: str = LOOPBACK_PATTERN, allow: list[str] | None = None, **bounds: Any
    ) -> SnsCertificates:
        http = OutboundHttp(AddressPolicy(["127.0.0.0/8"] if allow is None else allow))
        sessions.append(http)
        options = {"max_entries": 10, "ttl_s": 3600, "timeout_s": 2.0, "max_bytes": 65536}
        return SnsCertificates(http, pattern, **{**options, **bounds})

    yield make
    for http in sessions:
        await http.close()


def sns_flow(topic_arns: list[str] | None = None, tolerance_s: int = 300) -> FlowWebhookSettings:
    return FlowWebhookSettings(
        flow_id="f1",
        workspace_id="w1",
        version=1,
        status="live",
        signing=SigningSettings(
            mode="sns", secrets=[], topic_arns=topic_arns, tolerance_s=tolerance_s
        ),
    )


async def check(
    checks: SignatureChecks, message: dict[str, Any], flow: FlowWebhookSettings | None = None
) -> None:
    """The verify stage as the webhook handler runs it: headers, then the body."""
    flow = flow or sns_flow()
    headers = CIMultiDict(aws.headers(message))
    body = orjson.dumps(message)
    headers["Content-Length"] = str(len(body))
    await checks.precheck(flow, headers)
    await checks.verify(flow, headers, body, executor=None, inline_max_bytes=1 << 30)  # type: ignore[arg-type]


async def refusal(
    checks: SignatureChecks, message: dict[str, Any], flow: FlowWebhookSettings | None = None
) -> str:
    with pytest.raises(Unauthorized) as refused:
        await check(checks, message, flow)
    return refused.value.message.removeprefix("invalid sns signature: ")


def test_the_canonical_strings_are_awss() -> None:
    notification = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Subject": "My First Message",
        "Message": "Hello world!",
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService.pem",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }
    assert canonical_string(notification) == (
        b"Message\nHello world!\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n"
        b"Subject\nMy First Message\nTimestamp\n2012-05-02T00:54:06.655Z\n"
        b"TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n"
    )
    # No Subject: left out, not an empty line.
    del notification["Subject"]
    assert b"Subject" not in canonical_string(notification)
    confirmation = aws.confirmation("https://sns.us-west-2.amazonaws.com/c.pem", "https://s/")
    assert canonical_string(confirmation).decode().split("\n")[::2] == [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
        "",
    ]


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signature_versions_1_and_2(
    version: str, server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    message = aws.notification(server.cert_url, '{"order": 7}', Subject="an order")
    await check(checks, SIGNER.sign(message, version))
    await check(checks, SIGNER.sign(aws.notification(server.cert_url, "plain text"), version))
    for kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        confirmation = aws.confirmation(server.cert_url, server.subscribe_url, kind)
        await check(checks, SIGNER.sign(confirmation, version))
    # A message signed with SHA-256 but claiming version 1 (or the reverse) does not hold.
    signed = SIGNER.sign(message, version)
    other = {"1": "2", "2": "1"}[version]
    assert await refusal(checks, {**signed, "SignatureVersion": other}) == (
        f"the message's Signature (version {other}) does not match"
    )
    assert server.fetches == 1  # one certificate fetch, cached


async def test_exact_refusals(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    message = SIGNER.sign(aws.notification(server.cert_url, "hello"))
    assert await refusal(checks, {**message, "Message": "hellO"}) == (
        "the message's Signature (version 2) does not match"
    )
    forged = aws.SnsSigner().sign(aws.notification(server.cert_url, "hello"))
    assert await refusal(checks, forged) == "the message's Signature (version 2) does not match"
    assert await refusal(checks, {**message, "SignatureVersion": "3"}) == (
        "the message's SignatureVersion is not 1 or 2"
    )
    assert await refusal(checks, {**message, "Signature": "not base64!"}) == (
        "the message's Signature is not base64"
    )
    no_id = {name: value for name, value in message.items() if name != "MessageId"}
    assert await refusal(checks, no_id) == "the message has no MessageId, or it is not a string"
    assert await refusal(checks, {**message, "Subject": 7}) == (
        "the message has no Subject, or it is not a string"
    )
    assert await refusal(checks, {**message, "TopicArn": "x" * 5000}) == (
        "the message's TopicArn is longer than 4096 characters"
    )
    stale = aws.timestamp(datetime.now(UTC) - timedelta(seconds=400))
    assert await refusal(checks, SIGNER.sign({**message, "Timestamp": stale})) == (
        "a Timestamp more than 300 s away from now"
    )
    assert await refusal(checks, {**message, "Timestamp": "yesterday"}) == (
        "a missing or malformed Timestamp"
    )
    # The header and the body disagree on the type.
    headers = CIMultiDict(aws.headers(message))
    headers["x-amz-sns-message-type"] = "SubscriptionConfirmation"
    with pytest.raises(Unauthorized) as refused:
        await checks.verify(sns_flow(), headers, orjson.dumps(message), None, 1 << 30)  # type: ignore[arg-type]
    assert refused.value.message == (
        "invalid sns signature: the message's Type is not the x-amz-sns-message-type header's"
    )
    for body, reason in (
        (b"not json", "the body is not JSON (SNS sends a JSON message)"),
        (b"[1, 2]", "the body is not a JSON object (SNS sends a JSON message)"),
        (b'{"Type": "Other"}', "the message's Type is not Notification,"),
    ):
        with pytest.raises(Unauthorized) as refused:
            await checks.verify(sns_flow(), headers, body, None, 1 << 30)  # type: ignore[arg-type]
        assert refused.value.message.startswith(f"invalid sns signature: {reason}")


def test_what_the_headers_alone_refuse() -> None:
    assert precheck_sns(CIMultiDict(), None) == (
        "no x-amz-sns-message-type header of Notification, SubscriptionConfirmation or"
        " UnsubscribeConfirmation"
    )
    headers = CIMultiDict({"x-amz-sns-message-type": "Notification"})
    assert precheck_sns(headers, None) is None
    headers["Content-Length"] = "¹²³"  # not a length: left to the body's own bound
    assert precheck_sns(headers, None) is None
    headers["Content-Length"] = str(2 * 1024 * 1024)
    assert precheck_sns(headers, None) == (
        "the body is larger than any SNS message (1048576 bytes)"
    )
    headers = CIMultiDict(
        {"x-amz-sns-message-type": "Notification", "x-amz-sns-topic-arn": aws.TOPIC_ARN}
    )
    assert precheck_sns(headers, [aws.TOPIC_ARN]) is None
    other = "arn:aws:sns:eu-west-1:123456789012:other"
    assert precheck_sns(headers, [other]) == (
        f"the topic {aws.TOPIC_ARN} is not one of the flow's topic_arns"
    )


async def test_the_topic_allow_list(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    other = "arn:aws:sns:eu-west-1:123456789012:other"
    message = SIGNER.sign(aws.notification(server.cert_url, "hi", topic_arn=other))
    assert await refusal(checks, message, sns_flow([aws.TOPIC_ARN])) == (
        f"the topic {other} is not one of the flow's topic_arns"
    )
    # The signed TopicArn counts, not only the header.
    headers = CIMultiDict({**aws.headers(message), "x-amz-sns-topic-arn": aws.TOPIC_ARN})
    with pytest.raises(Unauthorized) as refused:
        await checks.verify(sns_flow([aws.TOPIC_ARN]), headers, orjson.dumps(message), None, 1)  # type: ignore[arg-type]
    assert refused.value.message == (
        f"invalid sns signature: the topic {other} is not one of the flow's topic_arns"
    )
    assert server.fetches == 0  # refused before any certificate was fetched
    await check(checks, message, sns_flow([aws.TOPIC_ARN, other]))


def test_the_default_certificate_url_pattern() -> None:
    certificates = SnsCertificates(None, DEFAULT_CERT_URL_PATTERN, 1, 1, 1, 1)  # type: ignore[arg-type]
    for url in (
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.us-gov-west-1.amazonaws.com/x.pem",
    ):
        assert certificates.refusal(url) is None, url
    for url in (
        "http://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://evil.example/?https://sns.us-east-1.amazonaws.com/",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/x.pem",
        "https://SNS.us-east-1.amazonaws.com/x.pem",
    ):
        shown = url.split("?")[0].replace("user@", "")
        assert certificates.refusal(url) == (
            f"the message's SigningCertURL {shown} is not one that"
            " FLOWHOOKS_SNS_CERT_URL_PATTERN allows"
        ), url
    assert certificates.refusal("https://sns.us-east-1.amazonaws.com/\\x.pem") == (
        "the message's SigningCertURL is not a valid URL: the URL"
        " https://sns.us-east-1.amazonaws.com/\\x.pem is not valid: it contains a backslash"
    )
    long_url = "https://sns.us-east-1.amazonaws.com/" + "a" * 3000
    assert certificates.refusal(long_url) == (
        "the message's SigningCertURL is longer than 2048 characters"
    )


async def test_certificate_urls_outside_the_pattern_are_never_fetched(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates(DEFAULT_CERT_URL_PATTERN))
    message = SIGNER.sign(aws.notification(server.cert_url, "hi"))
    assert await refusal(checks, message) == (
        f"the message's SigningCertURL {server.cert_url} is not one that"
        " FLOWHOOKS_SNS_CERT_URL_PATTERN allows"
    )
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    confirmation = aws.confirmation(server.cert_url, "https://attacker.example/confirm")
    assert await refusal(checks, SIGNER.sign(confirmation)) == (
        "the message's SubscribeURL https://attacker.example/confirm is not one that"
        " FLOWHOOKS_SNS_CERT_URL_PATTERN allows"
    )
    assert server.fetches == 0


async def test_bad_certificates_are_refused_401_and_remembered(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    message = SIGNER.sign(aws.notification(server.cert_url, "hi"))
    server.certificate = b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates(failure_ttl_s=30))
    expected = f"the certificate at {server.cert_url} is not a PEM certificate"
    assert await refusal(checks, message) == expected
    assert await refusal(checks, message) == expected
    assert server.fetches == 1  # remembered
    server.certificate = SIGNER.certificate_pem
    server.status = 404
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    assert await refusal(checks, message) == f"the certificate URL {server.cert_url} answered 404"
    server.status = 302  # never followed
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    assert await refusal(checks, message) == f"the certificate URL {server.cert_url} answered 302"
    server.status = 200
    server.certificate = b"x" * 70_000
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    assert await refusal(checks, message) == (
        f"the certificate at {server.cert_url}: the response is larger than 65536 bytes"
    )
    expired = aws.SnsSigner(valid_days=-1)  # not after: yesterday
    server.certificate = expired.certificate_pem
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates())
    assert await refusal(checks, expired.sign(aws.notification(server.cert_url, "hi"))) == (
        f"the certificate at {server.cert_url} is not valid now"
    )


async def test_a_hanging_certificate_host_costs_one_bounded_fetch(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    server.hang = True
    checks = SignatureChecks(
        None, 10, sns_certificates=make_certificates(timeout_s=0.5, failure_ttl_s=30)
    )
    message = SIGNER.sign(aws.notification(server.cert_url, "hi"))
    started = time.monotonic()
    results = await asyncio.gather(
        *(check(checks, message) for _ in range(20)), return_exceptions=True
    )
    assert time.monotonic() - started < 2.0
    assert server.fetches == 1  # twenty requests waited on one fetch
    assert {type(result) for result in results} == {Unavailable}
    assert {result.message for result in results if isinstance(result, Unavailable)} == {
        f"cannot check the sns signature now: the certificate at {server.cert_url} could not"
        " be fetched: no answer within 0.5 s"
    }
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await check(checks, message)
    assert time.monotonic() - started < 0.1 and server.fetches == 1


async def test_private_addresses_are_refused_unless_allowed(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    checks = SignatureChecks(None, 10, sns_certificates=make_certificates(allow=[]))
    with pytest.raises(Unavailable) as unavailable:
        await check(checks, SIGNER.sign(aws.notification(server.cert_url, "hi")))
    assert unavailable.value.message == (
        f"cannot check the sns signature now: the certificate at {server.cert_url}: 127.0.0.1"
        " is 127.0.0.1, a private, loopback, link-local or reserved address; the operator has"
        " not allowed it"
    )
    assert server.fetches == 0


async def test_the_certificate_cache_is_bounded(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    certificates = make_certificates(max_entries=2)
    for index in range(4):
        await certificates.key(f"{server.cert_url}?n={index}")
    assert certificates.fetched.urls() == [f"{server.cert_url}?n=2", f"{server.cert_url}?n=3"]


async def test_the_subscribe_url_visit(
    server: CertServer, make_certificates: Callable[..., SnsCertificates]
) -> None:
    certificates = make_certificates()
    visits = SubscribeVisits(certificates.http, certificates)
    trace = await visits.visit(server.subscribe_url)
    assert (trace.error, trace.output, trace.input) == (
        None,
        {"status_code": 200, "body": "<ConfirmSubscriptionResponse/>"},
        {"method": "GET", "url": f"{server.base}/"},
    )
    # A redirect is not followed.
    trace = await visits.visit(f"{server.subscribe_url}&redirect=1")
    assert trace.error == "the SubscribeURL answered 302 (redirects are not followed)"
    assert server.visits == 2
    trace = await visits.visit("https://attacker.example/confirm")
    assert trace.error == (
        "the message's SubscribeURL https://attacker.example/confirm is not one that"
        " FLOWHOOKS_SNS_CERT_URL_PATTERN allows"
    )
    assert server.visits == 2  # the refused URL was not fetched


def test_a_failed_visit_is_answered_503_for_sns_to_send_it_again() -> None:
    answer = handshake.unconfirmed("the SubscribeURL answered 400 (redirects are not followed)")
    assert (answer.status, answer.content_type, answer.visit) == (503, "application/json", None)
    assert orjson.loads(answer.body) == {
        "status": 503,
        "error": "unavailable",
        "message": "the SNS subscription is not confirmed: the SubscribeURL answered 400"
        " (redirects are not followed)",
        "data": None,
    }


def test_the_handshake_answers() -> None:
    check = Check(mode="sns", secrets=())
    confirmation = aws.confirmation("https://sns.x.amazonaws.com/c.pem", "https://sns/confirm")
    probe = handshake.Probe(
        "POST", {}, CIMultiDict(aws.headers(confirmation)), orjson.dumps(confirmation)
    )
    answer = handshake.answer(check, probe, time.time())
    assert answer is not None
    assert (answer.status, answer.content_type, answer.visit) == (
        200,
        "application/json",
        "https://sns/confirm",
    )
    assert orjson.loads(answer.body) == {
        "status": 200,
        "error": None,
        "message": "subscription confirmed",
        "data": {"type": "SubscriptionConfirmation", "topic_arn": aws.TOPIC_ARN},
    }
    unsubscribed = {**confirmation, "Type": "UnsubscribeConfirmation"}
    probe = handshake.Probe(
        "POST", {}, CIMultiDict(aws.headers(unsubscribed)), orjson.dumps(unsubscribed)
    )
    answer = handshake.answer(check, probe, time.time())
    assert answer is not None and answer.visit is None
    assert orjson.loads(answer.body)["message"] == "unsubscribed: recorded, not run"
    notification = aws.notification("https://sns.x.amazonaws.com/c.pem", "hi")
    probe = handshake.Probe(
        "POST", {}, CIMultiDict(aws.headers(notification)), orjson.dumps(notification)
    )
    assert handshake.answer(check, probe, time.time()) is None  # an event: the flow runs


def test_the_flows_input_has_message_parsed() -> None:
    limits = BodyLimits()
    message = aws.notification("https://c/", '{"order": {"id": 7}}')
    parsed = parse_sns_input("POST", {}, "text/plain", orjson.dumps(message), limits)
    assert parsed == {**message, "Message": {"order": {"id": 7}}}
    for text in ("plain text", "{not json", ""):
        message = aws.notification("https://c/", text)
        assert parse_sns_input("POST", {}, "text/plain", orjson.dumps(message), limits) == message
    deep = aws.notification("https://c/", "[" * 100 + "]" * 100)
    # Deeper than the JSON bound: left as text (the envelope itself was fine).
    assert parse_sns_input("POST", {}, "text/plain", orjson.dumps(deep), limits) == deep


def save(auth: dict[str, Any]) -> dict[str, Any]:
    definition = parse_definition(
        {"name": "f", "webhook": {"auth": auth}, "steps": []}, TemplateEngine(), 300
    )
    return dict(definition.public()["webhook"])


def test_the_mode_on_save() -> None:
    stored = save({"mode": "sns"})
    assert "topic_arns" not in stored["auth"] and stored["auth"]["secrets"] == []
    signing = signing_settings(stored)
    assert signing is not None and (signing.mode, signing.topic_arns) == ("sns", None)
    arns = [aws.TOPIC_ARN, "arn:aws-cn:sns:cn-north-1:123456789012:orders.fifo"]
    stored = save({"mode": "sns", "topic_arns": arns})
    assert public_webhook(stored)["auth"]["topic_arns"] == arns
    assert signing_settings(stored).topic_arns == arns  # type: ignore[union-attr]
    refusals = {
        "webhook.auth.secrets: the sns mode takes no secrets: AWS signs each message with"
        " its certificate (optionally give topic_arns)": {"mode": "sns", "secrets": ["s" * 20]},
        "webhook.auth.topic_arns: give at least one topic ARN, or leave it out": {
            "mode": "sns",
            "topic_arns": [],
        },
        "webhook.auth.topic_arns[1]: not an SNS topic ARN (arn:aws:sns:<region>:<account"
        " id>:<topic name>)": {"mode": "sns", "topic_arns": [aws.TOPIC_ARN, "orders"]},
        "webhook.auth.topic_arns: the github mode does not take it": {
            "mode": "github",
            "secrets": ["github-secret-1234"],
            "topic_arns": [aws.TOPIC_ARN],
        },
    }
    for message, auth in refusals.items():
        with pytest.raises(BadRequest) as refused:
            save(auth)
        assert refused.value.message == message
