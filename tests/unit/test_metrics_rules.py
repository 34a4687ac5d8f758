"""The dashboard and the alert rules in deploy/ name only metrics the services export,
and the labels and outcome words they match on exist. The exported names come from
registries built by the same code the services' `wire` runs (the kernel's metrics and
each service's own), so renaming a metric without the deploy files fails here."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from services.debugger.metrics import DebuggerMetrics, dead_letter_reason
from services.ingress.metrics import (
    MODES,
    OUTCOMES,
    RATE_LIMIT_REASONS,
    IngressMetrics,
    error_outcome,
)
from services.registry import NAMES as SERVICES
from services.runner.metrics import RunnerMetrics
from shared.service import Kernel
from shared.settings import ServiceSettings
from shared.web import OPS, base_app

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "flowhooks-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "flowhooks.json"
# What each kind of metric family exposes as series (the text format's suffixes).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}
METRIC = re.compile(r"\b((?:flowhooks|process|python)_[a-z0-9_]+)\b")
PROMQL_WORDS = {"by", "without", "on", "ignoring"}


def service_registry(service: str) -> CollectorRegistry:
    """A service's registry as `ServiceSpec.create_app` and its `wire` fill it (the
    components whose counters are read at scrape time are stand-ins)."""
    app = base_app(service)
    kernel: Kernel[ServiceSettings] = Kernel(service, ServiceSettings(), app)
    registry = app[OPS].registry
    assert kernel.metrics.registry is registry
    zeros: Any = SimpleNamespace(
        workers_killed=0,
        workers_lost=0,
        workers_started=0,
        workers_drained=0,
        worker_pids=[],
        workspaces_holding=0,
        runs_retried=0,
        runs_parked=0,
        runs_running=0,
        delays=None,
        attempts_failed=0,
        given_up=0,
        deferred=0,
        opened=0,
        stored=0,
        dropped=0,
        rejected=0,
        write_failures=0,
        writes=0,
        pending=0,
        refused=0,
        refused_runs=0,
        refused_bytes=0,
        refused_sync=0,
        waiters_refused=0,
        taken=0,
    )
    # The components one reaches through another (the senders' guards, the webhook's
    # limiters, backlog and deduplicator).
    zeros.guard = zeros.rate_limiter = zeros.bad_signatures = zeros
    zeros.backlog = zeros.dedup = zeros
    zeros.refusals = zeros.budget = zeros  # the webhook's refusal recorder and its budget
    if service == "ingress":
        IngressMetrics(registry).watch(zeros)
    elif service == "runner":
        RunnerMetrics(registry).watch(zeros, zeros, zeros)
    elif service == "debugger":
        DebuggerMetrics(registry).watch(zeros, zeros, zeros)
    return registry


def exported() -> dict[str, set[str]]:
    """Every series name any service exports, with the label names it carries."""
    names: dict[str, set[str]] = {}
    for service in SERVICES:
        registry = service_registry(service)
        # A labelled metric with no child yet has no samples: take its declared labels.
        declared = {
            name: set(getattr(collector, "_labelnames", ()))
            for name, collector in registry._names_to_collectors.items()
        }
        for family in registry.collect():
            labels = declared.get(family.name, set())
            for sample in family.samples:
                labels |= set(sample.labels)
            for suffix in SUFFIXES[family.type]:
                known = names.setdefault(family.name + suffix, set())
                known |= labels | ({"le"} if suffix == "_bucket" else set())
    return names


EXPORTED = exported()


def rule_expressions() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def test_the_services_export_the_contracts_metrics() -> None:
    for name in (
        "flowhooks_webhook_requests_total",
        "flowhooks_run_duration_seconds_bucket",
        "flowhooks_queue_messages",
        "flowhooks_rpc_duration_seconds_bucket",
        "flowhooks_access_cache_total",
        "flowhooks_debugger_ingest_lag_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in EXPORTED, name


def test_the_isolation_counters_are_exported() -> None:
    """What the fair pool, the parked runs, the delivery guards and the per-workspace
    bounds count (issue 20), each on its service's /metrics."""
    for name in (
        "flowhooks_runner_workers_started_total",
        "flowhooks_runner_workers_drained_total",
        "flowhooks_runner_workers_alive",
        "flowhooks_runner_workspaces_holding_workers",
        "flowhooks_runner_runs_in_pool",
        "flowhooks_runner_runs_parked_total",
        "flowhooks_runner_runs_stored_waiting_total",
        "flowhooks_runner_runs_resumed_total",
        "flowhooks_callbacks_deferred_total",
        "flowhooks_callback_circuits_opened_total",
        "flowhooks_alert_notices_deferred_total",
        "flowhooks_alert_circuits_opened_total",
        "flowhooks_debugger_list_requests_refused_total",
    ):
        assert name in EXPORTED, name
    assert EXPORTED["flowhooks_webhook_rate_limited_total"] == {"reason"}


