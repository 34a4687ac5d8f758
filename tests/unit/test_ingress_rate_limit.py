import pytest

from services.ingress.rate_limit import BadSignatureBudget, FlowRateLimiter, RefusalRecordBudget
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
    assert limiter.refused == 2  # counted for the metrics


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
    budget.take("f1", now=0.0)
    budget.refund("f1", now=0.0)  # its signature held: no cost
    budget.take("f1", now=0.0)
    budget.take("f1", now=0.0)  # two failed checks (or being read at once)
    with pytest.raises(RateLimited) as refused:
        budget.take("f1", now=0.0)
    assert refused.value.headers() == {"Retry-After": "1"}
    assert "failed signature verification" in refused.value.message
    budget.take("f2", now=0.0)  # flows are independent
    with pytest.raises(RateLimited):
        budget.take("f1", now=0.9)
    budget.take("f1", now=1.0)  # one a second comes back
    budget.refund("f1", now=1.0)
    budget.refund("f1", now=1.0)
    budget.refund("f1", now=1.0)  # never past the burst
    budget.take("f1", now=1.0)
    budget.take("f1", now=1.0)
    with pytest.raises(RateLimited):
        budget.take("f1", now=1.0)
    assert budget.refused == 3  # counted for the metrics


def test_bad_signature_budget_off_at_zero() -> None:
    budget = BadSignatureBudget(rate_per_s=0, burst=1)
    for _ in range(5):
        budget.take("f1")


def test_refusal_records_bounded_per_flow_burst_then_rate() -> None:
    """At most `burst` refusals recorded at once, then `rate_per_s`; the rest counted."""
    budget = RefusalRecordBudget(rate_per_s=5, burst=20)
    recorded = [budget.take("f1", now=100.0) for _ in range(50)]
    assert recorded == [True] * 20 + [False] * 30
    assert budget.take("f2", now=100.0) is True  # flows are independent
    # A flood over one second more: five come back, no more.
    flood = [budget.take("f1", now=100.0 + i / 100) for i in range(1, 101)]
    assert sum(flood) == 5
    assert flood[19] is True and flood[18] is False  # the first back after 0.2 s
    assert (budget.taken, budget.refused) == (26, 125)  # counted for the metrics
    # Quiet for a while: the burst is back, never more.
    assert [budget.take("f1", now=1000.0) for _ in range(21)] == [True] * 20 + [False]


def test_refusal_records_none_at_zero_rate() -> None:
    budget = RefusalRecordBudget(rate_per_s=0, burst=20)
    assert [budget.take("f1", now=0.0) for _ in range(3)] == [False] * 3
    assert (budget.taken, budget.refused) == (0, 3)
