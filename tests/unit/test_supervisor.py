"""`flowhooks run`'s pure parts: which variables each service gets, and the backoff
before a crashed service is started again."""

import pytest

from cli.supervisor import Backoff, service_env, settings_class
from services.registry import NAMES as SERVICES
from shared.settings import env_names

OPERATOR_ENV = {
    "PATH": "/usr/bin",
    "LANG": "C.UTF-8",
    "PGPASSWORD": "db-secret",
    "FLOWHOOKS_AMQP_URL": "amqp://u:p@broker/",
    "FLOWHOOKS_LOG_LEVEL": "debug",
    "FLOWHOOKS_HOST": "127.0.0.2",
    "FLOWHOOKS_DATABASE_URL": "postgresql://u:db-secret@db/flowhooks",
    "FLOWHOOKS_DATABASE_POOL_MAX": "4",
    "FLOWHOOKS_RUNNER_TOKEN_KEYS": "key-b,key-a",
    "FLOWHOOKS_RUNNER_WORKERS": "1",
    "FLOWHOOKS_INGRESS_PORT": "8080",
    "FLOWHOOKS_AUTH_PORT": "8081",
    "FLOWHOOKS_DEBUGGER_BATCH_SIZE": "10",
    "FLOWHOOKS_NOT_A_SETTING": "x",
    # pydantic-settings reads names case-insensitively, so does the filter.
    "flowhooks_shutdown_timeout_s": "5",
}
GENERAL = {
    "PATH",
    "LANG",
    "FLOWHOOKS_AMQP_URL",
    "FLOWHOOKS_LOG_LEVEL",
    "FLOWHOOKS_HOST",
    "flowhooks_shutdown_timeout_s",
}
DATABASE = {"PGPASSWORD", "FLOWHOOKS_DATABASE_URL", "FLOWHOOKS_DATABASE_POOL_MAX"}


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("ingress", GENERAL | {"FLOWHOOKS_INGRESS_PORT"}),
        ("auth", GENERAL | DATABASE | {"FLOWHOOKS_AUTH_PORT"}),
        (
            "runner",
            GENERAL | DATABASE | {"FLOWHOOKS_RUNNER_TOKEN_KEYS", "FLOWHOOKS_RUNNER_WORKERS"},
        ),
        ("debugger", GENERAL | DATABASE | {"FLOWHOOKS_DEBUGGER_BATCH_SIZE"}),
    ],
)
def test_each_service_gets_only_its_own_variables(service: str, expected: set[str]) -> None:
    env = service_env(OPERATOR_ENV, settings_class(service))
    assert set(env) == expected
    assert all(env[name] == OPERATOR_ENV[name] for name in env)


@pytest.mark.parametrize("service", SERVICES)
def test_every_field_of_a_service_passes_and_no_other(service: str) -> None:
    every = {name: "1" for other in SERVICES for name in env_names(settings_class(other))}
    passed = set(service_env(every, settings_class(service)))
    assert passed == env_names(settings_class(service))
    assert f"FLOWHOOKS_{service.upper()}_PORT" in passed
    assert f"FLOWHOOKS_{service.upper()}_OPS_PORT" in passed
    assert "FLOWHOOKS_PORT" not in passed
    assert ("FLOWHOOKS_DATABASE_URL" in passed) == (service != "ingress")
    assert ("FLOWHOOKS_RUNNER_TOKEN_KEYS" in passed) == (service == "runner")
    assert ("FLOWHOOKS_RUNNER_TOKEN_KEY" in passed) == (service == "runner")


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_healthy_run() -> None:
    backoff = Backoff(first_s=1.0, max_s=30.0, healthy_after_s=30.0)
    assert [backoff.delay(ran_for_s=2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(ran_for_s=30.0) == 1.0
    assert backoff.delay(ran_for_s=0.5) == 2.0
