"""Per-flow token buckets, in each ingress replica: the request rate limit, the
budget of failed signature checks, and the budget of refused requests recorded.

The limits are per replica (N replicas admit up to N times the rate); that keeps the
webhook path free of a shared store. A request over a limit gets 429 with
`Retry-After` (seconds until a token is back)."""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from shared.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class _Buckets:
    """A full bucket per flow on first sight, refilled at `rate_per_s` up to `burst`;
    the least recently seen flows are forgotten past `max_flows`."""

    def __init__(self, rate_per_s: float, burst: int, max_flows: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_flows = max_flows
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0  # for metrics (services/ingress/metrics.py) and tests

    def _bucket(self, flow_id: str, now: float | None) -> _Bucket:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(flow_id)
        if bucket is None:
            bucket = self._buckets[flow_id] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_flows:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(flow_id)
            bucket.tokens = min(
                self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s
            )
            bucket.updated = now
        return bucket

    def _refusal(self, bucket: _Bucket, message: str) -> RateLimited:
        self.refused += 1
        error = RateLimited(message)
        error.retry_after_s = max(1, math.ceil((1 - bucket.tokens) / self.rate_per_s))
        return error


class FlowRateLimiter(_Buckets):
    def __init__(self, rate_per_s: float, burst: int, max_flows: int = 100_000) -> None:
        super().__init__(rate_per_s, burst, max_flows)

    def check(self, flow_id: str, now: float | None = None) -> None:
        """Take one token for `flow_id` or raise `RateLimited`."""
        if self.rate_per_s <= 0:
            return
        bucket = self._bucket(flow_id, now)
        if bucket.tokens < 1:
            raise self._refusal(
                bucket, f"more than {self.rate_per_s:g} requests a second for this flow"
            )
        bucket.tokens -= 1


class BadSignatureBudget(_Buckets):
    """Unverified large bodies a flow may have read: `burst` at once, then `rate_per_s`.
    Each one takes a token before it is read (`take`: 429 when none is left) and gives
    it back once its signature holds (`refund`), so only failed checks spend the budget,
    and concurrent forgeries cannot all slip in while one is being read: a flood of
    forged 10 MB bodies costs one read a second, not one each. Small bodies never come
    here (cheap to check), so a flood cannot lock the real sender's usual deliveries
    out."""

    def __init__(self, rate_per_s: float, burst: int, max_flows: int = 100_000) -> None:
        super().__init__(rate_per_s, burst, max_flows)

    def take(self, flow_id: str, now: float | None = None) -> None:
        """One token for a large body about to be read, or `RateLimited`."""
        if self.rate_per_s <= 0:
            return
        bucket = self._bucket(flow_id, now)
        if bucket.tokens < 1:
            raise self._refusal(
                bucket,
                "too many requests to this flow failed signature verification recently;"
                " large bodies are refused until the budget refills",
            )
        bucket.tokens -= 1

    def refund(self, flow_id: str, now: float | None = None) -> None:
        """The body's signature held: its token back."""
        if self.rate_per_s <= 0:
            return
        bucket = self._bucket(flow_id, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1)


class RefusalRecordBudget(_Buckets):
    """Requests refused by their signature that a flow may have recorded in the
    debugger: `burst` at once, then `rate_per_s`. Past it a refusal is only counted
    (`refused`), so a flood of forgeries floods neither the debugger nor the ingress's
    publishing. `rate_per_s` 0: none is recorded."""

    def __init__(self, rate_per_s: float, burst: int, max_flows: int = 100_000) -> None:
        super().__init__(rate_per_s, burst, max_flows)
        self.taken = 0  # refusals recorded, for metrics

    def take(self, flow_id: str, now: float | None = None) -> bool:
        """Whether this refusal of `flow_id` may be recorded (one token taken)."""
        if self.rate_per_s <= 0:
            self.refused += 1
            return False
        bucket = self._bucket(flow_id, now)
        if bucket.tokens < 1:
            self.refused += 1
            return False
        bucket.tokens -= 1
        self.taken += 1
        return True
