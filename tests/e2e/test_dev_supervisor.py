"""`flowhooks run`, the development supervisor, as a real process: each service sees
only its own variables, a killed service is started again (and the output says so),
SIGTERM stops everything cleanly."""

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.supervisor import settings_class
from harness.infra import fresh_database, fresh_vhost
from harness.system import REPO, SERVICES, free_ports
from shared.settings import env_names

pytestmark = pytest.mark.e2e

STARTED = re.compile(r"^(started|restarted) (\w+) \(pid (\d+)\)$", re.MULTILINE)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {name.decode(): value.decode() for name, value in pairs}


def wait_for(condition: object, what: str, output: Path, timeout_s: float = 45) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{output.read_text()[-5000:]}"
        time.sleep(0.1)


def healthy(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture
def supervisor_env() -> Iterator[dict[str, str]]:
    port_variables = sorted(
        {
            name
            for service in SERVICES
            for name in env_names(settings_class(service))
            if name.endswith("_PORT")
        }
    )
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOKS_")}
        env.update(
            {
                name: str(port)
                for name, port in zip(port_variables, free_ports(len(port_variables)), strict=True)
            },
            FLOWHOOKS_AMQP_URL=amqp_url,
            FLOWHOOKS_DATABASE_URL=database_url,
            FLOWHOOKS_RUNNER_TOKEN_KEYS=secrets.token_urlsafe(32),
            FLOWHOOKS_RUNNER_WORKERS="1",
            FLOWHOOKS_SHUTDOWN_TIMEOUT_S="10",
            # A libpq variable: database credentials as far as the filter knows.
            PGAPPNAME="flowhooks-test",
            PYTHONUNBUFFERED="1",
        )
        yield env


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_supervisor_isolates_restarts_and_stops(supervisor_env: dict[str, str], stop: str) -> None:
    env = supervisor_env
    ports = {name: int(env[f"FLOWHOOKS_{name.upper()}_PORT"]) for name in SERVICES}
    with tempfile.NamedTemporaryFile(prefix="flowhooks-run-", suffix=".log") as log:
        output = Path(log.name)
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # A process group of its own, as a terminal gives one (Ctrl-C signals it all).
            start_new_session=True,
        )
        try:

            def pids() -> dict[str, list[int]]:
                found: dict[str, list[int]] = {}
                for _, name, pid in STARTED.findall(output.read_text()):
                    found.setdefault(name, []).append(int(pid))
                return found

            wait_for(lambda: all(healthy(port) for port in ports.values()), "not all up", output)
            first = pids()
            assert {name: len(found) for name, found in first.items()} == dict.fromkeys(SERVICES, 1)

            # Secrets only where they are used.
            seen = {name: environ_of(found[0]) for name, found in first.items()}
            for name, child_env in seen.items():
                assert child_env["FLOWHOOKS_AMQP_URL"] == env["FLOWHOOKS_AMQP_URL"]
                assert ("FLOWHOOKS_DATABASE_URL" in child_env) == (name != "ingress"), name
                assert ("PGAPPNAME" in child_env) == (name != "ingress"), name
                assert ("FLOWHOOKS_RUNNER_TOKEN_KEYS" in child_env) == (name == "runner"), name
                assert ("FLOWHOOKS_RUNNER_WORKERS" in child_env) == (name == "runner"), name
                assert ("FLOWHOOKS_INGRESS_PORT" in child_env) == (name == "ingress"), name

            # A killed service is started again, and the output says so (once: the
            # Ctrl-C run checks only its own way out, on a system just started).
            if stop == "sigterm":
                killed = first["ingress"][0]
                os.kill(killed, signal.SIGKILL)
                wait_for(lambda: len(pids().get("ingress", [])) == 2, "not restarted", output)
                text = output.read_text()
                assert re.search(
                    r"^ingress exited with code -9 after [0-9.]+ s; restarting it in 1\.0 s"
                    r" \(restart 1\)$",
                    text,
                    re.MULTILINE,
                ), text[-5000:]
                restarted = pids()["ingress"][1]
                assert restarted != killed
                wait_for(lambda: healthy(ports["ingress"]), "restarted ingress not up", output)
                assert "FLOWHOOKS_DATABASE_URL" not in environ_of(restarted)
                # Nothing else was touched.
                assert {name: found for name, found in pids().items() if name != "ingress"} == {
                    name: found for name, found in first.items() if name != "ingress"
                }

            # SIGTERM to the supervisor, or Ctrl-C (SIGINT to every process of the
            # terminal's group), stops everything cleanly, and nothing is restarted.
            if stop == "sigterm":
                supervisor.send_signal(signal.SIGTERM)
            else:
                os.killpg(supervisor.pid, signal.SIGINT)
            assert supervisor.wait(timeout=40) == 0
            restarts = output.read_text().count("restarting it in")
            assert restarts == (1 if stop == "sigterm" else 0)
            children = [pid for found in pids().values() for pid in found]
            assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
            assert "stopping every service" in output.read_text()
        finally:
            if supervisor.poll() is None:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
