"""bench/pattern.py's report: each of the pattern's processes, RabbitMQ, their sum and the
ratio to the ceiling of the same run."""

from bench import pattern


def test_the_pattern_table_gives_each_process_and_the_ratio() -> None:
    ceiling = {"rps": 20000.0, "generator": "wrk"}
    cpu = {"pattern_ingress": 0.06, "pattern_worker": 0.03, "pattern_sink": 0.01, "rabbitmq": 0.05}
    found = {"rps": 5000.0, "p50_ms": 5.0, "p99_ms": 15.0, "items_per_message": 16.5}
    lines = pattern.table(ceiling, {"sync": {**found, "cpu_ms_per_request": cpu}})
    assert lines[2:] == [
        "| the pattern | sync |",
        "|---|---|",
        "| CPU ms a request: pattern_ingress | 0.060 |",
        "| CPU ms a request: pattern_worker | 0.030 |",
        "| CPU ms a request: pattern_sink | 0.010 |",
        "| CPU ms a request: rabbitmq | 0.050 |",
        "| CPU ms a request: all | 0.150 |",
        "| req/s (ratio to ceiling) | 5000.0 (0.250) |",
        "| items a message (each of its 2-3 hops) | 16.5 |",
        "| p50 / p99 ms | 5.0 / 15.0 |",
    ]


def test_make_bench_puts_each_hop_beside_the_pattern_process_doing_its_part() -> None:
    from bench.__main__ import pattern_table

    ours = {"ingress": 0.2, "runner": 0.3, "debugger": 0.1, "postgresql": 0.05, "rabbitmq": 0.1}
    floor = {
        "pattern_ingress": 0.05,
        "pattern_worker": 0.03,
        "pattern_sink": 0.01,
        "rabbitmq": 0.04,
    }
    results = {kind: {"cpu_ms_per_request": ours} for kind in ("sync", "async")} | {
        f"pattern_{kind}": {"cpu_ms_per_request": floor} for kind in ("sync", "async")
    }
    assert pattern_table(results) == [
        "| CPU ms a request: flowhooks / the pattern (x) | sync | async |",
        "|---|---|---|",
        "| ingress | 0.200 / 0.050 (4.0) | 0.200 / 0.050 (4.0) |",
        "| runner (supervisor and workers) / worker"
        " | 0.300 / 0.030 (10.0) | 0.300 / 0.030 (10.0) |",
        "| debugger and PostgreSQL / sink | 0.150 / 0.010 (15.0) | 0.150 / 0.010 (15.0) |",
        "| RabbitMQ | 0.100 / 0.040 (2.5) | 0.100 / 0.040 (2.5) |",
        "| all | 0.750 / 0.130 (5.8) | 0.750 / 0.130 (5.8) |",
    ]
