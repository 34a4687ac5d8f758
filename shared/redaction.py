"""What counts as a secret, in one place: the debugger (stored headers, query
parameters, paths, step traces) and the runner's `http` step (its trace, its errors,
what it sends after a redirect) use the same list.

A name is secret when it is one of `SECRET_HEADERS`, or when it contains one of
`SECRET_NAME_PARTS` (case-insensitive, `-` and `_` alike): `X-Gitlab-Token`,
`client_secret`, `db-password`, `X-API-KEY`, `apikey`, `access_token` ... Query
parameters also count as secret when they contain `signature` or are exactly `sig` (the
credential of a presigned S3/GCS URL or an Azure SAS), and when they are exactly `key`
or `auth` (Google's and Firebase's API keys). Signature *headers*
(`X-Hub-Signature-256`, `Stripe-Signature`) are not secret: they are HMACs of the body
that an audit wants to check again, and they do not authenticate anything else.
"""

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[redacted]"

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-access-token",
        "private-token",
        "x-auth-token",
        "x-shopify-access-token",
        "x-amz-security-token",
    }
)
# Any header or query parameter whose name contains one of these is secret.
SECRET_NAME_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "apikey",
    "authorization",
    "credential",
    "session",
    "private-key",
    "access-key",
)
# Query parameters only (see the module's docstring).
SECRET_QUERY_PARTS = ("signature",)
SECRET_QUERY_NAMES = frozenset({"sig", "key", "auth"})


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def is_secret_header(name: str, extra: Iterable[str] = ()) -> bool:
    lower = _normal(name)
    if lower in SECRET_HEADERS or any(part in lower for part in SECRET_NAME_PARTS):
        return True
    return lower in {_normal(e) for e in extra}


def is_secret_query(name: str, extra: Iterable[str] = ()) -> bool:
    lower = _normal(name)
    return (
        is_secret_header(lower, extra)
        or lower in SECRET_QUERY_NAMES
        or any(part in lower for part in SECRET_QUERY_PARTS)
    )


def redact_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The same headers (same names), secret values replaced by `REDACTED`."""
    extra = frozenset(extra)
    return {
        name: (REDACTED if is_secret_header(name, extra) else value)
        for name, value in headers.items()
    }


def redact_query(query: Mapping[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """A parsed query (`{name: value or [values]}`), secret values replaced."""
    extra = frozenset(extra)
    return {
        name: (
            ([REDACTED] * len(value) if isinstance(value, list) else REDACTED)
            if is_secret_query(str(name), extra)
            else value
        )
        for name, value in query.items()
    }


# `name=value` pairs of a query string, in any text (a URL, a URL template, an error
# message): the value runs to the next `&`, `#`, quote, whitespace or end, a template
# expression (`{{ secrets.key }}`) counting as one piece.
_QUERY_PAIR = re.compile(
    r"(?P<lead>[?&;])(?P<name>[^=&#?\s'\"<>]+)=(?P<value>(?:\{\{[^{}]{0,200}\}\}|[^&#\s'\"<>])*)"
)
# `scheme://userinfo@` (the userinfo cannot contain `/`, `?`, `#` or whitespace).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]*)@")


def redact_url_text(text: str, extra: Iterable[str] = ()) -> str:
    """`text` (a URL, a URL template, a path, a message) with the userinfo of any URL in
    it replaced and the values of secret query parameters replaced; the rest, other
    query parameters included, unchanged. Works on text that is not a valid URL (a
    template such as `https://x/?key={{ secrets.key }}`)."""
    if "@" not in text and "=" not in text:
        return text
    extra = frozenset(extra)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)

    def pair(m: re.Match[str]) -> str:
        if is_secret_query(_unquote_name(m["name"]), extra):
            return f"{m['lead']}{m['name']}={REDACTED}"
        return m.group(0)

    return _QUERY_PAIR.sub(pair, text)


def _unquote_name(name: str) -> str:
    return unquote_plus(name) if "%" in name or "+" in name else name


# Anything that looks like an absolute URL in free text.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def safe_url(url: str) -> str:
    """What an error message may say about `url`: scheme, host, port and path; never
    the userinfo, the query or the fragment. Never raises, whatever `url` is."""
    cut = re.split(r"[?#]", url, maxsplit=1)[0]
    cut = _USERINFO.sub(lambda m: m["scheme"], cut)
    return cut[:300] + ("..." if len(cut) > 300 else "")


def scrub_urls(text: str) -> str:
    """`text` with every absolute URL in it reduced to `safe_url`, and any remaining
    secret query parameter redacted (for exception messages that quote a URL)."""
    return redact_url_text(_URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), text))
