"""deploy/local/ensure_services.py's choices for a local server that does not answer:
start the installed one, else a Docker container where an engine answers, else say
exactly what is missing. No Docker engine here: a fake one answers /_ping, and the
container start itself (deploy/local/containers.py) is replaced by a recorder."""

import importlib.util
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from harness.system import REPO, free_port

LOCAL = REPO / "deploy" / "local"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, LOCAL / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ensure_services(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(LOCAL))  # as when run as a script: `import containers`
    monkeypatch.delitem(sys.modules, "containers", raising=False)
    module = load("ensure_services")
    # Nothing answers on these; neither server is installed.
    module.AMQP_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    module.DATABASE_URL = f"postgresql://postgres@127.0.0.1:{free_port()}/flowhooks"
    monkeypatch.setattr(module, "start_rabbitmq", lambda: None)
    monkeypatch.setattr(module, "start_postgresql", lambda: None)
    return module


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[str]:
    """A unix socket that answers like a Docker engine's /_ping."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"unix://{path}"
    finally:
        server.close()


def test_neither_installed_nor_docker_says_what_is_missing(
    ensure_services: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", engine)
    assert ensure_services.main() == 1
    err = capsys.readouterr().err.splitlines()
    amqp_port = ensure_services.AMQP_URL.split(":")[-1].rstrip("/")
    pg_port = ensure_services.DATABASE_URL.split(":")[-1].split("/")[0]
    assert err[0] == (
        f"RabbitMQ: nothing answers on 127.0.0.1:{amqp_port}, it is not installed here, and "
        f"no Docker engine answers at {engine} to run it in a container. Install it (Debian: "
        "apt-get install rabbitmq-server), or Docker, or point FLOWHOOKS_AMQP_URL at a "
        "running broker."
    )
    assert err[1] == (
        f"PostgreSQL: nothing answers on 127.0.0.1:{pg_port}, it is not installed here, and "
        f"no Docker engine answers at {engine} to run it in a container. Install it (Debian: "
        "apt-get install postgresql), or Docker, or point FLOWHOOKS_DATABASE_URL at a "
        "running server."
    )


def test_with_a_docker_engine_both_are_started_as_containers(
    ensure_services: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    fake_engine: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCKER_HOST", fake_engine)
    assert ensure_services.docker_engine() == (True, fake_engine)
    containers = load("containers")
    started: list[str] = []
    monkeypatch.setattr(containers, "start", lambda server: started.append(server.container))
    monkeypatch.setitem(sys.modules, "containers", containers)
    assert ensure_services.main() == 0
    assert started == ["flowhooks-rabbitmq", "flowhooks-postgres"]
    out = capsys.readouterr().out
    assert "RabbitMQ: running in container flowhooks-rabbitmq" in out
    assert "PostgreSQL: running in container flowhooks-postgres" in out
