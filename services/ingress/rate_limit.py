"""Per-flow request rate limit: a token bucket per flow, in each ingress replica.

The limit is per replica (N replicas admit up to N times the rate); that keeps the
webhook path free of a shared store. A request over the limit gets 429 with
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


class FlowRateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_flows: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_flows = max_flows
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, flow_id: str, now: float | None = None) -> None:
        """Take one token for `flow_id` or raise `RateLimited`."""
        if self.rate_per_s <= 0:
            return
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
        if bucket.tokens < 1:
            error = RateLimited(f"more than {self.rate_per_s:g} requests a second for this flow")
            error.retry_after_s = max(1, math.ceil((1 - bucket.tokens) / self.rate_per_s))
            raise error
        bucket.tokens -= 1
