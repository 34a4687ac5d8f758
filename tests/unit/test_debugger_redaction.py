"""shared/redaction.py: the one secret list of the debugger and the http step."""

import pytest

from shared.redaction import (
    REDACTED,
    is_secret_header,
    is_secret_query,
    redact_headers,
    redact_query,
    redact_url_text,
    safe_url,
    scrub_urls,
)


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "X-Api-Key",
        "Api-Key",
        "X-Access-Token",
        "Private-Token",
        "X-Auth-Token",
        "X-Shopify-Access-Token",
        "X-Amz-Security-Token",
        "X-Gitlab-Token",
        "client_secret",
        "X-DB-PASSWORD",
        "x_api_key",
        "apikey",
        "X-Session-Id",
    ],
)
def test_secret_headers(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize(
    "name", ["Content-Type", "User-Agent", "X-Hub-Signature-256", "Stripe-Signature", "X-Key-Id"]
)
def test_not_secret_headers(name: str) -> None:
    assert not is_secret_header(name)


def test_query_names() -> None:
    assert all(
        is_secret_query(n) for n in ("key", "sig", "X-Amz-Signature", "access_token", "auth")
    )
    assert not any(is_secret_query(n) for n in ("page", "q", "keyword"))
    assert is_secret_query("tenant", extra={"Tenant"})


def test_redact_headers_and_query() -> None:
    assert redact_headers({"X-Api-Key": "s", "A": "b"}) == {"X-Api-Key": REDACTED, "A": "b"}
    assert redact_query({"token": ["a", "b"], "page": "1"}) == {
        "token": [REDACTED, REDACTED],
        "page": "1",
    }


def test_redact_url_text() -> None:
    url = "https://u:pw@api.example/v1?api_key=S&page=2&access%5Ftoken=S#frag"
    assert redact_url_text(url) == (
        f"https://{REDACTED}@api.example/v1?api_key={REDACTED}&page=2&access%5Ftoken={REDACTED}#frag"
    )
    # A template: the expression counts as one value.
    assert redact_url_text("https://x/?apiKey={{ s.key }}&q={{ web1.q }}") == (
        f"https://x/?apiKey={REDACTED}&q={{{{ web1.q }}}}"
    )
    assert redact_url_text("/v1/flow-webhook/x") == "/v1/flow-webhook/x"


def test_safe_url_and_scrub() -> None:
    assert safe_url("https://u:pw@h.example:8443/p?token=S#f") == "https://h.example:8443/p"
    assert safe_url("not a url \\ at all?x") == "not a url \\ at all"
    assert scrub_urls("Cannot connect to https://u:pw@h.example/a?x=1 (refused)") == (
        "Cannot connect to https://h.example/a (refused)"
    )
    assert scrub_urls("bad value password=S") == "bad value password=S"  # not a query
