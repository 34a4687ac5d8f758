"""The key ring of flow webhook tokens (`FLOWHOOKS_RUNNER_TOKEN_KEYS`).

    FLOWHOOKS_RUNNER_TOKEN_KEYS="NEW,OLD@2030-01-31T00:00:00Z,OLDER"

Keys are separated by commas, the current key first, then previous ones. A previous key
may end in `@<ISO 8601 time with zone>`: its tokens are refused from that time on (a
grace period the operator states as an absolute time, so that every replica agrees
without sharing a clock of when it started). The API shows the token of the current
key; auth also accepts, until the operator runs `flowhooks flows rotate-all-tokens`, the
token each previous key derives for the same nonce. A key dropped from the ring is
refused as soon as a runner with the new ring is up.

Outside the runner a key is known only by its id: an HMAC of a fixed label under the
key, which tells nothing about the key itself.
"""

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime

KEY_ID_LABEL = b"flowhooks flow-token key id"


def key_id(secret: str) -> str:
    return hmac.new(secret.encode(), KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class TokenKey:
    secret: str = field(repr=False)
    key_id: str
    # Tokens of this (previous) key are refused from this time on; None: until dropped.
    not_after: datetime | None = None

    @classmethod
    def of(cls, secret: str, not_after: datetime | None = None) -> "TokenKey":
        return cls(secret, key_id(secret), not_after)


@dataclass(frozen=True)
class TokenKeyRing:
    keys: tuple[TokenKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("the key ring is empty")
        if self.keys[0].not_after is not None:
            raise ValueError("the current (first) key cannot have an end time")
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a key appears twice in the key ring")

    @property
    def current(self) -> TokenKey:
        return self.keys[0]

    @property
    def fingerprint(self) -> str:
        """Changes whenever a key is added, dropped, reordered or gets another end time."""
        text = ",".join(
            f"{key.key_id}@{key.not_after.isoformat() if key.not_after else ''}"
            for key in self.keys
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def issuers_since(self, nonce_key_id: str | None) -> tuple[TokenKey, ...]:
        """The keys whose token for a nonce picked while `nonce_key_id` was current may
        have been shown: that key and the ones that became current after it (the ring
        lists them newest first). A nonce of unknown origin (picked before the ring
        existed, or under a key since dropped): every key."""
        for index, key in enumerate(self.keys):
            if key.key_id == nonce_key_id:
                return self.keys[: index + 1]
        return self.keys


def parse_ring(text: str) -> TokenKeyRing:
    """Raises ValueError, naming the entry (by position, never its secret)."""
    keys: list[TokenKey] = []
    for position, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"key {position} of the key ring is empty")
        secret, at, until = entry.partition("@")
        not_after: datetime | None = None
        if at:
            try:
                not_after = datetime.fromisoformat(until.strip())
            except ValueError:
                raise ValueError(
                    f"key {position}: the end time after '@' is not an ISO 8601 time"
                    " (keys themselves must not contain ',' or '@')"
                ) from None
            if not_after.tzinfo is None:
                raise ValueError(f"key {position}: the end time needs a zone, e.g. ...T00:00Z")
        secret = secret.strip()
        if not secret:
            raise ValueError(f"key {position} of the key ring is empty")
        keys.append(TokenKey.of(secret, not_after))
    return TokenKeyRing(tuple(keys))