def test_rate_limited_reasons_are_a_closed_set_exported_at_zero() -> None:
    registry = service_registry("ingress")
    reasons = {
        sample.labels["reason"]
        for family in registry.collect()
        if family.name == "flowhooks_webhook_rate_limited"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert reasons == set(RATE_LIMIT_REASONS)  # every one, at 0 from the start
    # Each reason reads its own component's count.
    counts: Any = SimpleNamespace(
        rate_limiter=SimpleNamespace(refused=1),
        bad_signatures=SimpleNamespace(refused=2),
        backlog=SimpleNamespace(refused_runs=3, refused_bytes=4, refused_sync=5),
        dedup=SimpleNamespace(waiters_refused=6),
    )
    registry = CollectorRegistry()
    IngressMetrics(registry).watch(counts)
    assert {
        reason: registry.get_sample_value(
            "flowhooks_webhook_rate_limited_total", {"reason": reason}
        )
        for reason in RATE_LIMIT_REASONS
    } == {
        "flow_rate": 1,
        "bad_signatures": 2,
        "queued_runs": 3,
        "queued_bytes": 4,
        "sync_requests": 5,
        "dedup_waiting": 6,
    }


@pytest.mark.parametrize(
    "expressions", [rule_expressions, dashboard_expressions], ids=["rules", "dashboard"]
)
def test_every_expression_names_exported_metrics_and_labels(expressions: Any) -> None:
    found = expressions()
    assert found
    for expr in found:
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert name in EXPORTED, f"{name} (in {expr!r}) is exported by no service"
        # Labels in matchers and groupings: exported by at least one named metric.
        labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)\s*\"", expr))
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels |= {label.strip() for label in grouping.split(",") if label.strip()}
        # `instance` and `job` are added by Prometheus at scrape time.
        carried = set().union(*(EXPORTED[name] for name in names)) | {"instance", "job"}
        unknown = labels - PROMQL_WORDS - carried
        assert not unknown, f"{expr!r} uses labels {sorted(unknown)} its metrics do not carry"


def test_outcome_words_in_the_rules_are_the_ingress_words() -> None:
    for expr in rule_expressions() + dashboard_expressions():
        for words in re.findall(r'outcome\s*=~?\s*"([^"]*)"', expr):
            assert set(words.split("|")) <= set(OUTCOMES), expr


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: the `prometheus` package)")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_error_outcomes_are_a_closed_set() -> None:
    assert [error_outcome(s) for s in (400, 401, 403, 404, 408, 413, 429, 500, 503, 504)] == [
        "rejected",
        "unauthorized",
        "forbidden",
        "not_found",
        "rejected",
        "rejected",
        "rate_limited",
        "error",
        "unavailable",
        "timeout",
    ]
    assert set(MODES) == {"sync", "async", "unknown"}


def test_dead_letter_reasons_are_a_closed_set() -> None:
    assert dead_letter_reason({"x-death": [{"reason": "delivery_limit"}]}) == "delivery_limit"
    assert dead_letter_reason({"x-death": [{"reason": b"expired"}]}) == "expired"
    assert dead_letter_reason({"x-death": [{"reason": "anything-new"}]}) == "other"
    assert dead_letter_reason(None) == "other"
