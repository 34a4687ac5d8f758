"""`RetryPolicy`: the one description of "when to try again" that every retrying place
uses (the delivery engine's callbacks and alert notices, shared/delivery.py; `http`
steps' retries; the debugger's batch writes; the runner's confirmed records while the
broker fails over; the ingress's polls of a deduplicated request's first; auth's flow
resync; the dev supervisor's restarts), so that backoff, jitter and giving up are
written once."""

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again: after the `n`-th failed attempt the wait's
    cap is `delays_s[n - 1]` (past the list, its last one repeats); with `jitter` the
    wait is drawn uniform in [0, cap) (full jitter: the retries of deliveries that failed
    together do not come back together), without it the wait is the cap. A policy gives
    up after `max_attempts` attempts in all, and before an attempt that would start more
    than `give_up_s` after the first (None: no such bound)."""

    delays_s: tuple[float, ...]
    jitter: bool = False
    max_attempts: int | None = None
    give_up_s: float | None = None

    def __post_init__(self) -> None:
        if not self.delays_s or any(delay < 0 for delay in self.delays_s):
            raise ValueError("a retry policy needs one or more delays, none negative")

    @classmethod
    def doubling(
        cls,
        first_s: float,
        longest_s: float,
        *,
        jitter: bool = False,
        max_attempts: int | None = None,
        give_up_s: float | None = None,
    ) -> "RetryPolicy":
        """Caps doubling from `first_s`, at most `longest_s`."""
        if first_s <= 0:
            return cls((0.0,), jitter, max_attempts, give_up_s)
        delays: list[float] = []
        delay = first_s
        while delay < longest_s:
            delays.append(delay)
            delay *= 2
        delays.append(longest_s)
        return cls(tuple(delays), jitter, max_attempts, give_up_s)

    def cap_s(self, failed_attempts: int) -> float:
        """The cap of the wait after the `failed_attempts`-th failed attempt."""
        return float(self.delays_s[min(max(failed_attempts, 1), len(self.delays_s)) - 1])

    def delay_s(self, failed_attempts: int, rng: Callable[[], float] = random.random) -> float:
        """The wait after the `failed_attempts`-th failed attempt (`rng` in [0, 1))."""
        cap = self.cap_s(failed_attempts)
        return rng() * cap if self.jitter else cap

    def retries_after(self, attempts: int) -> bool:
        """Whether another attempt may follow `attempts` attempts, as far as their count
        goes."""
        return self.max_attempts is None or attempts < self.max_attempts


# --- Retry-After (RFC 9110, 10.2.3): what an answer asks of the next attempt -------------

# Delta-seconds past this are read as this (some 31 years: later than any deadline), so
# that a header of thousands of digits is never converted to an integer.
RETRY_AFTER_MAX_S = 10**9
_DELTA_SECONDS = re.compile(r"[0-9]+")
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# The three forms of an HTTP-date a recipient must accept: IMF-fixdate (the one senders
# use), then the obsolete RFC 850 and asctime forms.
_IMF_FIXDATE = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday),"
    rf" ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(rf"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")
_MONTHS = ("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split()


def _http_date(text: str, now: datetime) -> datetime | None:
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        # RFC 9110: a two-digit year more than 50 years ahead is in the past century.
        year_number = now.year // 100 * 100 + int(short_year)
        if year_number > now.year + 50:
            year_number -= 100
        year = str(year_number)
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        return datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=UTC,
        )
    except ValueError:  # 31 Feb, 25:00:00, ...
        return None


def parse_retry_after(value: str, now: datetime) -> float | None:
    """The seconds from `now` (aware) that a `Retry-After` value asks to wait: its
    delta-seconds, or the time until its HTTP-date (0 for a date already past). None for
    anything else (a negative or fractional number, another date format, garbage): such a
    header is ignored. Delta-seconds past `RETRY_AFTER_MAX_S` read as that bound."""
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0")
        if len(digits) > len(str(RETRY_AFTER_MAX_S)):
            return float(RETRY_AFTER_MAX_S)
        return float(min(int(digits or "0"), RETRY_AFTER_MAX_S))
    if len(text) > 40:  # longer than any HTTP-date
        return None
    moment = _http_date(text, now)
    if moment is None:
        return None
    return min(max((moment - now).total_seconds(), 0.0), float(RETRY_AFTER_MAX_S))


def retry_after_wait_s(policy_delay_s: float, retry_after_s: float | None, max_s: float) -> float:
    """The wait before a retry: the policy's delay, or longer when the answer's
    Retry-After asks for longer (the server's wish is the least wait: an earlier attempt
    would only be refused again), that wish capped at `max_s`. The cap never shortens the
    policy's own delay."""
    if retry_after_s is None:
        return policy_delay_s
    return max(policy_delay_s, min(retry_after_s, max_s))
