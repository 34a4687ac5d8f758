"""`RetryPolicy`: the one description of "when to try again" that every retrying place
uses (the delivery engine's callbacks and alert notices, shared/delivery.py; `http`
steps' retries; the debugger's batch writes; the runner's confirmed records while the
broker fails over; the ingress's polls of a deduplicated request's first; auth's flow
resync; the dev supervisor's restarts), so that backoff, jitter and giving up are
written once."""

import random
from collections.abc import Callable
from dataclasses import dataclass


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
