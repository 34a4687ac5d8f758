"""The container and Kubernetes files, checked as far as this machine allows (there is
no Docker engine here): they parse, name real settings, cover every service, give each
service only its own secrets, ship no password, and harden every pod."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services import registry
from shared import tracing
from shared.settings import env_names

REPO = Path(__file__).resolve().parents[2]
SERVICES = registry.NAMES
SETTINGS = {name for spec in registry.specs() for name in env_names(spec.settings)}
AMQP, DATABASE, TOKEN_KEYS, SECRETS_KEY = (
    "FLOWHOOKS_AMQP_URL",
    "FLOWHOOKS_DATABASE_URL",
    "FLOWHOOKS_RUNNER_TOKEN_KEYS",
    "FLOWHOOKS_WEBHOOK_SECRETS_KEY",
)
# What each service must get, and nothing more of the secrets. The webhook secrets key
# seals signing secrets (runner) and opens them (ingress): auth and the debugger only
# ever hold them sealed.
SECRETS_NEEDED = {
    "ingress": {AMQP, SECRETS_KEY},
    "auth": {AMQP, DATABASE},
    "runner": {AMQP, DATABASE, TOKEN_KEYS, SECRETS_KEY},
    "debugger": {AMQP, DATABASE},
}
SECRET_NAMES = {AMQP, DATABASE, TOKEN_KEYS, "FLOWHOOKS_RUNNER_TOKEN_KEY", SECRETS_KEY}
# user:password@ in a URL, the password written out rather than interpolated.
LITERAL_CREDENTIALS = re.compile(r"://[^:/@\s]+:(?!\$\{)[^@\s]+@")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def flowhooks_variables(text: str) -> set[str]:
    """Every FLOWHOOKS_ name but those of `flowhooks broker-setup` (a command's inputs)."""
    return set(re.findall(r"\bFLOWHOOKS_[A-Z0-9_]+", text)) - set(
        re.findall(r"\bFLOWHOOKS_BROKER_[A-Z0-9_]+", text)
    )


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (an empty value counts
    as unset for both forms, as in compose)."""

    def value(match: re.Match[str]) -> str:
        name, kind, argument = match.group(1), match.group(2), match.group(3)
        found = env.get(name, "")
        if found:
            return found
        if kind == "?":
            raise MissingVariable(f"{name}: {argument}")
        return argument if kind == "-" else ""

    return INTERPOLATION.sub(value, text)


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """.env.example with every empty value filled in, as an operator would."""
    return {name: value or f"secret-{name.lower()}" for name, value in env_example().items()}


def rendered_compose() -> dict[str, Any]:
    text = (REPO / "docker-compose.yml").read_text()
    rendered: dict[str, Any] = yaml.safe_load(interpolate(text, filled_env()))
    return rendered


def test_compose_services_and_settings() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {
        "rabbitmq",
        "postgres",
        "broker-setup",
        "migrate",
        *SERVICES,
        *TRACING,
    }
    for name in SERVICES:
        service = compose["services"][name]
        assert service["command"] == [name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["broker-setup"] == {
            "condition": "service_completed_successfully"
        }
        assert "readyz" in " ".join(service["healthcheck"]["test"])
        # The health check asks the ops port, which is the service's own setting.
        ops_port = service["environment"][f"FLOWHOOKS_{name.upper()}_OPS_PORT"]
        assert service["environment"]["OPS_PORT"] == ops_port
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        # Published: the service's own port, never its ops port (/metrics).
        assert all(ops_port not in port for port in service["ports"]), name
    # FLOWHOOKS_PUBLIC_URL is compose's own input, not a service setting.
    assert flowhooks_variables(text) - {"FLOWHOOKS_PUBLIC_URL"} <= SETTINGS


def test_compose_refuses_to_start_without_the_secrets() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not LITERAL_CREDENTIALS.search(text), LITERAL_CREDENTIALS.search(text)
    example = env_example()
    # .env.example as shipped holds no secret: compose refuses until it is filled in.
    with pytest.raises(MissingVariable):
        interpolate(text, example)
    for name in (
        "RABBITMQ_ADMIN_PASSWORD",
        "POSTGRES_PASSWORD",
        "FLOWHOOKS_RUNNER_TOKEN_KEYS",
        *(f"FLOWHOOKS_BROKER_PASSWORD_{s.upper()}" for s in SERVICES),
    ):
        assert example[name] == "", name
        with pytest.raises(MissingVariable, match=name):
            interpolate(text, {**filled_env(), name: ""})
    compose = rendered_compose()
    assert compose["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == (
        "secret-rabbitmq_admin_password"
    )
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "secret-postgres_password"
    )


def test_compose_management_ui_on_localhost_only() -> None:
    compose = rendered_compose()
    assert compose["services"]["rabbitmq"]["ports"] == ["127.0.0.1:15672:15672"]
    for name in ("postgres", "broker-setup", "migrate"):
        assert "ports" not in compose["services"][name], name


def test_compose_gives_each_service_only_its_own_secrets() -> None:
    compose = rendered_compose()
    for name, needed in SECRETS_NEEDED.items():
        env = compose["services"][name]["environment"]
        assert set(env) & SECRET_NAMES == needed, name
        # Its own broker user, not another service's and not the administrator.
        password = f"secret-flowhooks_broker_password_{name}"
        assert env[AMQP] == f"amqp://flowhooks-{name}:{password}@rabbitmq:5672/flowhooks"
        if DATABASE in needed:
            assert env[DATABASE].startswith("postgresql://flowhooks:secret-postgres_password@")
    runner = compose["services"]["runner"]["environment"]
    assert runner[TOKEN_KEYS] == "secret-flowhooks_runner_token_keys"
    assert compose["services"]["migrate"]["environment"].keys() & SECRET_NAMES == {DATABASE}
    setup = compose["services"]["broker-setup"]["environment"]
    # The administrator's credentials, and the passwords of the users it creates.
    assert compose["services"]["broker-setup"]["command"] == ["broker-setup", "--via", "management"]
    assert setup.keys() & SECRET_NAMES == set()
    assert setup["FLOWHOOKS_BROKER_MANAGEMENT_URL"] == (
        "http://admin:secret-rabbitmq_admin_password@rabbitmq:15672"
    )
    for service in SERVICES:
        key = f"FLOWHOOKS_BROKER_PASSWORD_{service.upper()}"
        assert setup[key] == f"secret-flowhooks_broker_password_{service}"
        # Only broker-setup and the service itself know a service's broker password.
        for other in SERVICES:
            text = str(compose["services"][other]["environment"])
            assert (setup[key] in text) == (other == service), (service, other)


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["flowhooks"]' in text
    # Numeric: Kubernetes' runAsNonRoot cannot verify a user name.
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert "useradd --system --uid 10001" in text


def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        text = path.read_text()
        assert flowhooks_variables(text) <= SETTINGS, path
        assert not LITERAL_CREDENTIALS.search(text), path
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def test_kubernetes_manifests() -> None:
    documents = k8s_documents()
    deployments = of_kind(documents, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30
        limits = container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["memory"] and limits, name
    scaled = [d for d in documents if d["kind"] == "ScaledObject"]
    assert {t["metadata"]["queueName"] for t in scaled[0]["spec"]["triggers"]} == {
        "flowhooks.runner.sync-runs",
        "flowhooks.runner.async-runs",
    }


def test_kubernetes_secrets_per_service() -> None:
    documents = k8s_documents()
    secrets = of_kind(documents, "Secret")
    for secret in secrets.values():
        # Shipped empty: no password or key in the repo.
        assert set(secret["stringData"].values()) == {""}, secret["metadata"]["name"]
    workloads = [*of_kind(documents, "Deployment").values(), *of_kind(documents, "Job").values()]
    for workload in workloads:
        name = workload["metadata"]["name"]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        assert all("valueFrom" not in env for env in container.get("env", [])), name
        received: set[str] = set()
        for source in container["envFrom"]:
            if "secretRef" in source:
                received |= set(secrets[source["secretRef"]["name"]]["stringData"])
        if workload["kind"] == "Deployment":
            assert received & SECRET_NAMES == SECRETS_NEEDED[name], name
            assert {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s} == {
                f"flowhooks-{name}"
            }
        else:
            assert name in ("flowhooks-migrate", "flowhooks-broker-setup"), name
            assert TOKEN_KEYS not in received
    triggers = of_kind(documents, "TriggerAuthentication")["rabbitmq"]["spec"]["secretTargetRef"]
    assert [(t["name"], t["key"]) for t in triggers] == [("flowhooks-runner", AMQP)]


def test_kubernetes_security_context_on_every_pod() -> None:
    documents = k8s_documents()
    workloads = [*of_kind(documents, "Deployment").values(), *of_kind(documents, "Job").values()]
    assert len(workloads) == 6
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
        if workload["kind"] == "Deployment":
            # Python and aiohttp write temporary files: /tmp is an emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], name


def test_kubernetes_disruption_budgets() -> None:
    documents = k8s_documents()
    budgets = of_kind(documents, "PodDisruptionBudget")
    for name in SERVICES:
        assert budgets[name]["spec"]["selector"]["matchLabels"] == {"service": name}
        spec = budgets[name]["spec"]
        assert spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1, name


def test_kubernetes_metrics_port_not_public() -> None:
    documents = k8s_documents()
    deployments = of_kind(documents, "Deployment")
    for name, service in of_kind(documents, "Service").items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert set(ports) == {"http", "ops"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env[f"FLOWHOOKS_{name.upper()}_OPS_PORT"] == str(ports["ops"])
        assert env[f"FLOWHOOKS_{name.upper()}_PORT"] == str(ports["http"])
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"], name
        annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["ops"])


def test_kubernetes_network_policies() -> None:
    documents = k8s_documents()
    policies = of_kind(documents, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # Open to any source: only the ingress's webhook port.
    open_rules = [
        (policy["spec"]["podSelector"], rule["ports"])
        for policy in policies.values()
        for rule in policy["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_rules == [
        ({"matchLabels": {"service": "ingress"}}, [{"port": 8080, "protocol": "TCP"}])
    ]
    metrics = policies["metrics"]["spec"]["ingress"]
    assert [rule["from"] for rule in metrics] == [
        [{"namespaceSelector": {"matchLabels": {"flowhooks.io/metrics": "true"}}}]
    ]
    egress_ports = {
        port["port"]
        for rule in policies["broker-database-dns"]["spec"]["egress"]
        for port in rule["ports"]
    }
    assert {5672, 5432, 53} <= egress_ports


def test_auth_and_debugger_trust_the_runners_broker_user() -> None:
    """Auth and the debugger drop a `flow.changed` from any other broker user: with per-
    service users, naming any user but the runner's would drop every genuine change."""
    compose = rendered_compose()["services"]
    runner_user = compose["runner"]["environment"][AMQP].split("://")[1].split(":")[0]
    assert runner_user == "flowhooks-runner"
    for name in ("auth", "debugger"):
        assert compose[name]["environment"]["FLOWHOOKS_TRUSTED_RUNNER_USER"] == runner_user
    documents = k8s_documents()
    config = of_kind(documents, "ConfigMap")["flowhooks"]["data"]
    assert config["FLOWHOOKS_TRUSTED_RUNNER_USER"] == runner_user
    for name in ("auth", "debugger"):
        deployment = of_kind(documents, "Deployment")[name]
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "flowhooks"}} in sources, name


TRACING = ("otel-collector", "jaeger")


def test_compose_tracing_profile_is_optional_and_off_by_default() -> None:
    """The collector and Jaeger start only with `--profile tracing`; the services export
    only once OTEL_EXPORTER_OTLP_ENDPOINT is set (empty: off, shared/tracing.py)."""
    compose = rendered_compose()["services"]
    for name in TRACING:
        assert compose[name]["profiles"] == ["tracing"], name
    assert compose["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    collector = yaml.safe_load((REPO / "deploy/tracing/collector.yaml").read_text())
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    for name in SERVICES:
        env = compose[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
        assert not tracing.wanted(env)
        assert tracing.wanted({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318"})
