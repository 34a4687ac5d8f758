"""The "More verification modes" end to end (issue 22): twilio, square and hubspot
signed over the public URL (FLOWHOOKS_INGRESS_PUBLIC_URL: the sender signs the URL it
was given, a proxy forwards to the ingress's own port), paddle, sendgrid (ECDSA P-256)
and google-pubsub (an RS256 push token against a JWKS served here on loopback, allowed
through FLOWHOOKS_INGRESS_HTTP_ALLOW_NETWORKS). One accepted and one refused request
per mode, against the four services."""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import google.auth.crypt
import google.auth.jwt
import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hubspot.utils.signature import Signature
from jwt.algorithms import RSAAlgorithm
from twilio.request_validator import RequestValidator

from harness.client import Api
from harness.system import System, running_system

pytestmark = pytest.mark.e2e

PUBLIC_URL = "https://hooks.example.com"
SECRET = "e2e-provider-secret-0123"
EMAIL = "pusher@my-project.iam.gserviceaccount.com"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
PUBSUB_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _Jwks(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        key = json.loads(RSAAlgorithm.to_jwk(PUBSUB_KEY.public_key()))
        body = json.dumps({"keys": [{**key, "kid": "e2e-key", "alg": "RS256", "use": "sig"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(
        FLOWHOOKS_WEBHOOK_SECRETS_KEY="e2e-webhook-secrets-key-0123456789abcdef",
        FLOWHOOKS_INGRESS_PUBLIC_URL=PUBLIC_URL,
        FLOWHOOKS_INGRESS_HTTP_ALLOW_NETWORKS='["127.0.0.0/8"]',
    ) as running:
        yield running


def flow(auth: dict[str, Any], body: str = '{"n": {{ web1.n }}}') -> dict[str, Any]:
    return {
        "name": f"signed {auth['mode']}",
        "status": "live",
        "webhook": {"auth": auth, "response": {"status_code": 200, "body": body}},
        "steps": [],
    }


def refused(mode: str, reason: str) -> dict[str, Any]:
    return {
        "status": 401,
        "error": "unauthorized",
        "message": f"invalid {mode} signature: {reason}",
        "data": None,
    }


def b64_hmac(key: str, message: bytes, algorithm: str = "sha256") -> str:
    return base64.b64encode(hmac.new(key.encode(), message, algorithm).digest()).decode()


async def test_the_flows_api_shows_the_public_url(api: Api) -> None:
    created = await api.create_flow(flow({"mode": "paddle", "secrets": [SECRET]}))
    info = await api.webhook_info(created["id"])
    assert info["url"] == f"{PUBLIC_URL}/v1/flow-webhook/{created['id']}"


async def test_twilio(api: Api) -> None:
    flow_id = (await api.create_flow(flow({"mode": "twilio", "secrets": [SECRET]})))["id"]
    url = f"{PUBLIC_URL}/v1/flow-webhook/{flow_id}"
    params = {"n": "7", "From": "+12349013030"}
    signature = RequestValidator(SECRET).compute_signature(url, params)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, answer = await api.send(
        flow_id, None, data=params, headers={**form, "X-Twilio-Signature": signature}
    )
    assert (status, answer) == (200, b'{"n": 7}'), answer
    status, _, answer = await api.send(
        flow_id,
        None,
        data={**params, "n": "8"},
        headers={**form, "X-Twilio-Signature": signature},
    )
    assert (status, orjson.loads(answer)) == (
        401,
        refused("twilio", "the X-Twilio-Signature does not match"),
    )


async def test_twilio_json_body(api: Api) -> None:
    flow_id = (await api.create_flow(flow({"mode": "twilio", "secrets": [SECRET]})))["id"]
    validator = RequestValidator(SECRET)
    body = '{"n": 3}'
    query = f"bodySHA256={validator.compute_hash(body)}"
    signature = validator.compute_signature(f"{PUBLIC_URL}/v1/flow-webhook/{flow_id}?{query}", {})
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
    status, _, answer = await api.send(flow_id, None, data=body, headers=headers, params=query)
    assert (status, answer) == (200, b'{"n": 3}'), answer


async def test_square(api: Api) -> None:
    flow_id = (await api.create_flow(flow({"mode": "square", "secrets": [SECRET]})))["id"]
    body = b'{"n": 5}'
    url = f"{PUBLIC_URL}/v1/flow-webhook/{flow_id}"
    signature = b64_hmac(SECRET, url.encode() + body)
    headers = {"Content-Type": "application/json", "x-square-hmacsha256-signature": signature}
    status, _, answer = await api.send(flow_id, None, data=body, headers=headers)
    assert (status, answer) == (200, b'{"n": 5}'), answer
    # Signed for another URL (the ingress's own address, not the public one).
    local = f"{api.system.url('ingress')}/v1/flow-webhook/{flow_id}"
    headers["x-square-hmacsha256-signature"] = b64_hmac(SECRET, local.encode() + body)
    status, _, answer = await api.send(flow_id, None, data=body, headers=headers)
    assert (status, orjson.loads(answer)) == (
        401,
        refused("square", "the x-square-hmacsha256-signature does not match"),
    )


async def test_hubspot(api: Api) -> None:
    flow_id = (await api.create_flow(flow({"mode": "hubspot", "secrets": [SECRET]})))["id"]
    body = '{"n": 6}'
    url = f"{PUBLIC_URL}/v1/flow-webhook/{flow_id}"

    def signed(ms: int) -> dict[str, str]:
        signature = Signature.get_signature(SECRET, body, "v3", url, "POST", str(ms))
        return {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": signature,
            "X-HubSpot-Request-Timestamp": str(ms),
        }

    now_ms = int(time.time() * 1000)
    status, _, answer = await api.send(flow_id, None, data=body, headers=signed(now_ms))
    assert (status, answer) == (200, b'{"n": 6}'), answer
    status, _, answer = await api.send(flow_id, None, data=body, headers=signed(now_ms - 301_000))
    assert (status, orjson.loads(answer)) == (
        401,
        refused("hubspot", "a signature timestamp more than 300 s away from now"),
    )


async def test_paddle(api: Api) -> None:
    flow_id = (await api.create_flow(flow({"mode": "paddle", "secrets": [SECRET]})))["id"]
    body = b'{"n": 4, "event_id": "evt_1"}'
    ts = int(time.time())
    h1 = hmac.new(SECRET.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "Paddle-Signature": f"ts={ts};h1={h1}"}
    status, _, answer = await api.send(flow_id, None, data=body, headers=headers)
    assert (status, answer) == (200, b'{"n": 4}'), answer
    status, _, answer = await api.send(flow_id, None, data=body + b" ", headers=headers)
    assert (status, orjson.loads(answer)) == (
        401,
        refused("paddle", "the Paddle-Signature does not match"),
    )


async def test_sendgrid(api: Api) -> None:
    public = base64.b64encode(
        SENDGRID_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    created = await api.create_flow(flow({"mode": "sendgrid", "public_key": public}))
    assert created["webhook"]["auth"]["public_key"] == public  # public: shown as saved
    body = b'{"n": 2}'
    ts = str(int(time.time()))
    signature = SENDGRID_KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
    }
    status, _, answer = await api.send(created["id"], None, data=body, headers=headers)
    assert (status, answer) == (200, b'{"n": 2}'), answer
    status, _, answer = await api.send(created["id"], None, data=b'{"n": 3}', headers=headers)
    assert (status, orjson.loads(answer)) == (
        401,
        refused("sendgrid", "the X-Twilio-Email-Event-Webhook-Signature does not match"),
    )


def push_token(audience: str, **claims: Any) -> str:
    pem = PUBSUB_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    now = int(time.time())
    payload = {"aud": audience, "email": EMAIL, "email_verified": True, "iat": now}
    payload |= {"exp": now + 3600, "iss": "https://accounts.google.com", **claims}
    signer = google.auth.crypt.RSASigner.from_string(pem, "e2e-key")
    return google.auth.jwt.encode(signer, payload).decode()


async def test_google_pubsub(api: Api, jwks_url: str) -> None:
    audience = "https://hooks.example.com/pubsub"
    auth = {"mode": "google-pubsub", "audience": audience, "email": EMAIL, "jwks_url": jwks_url}
    flow_id = (await api.create_flow(flow(auth, '{"order": {{ web1.message.data.order }}}')))["id"]
    data = base64.b64encode(b'{"order": 42}').decode()
    envelope = {
        "message": {"data": data, "messageId": "1", "attributes": {}},
        "subscription": "projects/p/subscriptions/s",
    }
    status, _, answer = await api.send(flow_id, push_token(audience), json=envelope)
    assert (status, answer) == (200, b'{"order": 42}'), answer
    status, _, answer = await api.send(
        flow_id, push_token("https://other.example.com"), json=envelope
    )
    assert (status, orjson.loads(answer)) == (
        401,
        refused("google-pubsub", "the token's aud is not the flow's audience"),
    )
    # The flow's own webhook token still works (bearer rules), the envelope decoded too.
    token = (await api.webhook_info(flow_id))["token"]
    status, _, answer = await api.send(flow_id, token, json=envelope)
    assert (status, answer) == (200, b'{"order": 42}'), answer
