"""The container and Kubernetes files, checked as far as this machine allows (there is
no Docker engine here): they parse, name real settings, and cover every service."""

import re
from pathlib import Path
from typing import Any

import yaml

from services.auth.settings import AuthSettings
from services.debugger.settings import DebuggerSettings
from services.ingress.settings import IngressSettings
from services.runner.settings import RunnerSettings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    f"FLOWHOOKS_{name.upper()}"
    for cls in (AuthSettings, DebuggerSettings, IngressSettings, RunnerSettings)
    for name in cls.model_fields
}


def flowhooks_variables(text: str) -> set[str]:
    return set(re.findall(r"\bFLOWHOOKS_[A-Z0-9_]+", text))


def test_compose_services_and_settings() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {
        "rabbitmq",
        "postgres",
        "migrate",
        "ingress",
        "auth",
        "runner",
        "debugger",
    }
    for name in ("ingress", "auth", "runner", "debugger"):
        service = compose["services"][name]
        assert service["command"] == [name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "readyz" in " ".join(service["healthcheck"]["test"])
    # FLOWHOOKS_PUBLIC_URL is compose's own input, not a service setting.
    assert flowhooks_variables(text) - {"FLOWHOOKS_PUBLIC_URL"} <= SETTINGS


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["flowhooks"]' in text
    assert re.search(r"^USER flowhooks$", text, re.MULTILINE)


def test_kubernetes_manifests() -> None:
    documents: list[dict[str, Any]] = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        text = path.read_text()
        assert flowhooks_variables(text) <= SETTINGS, path
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert set(deployments) == {"ingress", "auth", "runner", "debugger"}
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
    scaled = [d for d in documents if d["kind"] == "ScaledObject"]
    assert {t["metadata"]["queueName"] for t in scaled[0]["spec"]["triggers"]} == {
        "flowhooks.runner.sync-runs",
        "flowhooks.runner.async-runs",
    }
