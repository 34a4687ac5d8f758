"""`webhook.dedup.key`: where a request's deduplication key is.

- `header:<name>`: the header's value (names are case-insensitive);
- `json:<JSON pointer>` (RFC 6901, e.g. `json:/event/id`): a string, number or boolean
  in the parsed input (JSON, form data or XML converted to JSON);
- several of those joined by ` + ` (`json:/event + json:/event_ts`): one key made of
  every part's value (Zoom's events are told apart only by their name and time).
A request without the key (no such header, an empty value, nothing at the pointer, or
null, an object or a list there; for a combined key, any part missing) has no key: it
runs like any other.

`PROVIDER_DEFAULT_KEYS` is where each provider mode's delivery id is, the key a flow in
that mode deduplicates on when it saved no `webhook.dedup` (resolved by the ingress for
each request: `FlowWebhookSettings.dedup_of`).
"""

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
MAX_SPEC_CHARS = 300
# Longer keys are stored as their SHA-256, so the table's index stays small.
MAX_KEY_CHARS = 200
# What a stored hashed key starts with. A key that itself starts with it is hashed too,
# so a literal `sha256:<hex>` can never equal the hash of another (long) key.
HASHED_PREFIX = "sha256:"
# A combined key's parts: ` + ` before the next part's `header:` or `json:` (a pointer
# holding " + json:" itself cannot be combined; no provider's field does).
PART_SEPARATOR = re.compile(r" \+ (?=(?:header|json):)")
MAX_KEY_PARTS = 4

# Mode -> where its deliveries' id is (contract: "More verification modes", the
# defaults). Keyed by `webhook.auth.mode` as stored (`SigningMode` values). Modes whose
# deliveries carry no id (`hmac`, `discord`, ...) have none.
PROVIDER_DEFAULT_KEYS: Mapping[str, str] = {
    "github": "header:X-GitHub-Delivery",
    "stripe": "json:/id",
    "standard-webhooks": "header:webhook-id",
    "shopify": "header:X-Shopify-Webhook-Id",
    "slack": "json:/event_id",
    "twitch": "header:Twitch-Eventsub-Message-Id",
    "sns": "json:/MessageId",
    # `event_ts` alone is not unique: two events of one instant differ by their name.
    "zoom": "json:/event + json:/event_ts",
    "paddle": "json:/event_id",
}


@dataclass(frozen=True)
class KeySpec:
    source: Literal["header", "json"]
    # The lower-cased header name, or the pointer's reference tokens (unescaped).
    name: str
    tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class CombinedKeySpec:
    """`<part> + <part> ...`: the key is every part's value, in order."""

    parts: tuple[KeySpec, ...]


def parse_key_spec(spec: str) -> KeySpec | CombinedKeySpec:
    """Raises ValueError saying what is wrong."""
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"at most {MAX_SPEC_CHARS} characters")
    parts = PART_SEPARATOR.split(spec)
    if len(parts) == 1:
        return _parse_part(spec)
    if len(parts) > MAX_KEY_PARTS:
        raise ValueError(f"a combined key has at most {MAX_KEY_PARTS} parts")
    return CombinedKeySpec(tuple(_parse_part(part) for part in parts))


def _parse_part(spec: str) -> KeySpec:
    source, _, rest = spec.partition(":")
    if source == "header":
        if not HEADER_NAME.match(rest):
            raise ValueError("header:<name> needs a valid header name")
        return KeySpec("header", rest.lower())
    if source == "json":
        if not rest.startswith("/"):
            raise ValueError("json:<pointer> needs a JSON pointer such as /event/id")
        if re.search(r"~[^01]|~$", rest):
            raise ValueError("in a JSON pointer ~ is written ~0 and / inside a name ~1")
        tokens = tuple(token.replace("~1", "/").replace("~0", "~") for token in rest[1:].split("/"))
        return KeySpec("json", rest, tokens)
    raise ValueError("the key is header:<name> or json:<JSON pointer>")


def resolve_pointer(document: Any, tokens: tuple[str, ...]) -> Any:
    """The value at the pointer, or None where there is none."""
    value = document
    for token in tokens:
        if isinstance(value, dict):
            if token not in value:
                return None
            value = value[token]
        elif isinstance(value, list):
            # ASCII digits only: str.isdigit accepts "¹", which int() refuses.
            if not (token.isascii() and token.isdigit()) or (
                token != "0" and token.startswith("0")
            ):
                return None
            index = int(token)
            if index >= len(value):
                return None
            value = value[index]
        else:
            return None
    return value


def extract_key(
    spec: KeySpec | CombinedKeySpec, headers: Mapping[str, str], document: Any
) -> str | None:
    """The request's key; None: it has none (it runs normally). `headers` may be any
    case-insensitive mapping (aiohttp's) or one with lower-cased names."""
    if isinstance(spec, CombinedKeySpec):
        values = [_part_value(part, headers, document) for part in spec.parts]
        # A JSON list, so that parts cannot run into each other (json, not orjson: a
        # header's lone surrogate is encoded, then the key is hashed like any such key).
        key = json.dumps(values, ensure_ascii=False, separators=(",", ":")) if all(values) else ""
    else:
        key = _part_value(spec, headers, document)
    if not key:
        return None
    if len(key) > MAX_KEY_CHARS or key.startswith(HASHED_PREFIX) or not _storable(key):
        encoded = key.encode(errors="surrogatepass")  # distinct keys, distinct bytes
        return HASHED_PREFIX + hashlib.sha256(encoded).hexdigest()
    return key


def _part_value(spec: KeySpec, headers: Mapping[str, str], document: Any) -> str:
    """One part's value; "" where the request has none."""
    if spec.source == "header":
        raw = headers.get(spec.name)
        return raw.strip() if raw is not None else ""
    value = resolve_pointer(document, spec.tokens)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return ""


def _storable(key: str) -> bool:
    """Whether PostgreSQL's text can hold the key as it is (no NUL, valid UTF-8)."""
    if "\x00" in key:
        return False
    try:
        key.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True
