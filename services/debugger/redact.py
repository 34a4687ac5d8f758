"""What the debugger never stores: the Authorization header (dropped), the values of
secret-bearing headers (replaced), NUL characters (PostgreSQL text cannot hold them),
and raw bodies beyond the configured size (cut, and marked)."""

from typing import Any

import orjson

REDACTED = "[redacted]"
ALWAYS_DROPPED = frozenset({"authorization"})


def redact_headers(headers: dict[str, str], redact: frozenset[str]) -> dict[str, str]:
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in ALWAYS_DROPPED:
            continue
        cleaned[lower] = REDACTED if lower in redact else value
    return cleaned


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


def json_text(value: Any) -> str:
    text = orjson.dumps(value).decode()
    # Fast path: only walk the value when a NUL is actually in it.
    return orjson.dumps(clean_json(value)).decode() if "\\u0000" in text else text


def cut_body(raw: str, max_bytes: int) -> tuple[str, bool]:
    encoded = raw.encode()
    if len(encoded) <= max_bytes:
        return clean_text(raw), False
    return clean_text(encoded[:max_bytes].decode(errors="ignore")), True
