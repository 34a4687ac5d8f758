"""The four services as real subprocesses on loopback, each with its own free port,
against a fresh RabbitMQ vhost and PostgreSQL database. Tests talk HTTP only."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.infra import fresh_database, fresh_vhost

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "runner", "debugger", "ingress")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together while they are picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    # /metrics and the probes (FLOWHOOKS_<NAME>_OPS_PORT), apart from the service's port.
    ops_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


@dataclass
class System:
    amqp_url: str
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    token_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # The checkout the services run from (bench/compare.py runs an older one beside).
    repo: Path = REPO

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOKS_")}
        env.update(
            FLOWHOOKS_AMQP_URL=self.amqp_url,
            FLOWHOOKS_DATABASE_URL=self.database_url,
            FLOWHOOKS_RUNNER_TOKEN_KEY=self.token_key,
            FLOWHOOKS_LOG_LEVEL="info",
            FLOWHOOKS_SHUTDOWN_TIMEOUT_S="10",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, name: str, **env: str) -> ServiceProcess:
        port, ops_port = free_ports(2)
        full_env = self.env()
        full_env[f"FLOWHOOKS_{name.upper()}_PORT"] = str(port)
        full_env[f"FLOWHOOKS_{name.upper()}_OPS_PORT"] = str(ops_port)
        if name == "runner" and "ingress" in self.processes:
            full_env["FLOWHOOKS_RUNNER_WEBHOOK_BASE_URL"] = self.url("ingress")
        full_env.update(env)
        log = tempfile.NamedTemporaryFile(prefix=f"flowhooks-{name}-", suffix=".log", delete=False)
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=self.repo,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        service = ServiceProcess(name, port, process, log, ops_port)
        self.processes.setdefault(name, []).append(service)
        self.wait_ready(service)
        return service

    def wait_ready(self, service: ServiceProcess, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited:\n{service.output()}")
            try:
                with urllib.request.urlopen(f"{service.url}/readyz", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{service.name} not ready after {timeout_s} s:\n{service.output()}")

    def start_all(self) -> None:
        # The ingress first so the runner knows its public URL.
        for name in ("ingress", "auth", "runner", "debugger"):
            self.start(name)

    def url(self, name: str) -> str:
        return self.processes[name][0].url

    def stop(self, service: ServiceProcess, sig: int = signal.SIGTERM) -> int:
        if service.process.poll() is None:
            service.process.send_signal(sig)
        try:
            return service.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.process.kill()
            return service.process.wait()
        finally:
            self.processes[service.name].remove(service)

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for services in list(self.processes.values()):
            for service in list(services):
                codes[f"{service.name}:{service.port}"] = self.stop(service)
        return codes

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name}:{s.port}\n{s.output()[-4000:]}"
            for services in self.processes.values()
            for s in services
        )

    def create_token(self, workspace: str, *scopes: str) -> str:
        """Through the real command line, as an operator would."""
        args = [sys.executable, "-m", "services.cli", "token", "create", "--workspace", workspace]
        for scope in scopes:
            args += ["--scope", scope]
        done = subprocess.run(
            args, cwd=self.repo, env=self.env(), capture_output=True, check=True, timeout=60
        )
        return done.stdout.decode().strip()


@contextmanager
def running_system(**extra_env: str) -> Iterator[System]:
    """The four services on a fresh vhost and database, stopped (cleanly) afterwards."""
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        running = System(amqp_url, database_url, extra_env=extra_env)
        try:
            running.start_all()
            yield running
        finally:
            logs = running.logs()
            codes = running.stop_all()
            bad = {name: code for name, code in codes.items() if code != 0}
            assert not bad, f"services did not stop cleanly: {bad}\n{logs}"
