"""AWS SNS as tests and benchmarks play it: a test CA and a signing certificate made
with `cryptography`, and messages signed the way SNS signs them (SignatureVersion 1:
SHA1withRSA, 2: SHA256withRSA, over the canonical string of the type's fields, each
"Name\\nValue\\n"). The canonical string is built here on its own, from AWS's
documentation, not with the ingress's code, so that a test can disagree with it."""

import base64
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:flowhooks-test"
# AWS's documentation lists the fields each type signs, in this order.
_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SnsSigner:
    """A CA, a signing certificate it issued (`sns.amazonaws.com`, like AWS's), and the
    key that signs messages. `certificate_pem` is what a SigningCertURL serves."""

    ca_key: rsa.RSAPrivateKey = field(default_factory=_key)
    key: rsa.RSAPrivateKey = field(default_factory=_key)
    valid_days: int = 30
    certificate_pem: bytes = b""

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("sns.amazonaws.com"))
            .issuer_name(_name("flowhooks test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=self.valid_days))
            .sign(self.ca_key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        """`message` with its Signature (and SignatureVersion) as SNS adds them."""
        names = _NOTIFICATION if message["Type"] == "Notification" else _CONFIRMATION
        canonical = "".join(
            f"{name}\n{message[name]}\n" for name in names if message.get(name) is not None
        )
        # SNS signature version 1 is SHA1withRSA: AWS's choice, not ours.
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = self.key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
        }


def timestamp(moment: datetime.datetime | None = None) -> str:
    """SNS's Timestamp: ISO 8601 in UTC with milliseconds, `2012-04-26T20:45:04.751Z`."""
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(
    cert_url: str, message: str, topic_arn: str = TOPIC_ARN, **fields: Any
) -> dict[str, Any]:
    """An unsigned Notification as SNS sends one over HTTP (before `SnsSigner.sign`)."""
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": timestamp(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": f"{cert_url.rsplit('/', 1)[0]}/?Action=Unsubscribe",
        **fields,
    }


def confirmation(
    cert_url: str,
    subscribe_url: str,
    kind: str = "SubscriptionConfirmation",
    topic_arn: str = TOPIC_ARN,
) -> dict[str, Any]:
    """An unsigned (Un)SubscriptionConfirmation (before `SnsSigner.sign`)."""
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425c464de12884" + "0" * 40,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to subscribe to the topic {topic_arn}.",
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp(),
        "SigningCertURL": cert_url,
    }


def headers(message: dict[str, Any]) -> dict[str, str]:
    """The headers SNS sends with a message (its body is sent as text/plain)."""
    return {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": str(message.get("MessageId")),
        "x-amz-sns-topic-arn": str(message.get("TopicArn")),
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
