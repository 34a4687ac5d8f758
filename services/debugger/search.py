"""The search parameters of a flow's request listing, parsed (pure functions).

- `match=<JSON>`: the stored parsed input must contain it (jsonb `@>`: objects match by
  subset at every level, arrays by elements), e.g. `{"customer": {"id": 7}}`.
- `header=Name:value` (repeatable, all must hold): a stored header equals the value.
  Names are case-insensitive (the ingress stores them lower-cased), values exact;
  redacted headers are stored as `[REDACTED]`, so their values cannot be searched.
"""

from collections.abc import Sequence
from typing import Any

import orjson

from services.debugger.redact import clean_json, clean_text
from shared.errors import BadRequest

# RFC 9110 token characters: what a header name may hold.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def parse_match(value: str | None) -> str | None:
    """`match` as JSON text for a jsonb parameter; None when absent."""
    if value is None:
        return None
    try:
        parsed: Any = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"match must be JSON: {exc}", data={"field": "match"}) from None
    # Stored input has its NULs replaced (PostgreSQL cannot hold them): so has the match.
    return orjson.dumps(clean_json(parsed)).decode()


def parse_headers(values: Sequence[str]) -> str | None:
    """Every `header=Name:value` as one JSON object for a jsonb containment; None when
    there is none."""
    wanted: dict[str, str] = {}
    for raw in values:
        name, colon, header_value = raw.partition(":")
        name = name.strip().lower()
        if not colon or not name or not set(name) <= _TOKEN:
            raise BadRequest(
                "header must be Name:value, e.g. X-GitHub-Event:push", data={"field": "header"}
            )
        # Values as the ingress stores them: surrounding blanks are not part of a value.
        header_value = clean_text(header_value.strip())
        if wanted.setdefault(name, header_value) != header_value:
            # A request has one value per name (repeated headers are stored joined by
            # ", "), so two different values can never both match.
            raise BadRequest(
                f"header {name} is given twice with different values", data={"field": "header"}
            )
    return orjson.dumps(wanted).decode() if wanted else None
