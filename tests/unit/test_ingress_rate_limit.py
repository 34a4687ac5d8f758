import pytest

from services.ingress.rate_limit import BadSignatureBudget, FlowRateLimiter
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


def test_bad_signature_budget_refuses_once_spent_and_refills() -> None:
    budget = BadSignatureBudget(rate_per_s=1, burst=2)
    budget.check("f1", now=0.0)  # a fresh flow has its whole budget; checking is free
    budget.check("f1", now=0.0)
    budget.spend("f1", now=0.0)
    budget.check("f1", now=0.0)
    budget.spend("f1", now=0.0)
    with pytest.raises(RateLimited) as refused:
        budget.check("f1", now=0.0)
    assert refused.value.headers() == {"Retry-After": "1"}
    assert "failed signature verification" in refused.value.message
    budget.check("f2", now=0.0)  # flows are independent
    budget.spend("f1", now=0.2)  # spending an empty budget keeps it at empty
    with pytest.raises(RateLimited):
        budget.check("f1", now=1.1)
    budget.check("f1", now=1.3)  # one failure a second comes back


def test_bad_signature_budget_off_at_zero() -> None:
    budget = BadSignatureBudget(rate_per_s=0, burst=1)
    for _ in range(5):
        budget.spend("f1")
        budget.check("f1")
