"""The four services as real subprocesses on loopback, each with its own free port,
against a fresh RabbitMQ vhost and PostgreSQL database. Tests talk HTTP only."""

import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from harness.infra import fresh_database, fresh_vhost
from services import registry

REPO = Path(__file__).resolve().parents[1]
SERVICES = registry.NAMES
# `flowhooks token create`'s default --name.
CLI_TOKEN_NAME = "created on the command line"


def free_port() -> int:
    return free_ports(1)[0]


# Ports are picked below the kernel's ephemeral range (Linux: from 32768): a port the
# kernel gave out (bind to port 0) could be taken by any outgoing connection between
# the pick and the service's bind, and with two test processes making hundreds of
# connections, one was ("address already in use"). Each pytest-xdist worker picks in a
# slice of its own, at random, so two processes rarely try the same port.
PORT_SLICES = range(20000, 32000, 2000)
# The last ports this process handed out, not handed out again while their first owner
# may still be starting (the bind check cannot see a port nobody bound yet).
_HANDED_OUT: deque[int] = deque(maxlen=256)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together while they are picked)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...; "" outside xdist
    index = int(worker[2:]) + 1 if worker[2:].isdigit() else 0
    low = PORT_SLICES[index % len(PORT_SLICES)]
    candidates = random.sample(range(low, low + PORT_SLICES.step), PORT_SLICES.step)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            if port in _HANDED_OUT:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken
                sock.close()
                continue
            held.append(sock)
            if len(held) == count:
                ports = [int(sock.getsockname()[1]) for sock in held]
                _HANDED_OUT.extend(ports)
                return ports
        raise RuntimeError(f"fewer than {count} free ports in {low}-{low + PORT_SLICES.step}")
    finally:
        for sock in held:
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
        """Read through the open file, at no offset (the service writes through the same
        open file): still there when someone cleaned /tmp while the test ran."""
        self.log.flush()
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


@dataclass
class System:
    amqp_url: str
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    token_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # The checkout the services run from (bench/compare.py runs an older one beside).
    repo: Path = REPO
    # Appended to every workspace name given to create_token: modules sharing one
    # system each see their own `acme` and `globex` (`with_own_workspaces`).
    workspace_suffix: str = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOKS_")}
        env.update(
            FLOWHOOKS_AMQP_URL=self.amqp_url,
            FLOWHOOKS_DATABASE_URL=self.database_url,
            FLOWHOOKS_RUNNER_TOKEN_KEY=self.token_key,
            FLOWHOOKS_LOG_LEVEL="info",
            FLOWHOOKS_SHUTDOWN_TIMEOUT_S="10",
            PYTHONUNBUFFERED="1",
            # No pydantic plugin is installed, but pydantic looks for one in every
            # installed package's entry points at the first model of each process (~30 ms
            # of CPU in the dev venv's many packages, for each service and runner worker
            # of the suite's many systems). The runner's workers inherit it.
            PYDANTIC_DISABLE_PLUGINS="__all__",
        )
        env.update(self.extra_env)
        return env

    def start(self, name: str, **env: str) -> ServiceProcess:
        service = self.launch(name, **env)
        self.wait_ready(service)
        return service

    def launch(
        self, name: str, *, ports: tuple[int, int] | None = None, **env: str
    ) -> ServiceProcess:
        """Start `name` without waiting for it to be ready (`wait_ready` does)."""
        port, ops_port = ports or free_ports(2)
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
        return service

    def wait_ready(self, service: ServiceProcess, timeout_s: float = 30) -> None:
        self.wait_all_ready([service], timeout_s)

    def wait_all_ready(self, services: list[ServiceProcess], timeout_s: float = 30) -> None:
        """Until every one of `services` answers /readyz 200 (they start side by side)."""
        deadline = time.monotonic() + timeout_s
        pending = list(services)
        while pending:
            for service in list(pending):
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited:\n{service.output()}")
                try:
                    url = f"{service.url}/readyz"
                    with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310
                        if answer.status == 200:
                            pending.remove(service)
                except OSError:
                    pass
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(
                    f"{names} not ready after {timeout_s} s:\n"
                    + "\n".join(s.output() for s in pending)
                )
            time.sleep(0.05)

    def start_all(self) -> None:
        """The four services at once: on two cores their imports and migrations overlap
        with each other's waits. The ingress is launched first (its port picked with
        the others') so the runner is given its public URL."""
        ports = free_ports(2 * len(SERVICES))
        launched = [
            self.launch(name, ports=(ports[2 * i], ports[2 * i + 1]))
            # The ingress first in the registry's order: the runner is given its URL.
            for i, name in enumerate(sorted(SERVICES, key=lambda name: name != "ingress"))
        ]
        # Four imports and migrations at once on two busy cores: more than one's 30 s.
        self.wait_all_ready(launched, timeout_s=60)

    def url(self, name: str) -> str:
        return self.processes[name][0].url

    def stop(self, service: ServiceProcess, sig: int = signal.SIGTERM) -> int:
        if service.process.poll() is None:
            service.process.send_signal(sig)
        return self._reap(service)

    def _reap(self, service: ServiceProcess) -> int:
        """Its exit code, once it stopped (killed after 20 s)."""
        try:
            return service.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.process.kill()
            return service.process.wait()
        finally:
            self.processes[service.name].remove(service)

    def stop_all(self) -> dict[str, int]:
        """Every service is told to stop at once, then waited for: their shutdowns
        (each waits for its work in flight) overlap instead of adding up."""
        services = [service for group in self.processes.values() for service in group]
        for service in services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        return {f"{service.name}:{service.port}": self._reap(service) for service in services}

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.name}:{s.port}\n{s.output()[-4000:]}"
            for services in self.processes.values()
            for s in services
        )

    def with_own_workspaces(self) -> "System":
        """The same running services (same processes, vhost and database), seen by a
        caller whose workspaces are its own: a test module sharing the session's system
        is as isolated from the others as on a system of its own, since everything a
        test reads (flows, requests, tokens, fair shares) belongs to a workspace."""
        return replace(self, workspace_suffix=f"-{uuid.uuid4().hex[:8]}")

    def create_token(self, workspace: str, *scopes: str) -> str:
        """A personal access token, through the code `flowhooks token create` runs, called
        in-process: a CLI subprocess costs a second of imports per token on two cores.
        tests/e2e/test_cli.py checks the command itself (`create_token_with_cli`). A
        system of another checkout (bench/compare.py) runs that checkout's command."""
        if self.repo != REPO:
            return self.create_token_with_cli(workspace, *scopes)
        from cli.tokens import create_token

        database_url = self.env()["FLOWHOOKS_DATABASE_URL"]
        workspace += self.workspace_suffix

        def create() -> str:
            # A thread of its own: the caller may be a test running its own event loop.
            _, secret = asyncio.run(
                create_token(database_url, workspace, list(scopes), CLI_TOKEN_NAME, None)
            )
            return secret

        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(create).result(timeout=60)

    def create_token_with_cli(self, workspace: str, *scopes: str) -> str:
        """Through the real command line, as an operator would."""
        workspace += self.workspace_suffix
        args = [sys.executable, "-m", "cli.main", "token", "create", "--workspace", workspace]
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
