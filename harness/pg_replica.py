"""A throwaway PostgreSQL 15 primary and its streaming replica on private ports, for the
failover tests (tests/integration/test_database_failover.py) and `make chaos`.

Both run as the `postgres` user from /usr/lib/postgresql/15/bin, in a fresh temp dir
(data dirs, logs and the unix sockets), listening on 127.0.0.1 only, trust auth for
connections and replication. The shared cluster on 5432 is never touched.

Replication is SYNCHRONOUS (`synchronous_standby_names = '*'`, `synchronous_commit = on`):
a commit the primary acknowledged is on the replica too, so promoting the replica after
the primary crashed loses nothing acknowledged. The trade-off: with one synchronous
standby, every write on the primary waits (hangs) while the standby is down. The
replica itself has no synchronous standby configured, so once promoted it accepts
writes alone.

`start()` takes 1.3-2.5 s here (initdb, primary start, pg_basebackup, replica start,
until the replica reports `sync`), up to 4 s with the 2-core machine busy; `close()`
well under a second. Trust auth covers TCP from 127.0.0.1 and the unix socket, for
connections and replication alike.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.system import free_ports

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"

# Small and quick: a test cluster, not a benchmark. fsync stays on (it is cheap here).
_CONFIG = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
shared_buffers = 16MB
max_connections = 40
wal_level = replica
max_wal_senders = 4
hot_standby = on
synchronous_commit = on
synchronous_standby_names = '{standbys}'
wal_receiver_status_interval = 1s
logging_collector = off
"""


def _url(hosts: str, database: str, query: str = "") -> str:
    return f"postgresql://{USER}@{hosts}/{database}{query}"


class PostgresPair:
    def __init__(self) -> None:
        self.primary_port, self.replica_port = free_ports(2)
        self.root = Path(tempfile.mkdtemp(prefix="flowhooks-pgpair-"))
        self.primary_dir = self.root / "primary"
        self.replica_dir = self.root / "replica"
        self.sockets = self.root / "sockets"
        account = pwd.getpwnam(USER)
        self._uid, self._gid = account.pw_uid, account.pw_gid
        os.chown(self.root, self._uid, self._gid)
        self._run("mkdir", "-m", "700", str(self.sockets))
        # The crashed primary's SysV segment (postmaster.pid line 7), removed at close.
        self._orphan_shm: str | None = None

    def dsn(self, database: str = "postgres") -> str:
        """Both hosts, primary first; a client picks whichever accepts writes."""
        hosts = f"127.0.0.1:{self.primary_port},127.0.0.1:{self.replica_port}"
        return _url(hosts, database, "?target_session_attrs=read-write")

    def primary_dsn(self, database: str = "postgres") -> str:
        return _url(f"127.0.0.1:{self.primary_port}", database)

    def replica_dsn(self, database: str = "postgres") -> str:
        return _url(f"127.0.0.1:{self.replica_port}", database)

    def _run(self, *args: str, timeout_s: float = 120) -> str:
        done = subprocess.run(
            ["runuser", "-u", USER, "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.root,  # the postgres user may not read the caller's cwd
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def _sql(self, port: int, sql: str) -> str:
        psql = [str(BIN / "psql"), "-h", str(self.sockets), "-p", str(port), "-U", USER]
        return self._run(*psql, "-d", "postgres", "-XAtqc", sql, timeout_s=30).strip()

    def _configure(self, data: Path, port: int, standbys: str) -> None:
        config = _CONFIG.format(port=port, sockets=self.sockets, standbys=standbys)
        # Appended: the last setting of a name wins (the replica's copy has the primary's).
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(config)

    def _pg_ctl(self, data: Path, *args: str) -> None:
        log = data.parent / f"{data.name}.log"
        self._run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", *args)

    def start(self) -> None:
        options = f"-U {USER} --auth=trust --no-sync -E UTF8 --locale=C".split()
        self._run(str(BIN / "initdb"), "-D", str(self.primary_dir), *options)
        self._configure(self.primary_dir, self.primary_port, "*")
        self._pg_ctl(self.primary_dir, "start")
        source = f"-h 127.0.0.1 -p {self.primary_port} -U {USER}".split()
        # -R: standby.signal and primary_conninfo; -X stream: the WAL of the copy too.
        copy = ["-D", str(self.replica_dir), "-R", "-X", "stream", "-c", "fast"]
        self._run(str(BIN / "pg_basebackup"), *source, *copy)
        # No synchronous standby of its own: once promoted it must write alone.
        self._configure(self.replica_dir, self.replica_port, "")
        self._pg_ctl(self.replica_dir, "start")
        self._wait(
            lambda: (
                self._sql(self.primary_port, "SELECT sync_state FROM pg_stat_replication") == "sync"
            ),
            "the replica to stream synchronously",
        )

    def _wait(self, check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                if check():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s for {what}")
            time.sleep(0.05)

    @staticmethod
    def _postmaster(data: Path) -> tuple[int, str | None] | None:
        """The postmaster's pid and SysV shared memory id, from postmaster.pid."""
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        shm = lines[6].split() if len(lines) > 6 else []
        return int(lines[0]), (shm[1] if len(shm) == 2 else None)

    @staticmethod
    def _alive(pid: int) -> bool:
        # Not our child (pg_ctl daemonises it): a zombie nobody reaps counts as dead.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state not in ("Z", "X")

    def kill_primary(self) -> None:
        found = self._postmaster(self.primary_dir)
        assert found is not None, "the primary is not running"
        pid, self._orphan_shm = found
        os.kill(pid, signal.SIGKILL)
        # Its backends notice the postmaster's death and exit (closing client sockets).
        self._wait(lambda: not self._alive(pid), "the primary's postmaster to die")
        self._wait(lambda: not self._backends_of(pid), "the primary's backends to exit")

    @staticmethod
    def _backends_of(pid: int) -> list[int]:
        children: list[int] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                children.append(int(proc.name))
        return children

    def promote(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.replica_dir), "-w", "-t", "60", "promote")
        self._wait(
            lambda: self._sql(self.replica_port, "SELECT NOT pg_is_in_recovery()") == "t",
            "the replica to leave recovery",
        )

    def close(self) -> None:
        for data in (self.replica_dir, self.primary_dir):
            found = self._postmaster(data)
            if found is None or not self._alive(found[0]):
                continue
            try:
                self._run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(found[0], signal.SIGKILL)
        if self._orphan_shm is not None:
            # The killed postmaster never removed it; gone once nothing is attached.
            subprocess.run(["ipcrm", "-m", self._orphan_shm], capture_output=True, check=False)
            self._orphan_shm = None  # close() may run twice (a watchdog, then the `with`)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_pair() -> Iterator[PostgresPair]:
    pair = PostgresPair()
    try:
        pair.start()
        yield pair
    finally:
        pair.close()


if __name__ == "__main__":  # a quick look by hand, and the start time
    began = time.monotonic()
    with postgres_pair() as demo:
        print(f"started in {time.monotonic() - began:.2f} s: {demo.dsn()}")
