"""`Ops.answered` counts between scrapes; a scrape exports the same series, with the
same values, as prometheus_client's counter and histogram fed one answer at a time."""

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from shared.web import _LATENCY_BUCKETS, Ops

ANSWERS = [("/a", 200, 0.0004), ("/a", 200, 0.001), ("/a", 503, 0.3), ("/b", 404, 31.0)]


def _samples(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_a_scrape_exports_what_prometheus_client_would() -> None:
    ops = Ops("ingress")
    expected = CollectorRegistry()
    counter = Counter(
        "flowhooks_http_requests", "HTTP requests answered", ["route", "status"], registry=expected
    )
    histogram = Histogram(
        "flowhooks_http_request_seconds",
        "HTTP request handling time",
        ["route"],
        registry=expected,
        buckets=_LATENCY_BUCKETS,
    )
    for route, status, seconds in ANSWERS[:2]:
        ops.answered(route, status, seconds)
        counter.labels(route, str(status)).inc()
        histogram.labels(route).observe(seconds)
    assert _samples(ops.registry) == _samples(expected)
    # Answers after a scrape add to what it exported.
    for route, status, seconds in ANSWERS[2:]:
        ops.answered(route, status, seconds)
        counter.labels(route, str(status)).inc()
        histogram.labels(route).observe(seconds)
    assert _samples(ops.registry) == _samples(expected)
    assert 'flowhooks_http_requests_total{route="/a",status="200"} 2.0' in _samples(ops.registry)
