"""AWS SNS end to end (issue 22), against the four services: a local HTTP server on
loopback plays SNS's side (it serves the test certificate at the SigningCertURL and
records the SubscribeURL visit); FLOWHOOKS_SNS_CERT_URL_PATTERN and
FLOWHOOKS_INGRESS_HTTP_ALLOW_NETWORKS let the ingress reach it. Messages are signed as
SNS signs them (harness/sns.py: a test CA and certificate, versions 1 and 2)."""

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from harness import sns as aws
from harness.client import Api, eventually

# The shared system takes SNS certificates and subscription pages from 127.0.0.1
# (tests/e2e/conftest.py), where FakeSns serves them.
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

SIGNER = aws.SnsSigner()


@dataclass
class FakeSns:
    base: str = ""
    visits: list[str] = field(default_factory=list)

    @property
    def cert_url(self) -> str:
        return f"{self.base}/SimpleNotificationService-e2e.pem"

    def subscribe_url(self, token: str) -> str:
        return f"{self.base}/?Action=ConfirmSubscription&Token={token}"


FAKE = FakeSns()


class _Sns(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/SimpleNotificationService-"):
            body, kind = SIGNER.certificate_pem, "application/x-pem-file"
        else:
            FAKE.visits.append(self.path)
            body, kind = b"<ConfirmSubscriptionResponse/>", "text/xml"
            if "Token=refused-" in self.path:  # AWS refusing the confirmation
                body, kind = b"<ErrorResponse/>", "text/xml"
                self.send_response(400)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module", autouse=True)
def fake_sns() -> Iterator[FakeSns]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sns)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FAKE.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield FAKE
    server.shutdown()
    server.server_close()


async def sns_flow(api: Api, **auth: Any) -> str:
    created = await api.create_flow(
        {
            "name": "sns",
            "status": "live",
            "webhook": {
                "auth": {"mode": "sns", **auth},
                "response": {
                    "status_code": 200,
                    "body": '{"order": {{ web1.Message.order }}, "id": "{{ request.id }}"}',
                },
            },
            "steps": [],
        }
    )
    return str(created["id"])


async def deliver(api: Api, flow_id: str, message: dict[str, Any]) -> tuple[int, Any, Any]:
    status, headers, body = await api.send(
        flow_id, None, data=orjson.dumps(message), headers=aws.headers(message)
    )
    return status, headers, orjson.loads(body)


async def record(api: Api, request_id: str, has_steps: bool = False) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        if status != 200 or (has_steps and not found["steps"]):
            return None
        return dict(found)

    return await eventually(stored, timeout_s=15)


async def test_a_subscription_is_confirmed_and_recorded(api: Api, fake_sns: FakeSns) -> None:
    flow_id = await sns_flow(api)
    token = "confirm-token-0001"
    message = SIGNER.sign(aws.confirmation(fake_sns.cert_url, fake_sns.subscribe_url(token)))
    status, headers, answer = await deliver(api, flow_id, message)
    assert (status, answer) == (
        200,
        {
            "status": 200,
            "error": None,
            "message": "subscription confirmed",
            "data": {"type": "SubscriptionConfirmation", "topic_arn": aws.TOPIC_ARN},
        },
    )
    # Visited before the answer (within 10 s, the contract), once.
    assert await _visited(fake_sns, token)
    stored = await record(api, headers["X-Request-Id"], has_steps=True)
    assert stored["outcome"] == "handshake"
    assert stored["response"]["status_code"] == 200
    [visit] = stored["steps"]
    assert (visit["ref_id"], visit["type"], visit["error"], visit["output"]) == (
        "subscribe_url",
        "sns.subscribe_url",
        None,
        {"status_code": 200, "body": "<ConfirmSubscriptionResponse/>"},
    )
    assert [path for path in fake_sns.visits if token in path] == [
        f"/?Action=ConfirmSubscription&Token={token}"
    ]


async def test_a_confirmation_aws_refuses_is_503_so_sns_sends_it_again(
    api: Api, fake_sns: FakeSns
) -> None:
    flow_id = await sns_flow(api)
    token = "refused-token-0001"
    message = SIGNER.sign(aws.confirmation(fake_sns.cert_url, fake_sns.subscribe_url(token)))
    status, headers, answer = await deliver(api, flow_id, message)
    error = "the SubscribeURL answered 400 (redirects are not followed)"
    assert (status, answer) == (
        503,
        {
            "status": 503,
            "error": "unavailable",
            "message": f"the SNS subscription is not confirmed: {error}",
            "data": None,
        },
    )
    stored = await record(api, headers["X-Request-Id"], has_steps=True)
    assert (stored["outcome"], stored["response"]["status_code"], stored["error"]) == (
        "handshake",
        503,
        error,
    )


