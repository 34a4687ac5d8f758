"""`Retry-After` (RFC 9110, 10.2.3) as an `http` step's retry reads it: the parser and
the choice of the wait (shared/retry.py)."""

from datetime import UTC, datetime

import pytest

from shared.retry import RETRY_AFTER_MAX_S, parse_retry_after, retry_after_wait_s

NOW = datetime(2026, 12, 6, 21, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        ("0", 0.0),
        (" 120 ", 120.0),
        ("007", 7.0),
        ("86400", 86400.0),
        # IMF-fixdate, and the two obsolete forms a recipient must accept.
        ("Sun, 06 Dec 2026 21:00:30 GMT", 30.0),
        ("Sunday, 06-Dec-26 21:00:30 GMT", 30.0),
        ("Sun Dec  6 21:00:30 2026", 30.0),
        ("Mon, 07 Dec 2026 21:00:00 GMT", 86400.0),
        # A date already past: retry now (the policy's delay still applies).
        ("Sat, 05 Dec 2026 21:00:00 GMT", 0.0),
        ("Sunday, 06-Dec-99 21:00:30 GMT", 0.0),  # 1999: more than 50 years ahead is past
    ],
)
def test_valid_values(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-5",
        "1.5",
        "+3",
        "1e3",
        "soon",
        "5 seconds",
        "Sun, 06 Dec 2026 21:00:30 UTC",
        "Sun, 31 Feb 2026 21:00:30 GMT",
        "Sun, 06 Dec 2026 25:00:30 GMT",
        "2026-12-06T21:00:30Z",
        "Sun, 06 Dec 2026 21:00:30 GMT" + " " * 20 + "x",
        "x" * 10_000,
    ],
)
def test_malformed_values_are_ignored(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize(
    "value", ["1000000001", "99999999999999999999", "9" * 10_000, "0" * 50 + "9" * 30]
)
def test_huge_delays_read_as_the_bound_without_converting_them(value: str) -> None:
    """Thousands of digits would be past Python's int conversion limit: never converted."""
    assert parse_retry_after(value, NOW) == float(RETRY_AFTER_MAX_S)


def test_a_far_date_reads_as_the_bound() -> None:
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", NOW) == float(RETRY_AFTER_MAX_S)


@pytest.mark.parametrize(
    ("policy_delay_s", "retry_after_s", "max_s", "wait_s"),
    [
        (0.2, None, 60.0, 0.2),  # no (valid) header: the policy's delay
        (0.2, 1.0, 60.0, 1.0),  # the server's wish is the least wait
        (0.8, 0.0, 60.0, 0.8),  # ... never shorter than the policy's delay
        (0.8, 0.5, 60.0, 0.8),
        (0.2, 120.0, 60.0, 60.0),  # capped at the bound
        (90.0, 120.0, 60.0, 90.0),  # the cap never shortens the policy's own delay
        (0.2, float(RETRY_AFTER_MAX_S), 60.0, 60.0),
        (0.2, 5.0, 0.0, 0.2),  # a bound of 0: the wish is not waited for
    ],
)
def test_the_wait_chosen(
    policy_delay_s: float, retry_after_s: float | None, max_s: float, wait_s: float
) -> None:
    assert retry_after_wait_s(policy_delay_s, retry_after_s, max_s) == wait_s
