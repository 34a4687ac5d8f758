"""The chart's series (services/debugger/stats.py) without a database: window bounds,
rows to buckets, and the CLI's text of the same numbers (`flowhooks requests stats`)."""

from datetime import UTC, datetime, timedelta

from cli.commands import series_text
from services.debugger.records import flow_from_event
from services.debugger.stats import WINDOWS, bounds, series_from_rows
from shared.schemas.access import FlowChanged, FlowWebhookSettings

NOW = datetime(2026, 12, 6, 22, 17, 42, tzinfo=UTC)


def test_windows_are_bounded_and_aligned() -> None:
    assert {name: w.buckets for name, w in WINDOWS.items()} == {"1h": 60, "24h": 96, "7d": 168}
    since, until = bounds(WINDOWS["1h"], NOW)
    # Ends with the current minute, whole minutes from the origin.
    assert (since, until) == (
        datetime(2026, 12, 6, 21, 18, tzinfo=UTC),
        datetime(2026, 12, 6, 22, 18, tzinfo=UTC),
    )
    since, until = bounds(WINDOWS["24h"], NOW)
    assert until == datetime(2026, 12, 6, 22, 30, tzinfo=UTC)
    assert until - since == timedelta(days=1)
    since, until = bounds(WINDOWS["7d"], NOW)
    assert until == datetime(2026, 12, 6, 23, 0, tzinfo=UTC)


def test_rows_become_every_bucket_with_totals() -> None:
    window = WINDOWS["1h"]
    since, _ = bounds(window, NOW)
    last = since + timedelta(minutes=59)
    counts = [
        {"bucket": since, "outcome": "succeeded", "n": 2},
        {"bucket": last, "outcome": "succeeded", "n": 1},
        {"bucket": last, "outcome": "failed", "n": 3},
    ]
    percentiles = [
        {"level": 0, "bucket": since, "p": [10.0, 20.0, 30.0]},
        {"level": 0, "bucket": last, "p": [1.23456, 2.0, 3.0]},
        {"level": 1, "bucket": None, "p": [2.0, 25.0, 29.5]},
    ]
    series = series_from_rows(window, since, counts, percentiles)
    assert (series["total"], series["by_outcome"]) == (6, {"succeeded": 3, "failed": 3})
    assert series["latency_ms"] == {"p50": 2.0, "p95": 25.0, "p99": 29.5}
    assert len(series["buckets"]) == 60
    first, middle, end = series["buckets"][0], series["buckets"][30], series["buckets"][59]
    assert first == {
        "start": since,
        "total": 2,
        "by_outcome": {"succeeded": 2},
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0},
        "per_minute": 2.0,
    }
    assert middle == {
        "start": since + timedelta(minutes=30),
        "total": 0,
        "by_outcome": {},
        "latency_ms": None,
        "per_minute": 0.0,
    }
    assert end["by_outcome"] == {"succeeded": 1, "failed": 3}
    assert end["latency_ms"] == {"p50": 1.235, "p95": 2.0, "p99": 3.0}
    # 15-minute buckets: the rate is per minute.
    day = WINDOWS["24h"]
    day_since, _ = bounds(day, NOW)
    counts = [{"bucket": day_since, "outcome": "succeeded", "n": 30}]
    assert series_from_rows(day, day_since, counts, [])["buckets"][0]["per_minute"] == 2.0


def test_cli_text_of_a_series() -> None:
    window = WINDOWS["1h"]
    since, _ = bounds(window, NOW)
    counts = [
        {"bucket": since, "outcome": "succeeded", "n": 2},
        {"bucket": since, "outcome": "failed", "n": 1},
    ]
    percentiles = [
        {"level": 0, "bucket": since, "p": [10.0, 20.0, 30.0]},
        {"level": 1, "bucket": None, "p": [10.0, 20.0, 30.0]},
    ]
    series = series_from_rows(window, since, counts, percentiles)
    as_json = {
        **series,
        "since": series["since"].isoformat(),
        "until": series["until"].isoformat(),
        "buckets": [{**b, "start": b["start"].isoformat()} for b in series["buckets"]],
    }
    assert series_text(as_json).splitlines() == [
        "window:   1h (2026-12-06 21:18:00 to 2026-12-06 22:18:00 UTC, buckets of 60 s)",
        "requests: 3  failed 1  succeeded 2",
        "latency:  p50 10.0 ms  p95 20.0 ms  p99 30.0 ms",
        "",
        "START                N  PER_MIN  P50   P95   P99   OUTCOMES",
        "2026-12-06 21:18:00  3  3.0      10.0  20.0  30.0  failed=1,succeeded=2",
    ]


def test_flow_changed_carries_name_and_status_to_the_debugger() -> None:
    settings = FlowWebhookSettings(flow_id="f", workspace_id="w", version=3, status="paused")
    flow_id, workspace_id = (
        "6f1c1f5e-8a53-4c53-9d0e-0d1f5b0f2d4a",
        "0b3b7c39-3f0e-4f59-9d36-6a4d2f5a9e11",
    )
    change = FlowChanged(
        flow_id=flow_id,
        workspace_id=workspace_id,
        version=3,
        token_hash="h",
        settings=settings,
        name="orders",
    )
    row = flow_from_event(change.model_dump_json().encode())
    assert (row.name, row.status, row.version, row.deleted) == ("orders", "paused", 3, False)
    # An older runner's event: no name, still a row.
    older = change.model_copy(update={"name": None})
    assert flow_from_event(older.model_dump_json().encode()).name is None
