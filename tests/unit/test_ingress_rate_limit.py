import pytest

from services.ingress.rate_limit import FlowRateLimiter
from shared.errors import RateLimited


def test_burst_then_refill() -> None:
    limiter = FlowRateLimiter(rate_per_s=2, burst=3)
    for _ in range(3):
        limiter.check("f1", now=100.0)
    with pytest.raises(RateLimited) as caught:
        limiter.check("f1", now=100.0)
    assert caught.value.headers() == {"Retry-After": "1"}
    assert caught.value.envelope()["error"] == "rate_limited"
    limiter.check("f2", now=100.0)  # flows are independent
    limiter.check("f1", now=100.5)  # one token back after half a second at 2/s
    with pytest.raises(RateLimited):
        limiter.check("f1", now=100.5)


def test_retry_after_reflects_slow_rates() -> None:
    limiter = FlowRateLimiter(rate_per_s=0.1, burst=1)
    limiter.check("f1", now=0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.check("f1", now=0.0)
    assert caught.value.headers() == {"Retry-After": "10"}


def test_zero_rate_means_no_limit() -> None:
    limiter = FlowRateLimiter(rate_per_s=0, burst=1)
    for _ in range(100):
        limiter.check("f1", now=0.0)
