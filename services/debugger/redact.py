"""What the debugger never stores, and how much it stores at most.

- The Authorization header (dropped); the values of secret headers and query parameters
  (replaced by "[redacted]", after `shared/redaction.py`: one list for the debugger and
  the runner's `http` step, plus the operator's extra names).
- NUL characters (PostgreSQL text cannot hold them): replaced by U+FFFD.
- Beyond a field's size cap: text is cut (never inside a character) and JSON replaced
  by a marker `{"truncated": true, "size": <bytes of the JSON text>, "preview": "<its
  first bytes>"}`; either way the caller records the original size.
"""

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import orjson

from shared import redaction
from shared.redaction import REDACTED

__all__ = ["REDACTED", "redact_query", "stored_headers"]

ALWAYS_DROPPED = frozenset({"authorization"})


def stored_headers(headers: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The headers as the debugger stores them: names lower-cased, `authorization`
    dropped, secret values replaced (`shared.redaction.redact_headers` only replaces)."""
    extra = frozenset(extra)
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in ALWAYS_DROPPED:
            continue
        cleaned[lower] = REDACTED if is_secret_header(lower, extra) else value
    return cleaned


@lru_cache(maxsize=4096)
def is_secret_header(name: str, extra: frozenset[str]) -> bool:
    """`shared/redaction.py`'s answer, remembered: most requests carry the same few
    header names, and the answer is per-row work at ingest (bounded: names seen
    beyond the cache's size are simply asked again)."""
    return redaction.is_secret_header(name, extra)


def redact_query(query: dict[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    return redaction.redact_query(query, extra)


def clean_text(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def clean_json(value: Any) -> Any:
    """`value` without NUL characters in any string (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    return value


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` of at most `max_bytes` UTF-8 bytes."""
    if len(text) * 4 <= max_bytes:
        return text
    return text.encode()[:max_bytes].decode(errors="ignore")


def cut_body(raw: str, max_bytes: int) -> tuple[str, bool]:
    """`raw` (NULs replaced) cut to `max_bytes` UTF-8 bytes, and whether it was cut."""
    text, size = cut_text(raw, max_bytes)
    return text, size is not None


def cut_text(text: str, max_bytes: int) -> tuple[str, int | None]:
    """`text` (NULs replaced) cut to `max_bytes` UTF-8 bytes, and its original size in
    bytes when it was cut (None when it fits)."""
    cleaned = clean_text(text)
    if len(cleaned) * 4 <= max_bytes:  # cannot be over: skip the encoding
        return cleaned, None
    encoded = cleaned.encode()
    if len(encoded) <= max_bytes:
        return cleaned, None
    size = len(text.encode()) if "\x00" in text else len(encoded)
    return encoded[:max_bytes].decode(errors="ignore"), size


def marker(text: str, max_bytes: int) -> Any:
    """What is stored in place of the JSON `text` that is larger than `max_bytes`: a
    marker with the original size and a preview (the text's beginning) that keeps the
    stored marker within about `max_bytes`."""
    size = len(text.encode())
    budget = max(max_bytes - 64, 0)
    preview = _cut(text, budget)
    while True:
        value = {"truncated": True, "size": size, "preview": preview}
        encoded = len(orjson.dumps(value))
        if encoded <= max_bytes or not preview:
            return value
        # JSON escaping made it longer (quotes, backslashes): shrink in proportion.
        budget = int(len(preview.encode()) * max_bytes / encoded) - 64
        preview = _cut(preview, max(budget, 0))


def _json_bytes(value: Any) -> bytes:
    data = orjson.dumps(value)
    # Fast path: only walk the value when a NUL is actually in it.
    return orjson.dumps(clean_json(value)) if b"\\u0000" in data else data


def capped_json(value: Any, max_bytes: int) -> tuple[str, int | None]:
    """`value` as JSON text for a jsonb column (NULs replaced), or the marker when it is
    larger than `max_bytes`; and its original size when it was replaced."""
    data = _json_bytes(value)
    if len(data) <= max_bytes:
        return data.decode(), None
    return orjson.dumps(marker(data.decode(), max_bytes)).decode(), len(data)


def capped_value(value: Any, max_bytes: int) -> tuple[Any, int | None]:
    """Like `capped_json`, for a value inside a larger JSON document (a step's input or
    output): the value itself, or the marker."""
    data = _json_bytes(value)
    if len(data) <= max_bytes:
        return value, None
    return marker(data.decode(), max_bytes), len(data)
