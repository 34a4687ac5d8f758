"""A throwaway RabbitMQ cluster (3 nodes by default) on private ports, next to the shared
broker on 5672, for the broker-failover tests (tests/integration/test_broker_failover.py)
and `make chaos`: nodes can be SIGKILLed (a crash, not a clean stop) and booted again.

Each node is a `rabbitmq-server` run as the `rabbitmq` user (its Erlang cookie is the
shared node's, so `rabbitmqctl -n <node>` reaches it) with everything of its own under
one fresh temp dir: node name (`fh<i>-<6 hex>@localhost`, unique per run), AMQP port
(its own `.conf`: the machine's /etc/rabbitmq/rabbitmq.conf pins 5672, which
`RABBITMQ_NODE_PORT` cannot override), distribution port, mnesia, logs, pid file, no
plugins, and its own rabbitmq-env.conf (the machine's sets `NODENAME=rabbit@localhost`).
The shared node is never addressed: every `rabbitmqctl` call here names its node.

Timing on the 2-core dev machine (shared with other test runs, so it varies): the three
nodes boot in parallel in 9.5-13 s (one node alone: ~4 s; boot is CPU-bound, so three
on two cores do not go faster), joining nodes 2..3 to the first (one `rabbitmqctl eval`
each) ~3 s more: start() takes 13-21 s. A killed node boots again and is back in the
cluster in 4-10 s; restart_all of a killed 3-node cluster takes 10-20 s.

If the Python process dies by a signal (e.g. `timeout`), close() does not run and the
nodes keep running: their pids are in <dir>/fh<i>/rabbitmq.pid.
FLOWHOOKS_KEEP_RABBIT_DIR=1 keeps the temp dir (logs under <node>/log) after close().

A node's name leaves epmd when its VM dies (epmd drops a registration when the node's
socket closes), so a killed node boots again under the same name; `kill` waits for that.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness.system import free_ports

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBITMQ_HOME = "/var/lib/rabbitmq"  # the rabbitmq user's home: its .erlang.cookie
BOOT_TIMEOUT_S = 90.0


def _as_rabbitmq(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """`argv` run as the rabbitmq user (it owns the Erlang cookie) with exactly `env`."""
    pairs = [f"{key}={value}" for key, value in env.items()]
    prefix = ["runuser", "-u", "rabbitmq", "--"] if os.geteuid() == 0 else []
    return [*prefix, "env", "-i", *pairs, *argv]


def _base_env() -> dict[str, str]:
    return {
        "HOME": RABBITMQ_HOME,
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def ctl(node: str, *args: str, timeout_s: float = 60.0, check: bool = True) -> str:
    """`rabbitmqctl -n node args...`; its stdout."""
    result = subprocess.run(
        _as_rabbitmq([CTL, "-q", "-n", node, *args], _base_env()),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=RABBITMQ_HOME,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl -n {node} {' '.join(args)} failed ({result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}"
        )
    return result.stdout


def _epmd_names() -> str:
    result = subprocess.run(
        ["epmd", "-names"], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class RabbitNode:
    name: str  # "fh1-ab12cd@localhost"
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    console: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def short_name(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbitmq.pid"

    def env(self) -> dict[str, str]:
        return {
            **_base_env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    def write_files(self) -> None:
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text(
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        )
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")

    def os_pid(self) -> int | None:
        with suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None


class RabbitCluster:
    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.run_id = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix=f"flowhooks-rabbit-{self.run_id}-"))
        self.dir.chmod(0o755)
        ports = free_ports(2 * size)
        self.nodes: list[RabbitNode] = [
            RabbitNode(
                name=f"fh{i + 1}-{self.run_id}@localhost",
                amqp_port=ports[2 * i],
                dist_port=ports[2 * i + 1],
                base=self.dir / f"fh{i + 1}",
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.write_files()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "rabbitmq", "rabbitmq")
            for path in self.dir.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self._killed: set[int] = set(range(size))  # not running (yet)
        self._pool = ThreadPoolExecutor(max_workers=max(size, 2))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    # -- boot ------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        node = self.nodes[index]
        node.pid_file.unlink(missing_ok=True)
        if node.console is not None:
            node.console.close()
        node.console = (node.base / "console.log").open("ab")
        node.process = subprocess.Popen(
            _as_rabbitmq([SERVER], node.env()),
            stdin=subprocess.DEVNULL,
            stdout=node.console,
            stderr=subprocess.STDOUT,
            cwd=RABBITMQ_HOME,
            start_new_session=True,  # its own process group: close() kills all of it
        )

    def _await_boot(self, index: int, deadline: float, confirm: bool = True) -> None:
        """Until the node's app runs. Polls the AMQP port first (its listener starts at
        the very end of the boot; a CLI call costs a second of CPU), then confirms with
        one `await_startup` (unless not `confirm`: the caller asks the cluster next).
        A node that exits during its boot is spawned once more: on a machine busy with
        other clusters' boots one did (CI, 2026-12-07; its logs went with its folder),
        and what the cluster is for (kills, restarts) only starts after the boot."""
        node = self.nodes[index]
        for attempt in (1, 2):
            try:
                self._await_port(node, deadline)
                while confirm:
                    left = max(deadline - time.monotonic(), 5.0)
                    try:
                        ctl(
                            node.name,
                            "await_startup",
                            "--timeout",
                            str(int(left)),
                            timeout_s=left + 10,
                        )
                        break
                    except RuntimeError:
                        # E.g. the CLI found no free port of its own while others ran (a
                        # busy machine); the node is judged by its process and the deadline.
                        if time.monotonic() > deadline or self._exited(node):
                            raise
                        time.sleep(0.5)
                return
            except RuntimeError:
                if attempt == 2 or not self._exited(node) or time.monotonic() > deadline:
                    raise
                self._spawn(index)

    @staticmethod
    def _exited(node: RabbitNode) -> bool:
        return node.process is not None and node.process.poll() is not None

    def _await_port(self, node: RabbitNode, deadline: float) -> None:
        while True:
            if self._exited(node):
                assert node.process is not None
                raise RuntimeError(
                    f"{node.name} exited during boot ({node.process.returncode}); "
                    f"see {node.base / 'log'} and {node.base / 'console.log'}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not boot in time; see {node.base}")
            if _port_open(node.amqp_port):
                return
            time.sleep(0.05)

    def _boot(self, indexes: Sequence[int], confirm: bool = True) -> None:
        """Spawn the nodes, wait (in parallel) until each one's app runs."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for index in indexes:
            self._spawn(index)
        list(self._pool.map(lambda i: self._await_boot(i, deadline, confirm), indexes))
        for index in indexes:
            self._killed.discard(index)

    def _running_nodes(self, via: int) -> set[str]:
        out = ctl(self.nodes[via].name, "cluster_status", "--formatter", "json")
        return set(json.loads(out).get("running_nodes", []))

    def _await_clustered(self, indexes: Sequence[int], timeout_s: float = 60.0) -> None:
        """Until the cluster, asked through a running node (one not in `indexes` if there
        is one: a rejoining node lists itself), lists `indexes` as running members."""
        wanted = {self.nodes[i].name for i in indexes}
        running_nodes = [i for i in range(len(self.nodes)) if i not in self._killed]
        via = next((i for i in running_nodes if i not in indexes), running_nodes[0])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                running = self._running_nodes(via)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                running = set()  # the CLI failed this once: ask again
            if wanted <= running and all(_port_open(self.nodes[i].amqp_port) for i in indexes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(wanted - running)} did not rejoin the cluster")
            time.sleep(0.3)

    def _join(self, index: int) -> None:
        """`stop_app; join_cluster <first>; start_app` in one CLI call (each CLI start
        costs about a second of CPU on this machine)."""
        ctl(
            self.nodes[index].name,
            "eval",
            "ok = rabbit:stop(), "
            f"ok = rabbit_mnesia:join_cluster('{self.nodes[0].name}', disc), "
            "ok = rabbit:start().",
            timeout_s=BOOT_TIMEOUT_S,
        )

    def start(self) -> None:
        """Boot every node in parallel, join 2..n to the first, wait until all are
        running clustered."""
        self._boot(range(len(self.nodes)))
        # One at a time: concurrent joins race on the schema of the first node.
        for index in range(1, len(self.nodes)):
            self._join(index)
        self._await_clustered(range(len(self.nodes)))

    # -- crashes ---------------------------------------------------------------------

    def kill(self, index: int) -> None:
        """SIGKILL the node's Erlang VM (a crash, not a clean stop); returns once it is
        dead and its name has left epmd."""
        node = self.nodes[index]
        pid = node.os_pid()
        if pid is not None and _pid_alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif node.process is not None and node.process.poll() is None:
            # No pid file (yet): the whole process group.
            with suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pid is not None and _pid_alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} (pid {pid}) did not die")
            time.sleep(0.02)
        if node.process is not None:
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        while f"name {node.short_name} " in _epmd_names():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} stays registered in epmd")
            time.sleep(0.05)
        self._killed.add(index)

    def restart(self, index: int) -> None:
        """Boot a killed node again; returns once it runs and is back in the cluster."""
        if index not in self._killed:
            raise RuntimeError(f"node {index} is running; kill it first")
        # Its port open, the running nodes are asked whether it runs among them (what
        # `await_startup` would say, and one CLI call, a second of CPU, less).
        self._boot([index], confirm=False)
        self._await_clustered([index])

    def kill_all(self) -> None:
        list(self._pool.map(self.kill, range(len(self.nodes))))

    def restart_all(self) -> None:
        """Boot all killed nodes in parallel (they wait for each other at boot)."""
        killed = sorted(self._killed)
        if not killed:
            return
        self._boot(killed)
        self._await_clustered(range(len(self.nodes)))

    # -- inspection ------------------------------------------------------------------

    def running(self) -> list[int]:
        """Indexes of the nodes not killed."""
        return [i for i in range(len(self.nodes)) if i not in self._killed]

    def query(self, *args: str) -> list[dict[str, Any]]:
        """The rows of a `rabbitmqctl list_*` command, asked of a running node; empty
        while every node is down."""
        running = self.running()
        if not running:
            return []
        out = ctl(self.nodes[running[0]].name, *args, "--formatter", "json", timeout_s=30)
        rows: list[dict[str, Any]] = json.loads(out or "[]")
        return rows

    def connections(self) -> list[tuple[str, int]]:
        """(connection_name, node index) of every client connection that names itself
        (the server-side port tells the node)."""
        by_port = {node.amqp_port: i for i, node in enumerate(self.nodes)}
        found = []
        for row in self.query("list_connections", "client_properties", "port"):
            name = _connection_name(row.get("client_properties"))
            index = by_port.get(int(row.get("port", 0)))
            if name is not None and index is not None:
                found.append((name, index))
        return found

    def node_of_connection(self, name_prefix: str) -> int | None:
        """Index of the node serving the client connection whose `connection_name` starts
        with `name_prefix`; None if there is none."""
        return next((i for name, i in self.connections() if name.startswith(name_prefix)), None)

    # -- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """Kill every node (their whole process groups and any VM of this run left
        over), remove the temp dir."""
        for node in self.nodes:
            # The VM first, so that its parent shell reaps it (this machine's init does
            # not reap orphans), then whatever is left of the node's process group.
            pid = node.os_pid()
            if pid is not None and _pid_alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if node.process is not None:
                    with suppress(subprocess.TimeoutExpired):
                        node.process.wait(timeout=5)
            if node.process is not None:
                with suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                with suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
            if node.console is not None:
                node.console.close()
        for pid in self._leftover_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if os.environ.get("FLOWHOOKS_KEEP_RABBIT_DIR"):
            print(f"rabbit_cluster: kept {self.dir} (logs under <node>/log)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _leftover_pids(self) -> list[int]:
        """Processes whose command line names one of this run's nodes or its temp dir."""
        marks = [node.short_name.encode() for node in self.nodes] + [str(self.dir).encode()]
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if any(mark in cmdline for mark in marks):
                    pids.append(int(proc.name))
        return pids


def _connection_name(properties: object) -> str | None:
    """`connection_name` from `list_connections client_properties` in JSON: a list of
    [key, type, value] triples (or a mapping, depending on the CLI's version)."""
    if isinstance(properties, dict):
        value = properties.get("connection_name")
        return str(value) if value is not None else None
    if isinstance(properties, list):
        for item in properties:
            if isinstance(item, list) and item and item[0] == "connection_name":
                return str(item[-1])
    return None


@contextmanager
def rabbit_cluster(size: int = 3) -> Iterator[RabbitCluster]:
    """A started cluster of `size` nodes, closed afterwards (even when start fails)."""
    cluster = RabbitCluster(size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