async def _visited(fake_sns: FakeSns, token: str) -> bool | None:
    return True if any(token in path for path in fake_sns.visits) else None


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_signed_notification_runs_with_message_parsed(api: Api, version: str) -> None:
    flow_id = await sns_flow(api, topic_arns=[aws.TOPIC_ARN])
    message = SIGNER.sign(aws.notification(FAKE.cert_url, '{"order": 42}'), version)
    status, headers, answer = await deliver(api, flow_id, message)
    assert (status, answer["order"]) == (200, 42), answer
    stored = await record(api, headers["X-Request-Id"])
    assert stored["outcome"] == "succeeded"
    assert stored["input"]["Message"] == {"order": 42}
    assert stored["input"]["MessageId"] == message["MessageId"]


async def test_forged_and_foreign_messages_are_refused(api: Api) -> None:
    flow_id = await sns_flow(api, topic_arns=[aws.TOPIC_ARN])
    forged = aws.SnsSigner().sign(aws.notification(FAKE.cert_url, '{"order": 1}'))
    status, _, answer = await deliver(api, flow_id, forged)
    assert (status, answer) == (
        401,
        {
            "status": 401,
            "error": "unauthorized",
            "message": "invalid sns signature: the message's Signature (version 2) does not match",
            "data": None,
        },
    )
    other = "arn:aws:sns:eu-west-1:123456789012:other"
    foreign = SIGNER.sign(aws.notification(FAKE.cert_url, '{"order": 1}', topic_arn=other))
    status, _, answer = await deliver(api, flow_id, foreign)
    assert (status, answer["message"]) == (
        401,
        f"invalid sns signature: the topic {other} is not one of the flow's topic_arns",
    )
    elsewhere = "https://certs.example.com/SimpleNotificationService-x.pem"
    status, _, answer = await deliver(
        api, flow_id, SIGNER.sign(aws.notification(elsewhere, '{"order": 1}'))
    )
    assert (status, answer["message"]) == (
        401,
        f"invalid sns signature: the message's SigningCertURL {elsewhere} is not one that"
        " FLOWHOOKS_SNS_CERT_URL_PATTERN allows",
    )
    # Malformed: not JSON; no message type header at all.
    status, _, answer = await api.send(flow_id, None, data=b"not json", headers=aws.headers(forged))
    assert (status, orjson.loads(answer)["message"]) == (
        401,
        "invalid sns signature: the body is not JSON (SNS sends a JSON message)",
    )
    status, _, answer = await api.send(flow_id, None, data=orjson.dumps(forged))
    assert (status, orjson.loads(answer)["message"]) == (
        401,
        "invalid sns signature: no x-amz-sns-message-type header of Notification,"
        " SubscriptionConfirmation or UnsubscribeConfirmation",
    )


async def test_an_unsubscribe_confirmation_is_recorded_not_run(api: Api, fake_sns: FakeSns) -> None:
    flow_id = await sns_flow(api)
    token = "unsubscribe-token-0002"
    message = SIGNER.sign(
        aws.confirmation(
            fake_sns.cert_url, fake_sns.subscribe_url(token), "UnsubscribeConfirmation"
        )
    )
    status, headers, answer = await deliver(api, flow_id, message)
    assert (status, answer["message"]) == (200, "unsubscribed: recorded, not run")
    stored = await record(api, headers["X-Request-Id"])
    assert (stored["outcome"], stored["steps"]) == ("handshake", [])
    assert not any(token in path for path in fake_sns.visits)  # nothing visited


async def test_a_redelivered_message_id_is_a_duplicate(api: Api) -> None:
    flow_id = await sns_flow(api)
    message = SIGNER.sign(aws.notification(FAKE.cert_url, '{"order": 5}'))
    status, headers, first = await deliver(api, flow_id, message)
    assert status == 200 and "Idempotent-Replayed" not in headers
    # SNS retries with the same MessageId: answered with the first's answer, not run.
    status, headers, again = await deliver(api, flow_id, message)
    assert (status, again, headers["Idempotent-Replayed"]) == (200, first, "true")
    stored = await record(api, headers["X-Request-Id"])
    assert (stored["outcome"], stored["duplicate_of"]) == ("duplicate", first["id"])
