from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

from harness.infra import SERVERS, fresh_database, fresh_vhost

# Run by `make test` in a pass of their own, after the parallel one, with nothing beside
# them: they restart a server every other test uses, or they hold the system to bounds
# on time that a neighbour busy on the other core would break. A module path (glob) or
# one test's node id, with why. (The failover modules run their own cluster and
# PostgreSQL pair on private ports, with bounds of seconds, not of a CPU's share: they
# run in the parallel pass, where their waits for booting nodes overlap other work.)
SERIAL = {
    "tests/e2e/test_isolation*.py": "latency and start bounds beside a hostile workspace",
    "tests/integration/test_broker_restart.py": "restarts the local RabbitMQ",
    "tests/e2e/test_debugger.py::test_postgresql_restart_loses_nothing": (
        "restarts the local PostgreSQL"
    ),
    "tests/e2e/test_async_webhooks.py::test_runner_killed_mid_run_loses_nothing": (
        "kills the runner while its 120 sends are still running: a race with the runner"
    ),
}

# The parallel pass hands out whole files in collection order (`--no-loadscope-reorder`
# in the Makefile): the longest first (measured: a file's setup, calls and teardowns in a
# `make test` run), so that none starts last and runs alone while the other process has
# nothing left; then the other e2e and integration files; the many short unit files
# last, filling the gaps at the end.
LONGEST_FIRST = (
    # Its own RabbitMQ cluster and PostgreSQL pair on private ports (bench/chaos.py
    # --suite): it kills only those, so it runs beside the others, first, as the longest.
    "tests/e2e/test_chaos.py",
    "tests/integration/test_broker_failover.py",
    "tests/e2e/test_fuzz.py",
    "tests/e2e/test_cli.py",
    "tests/e2e/test_replays.py",
    "tests/e2e/test_token_key_ring.py",
    "tests/e2e/test_callbacks.py",
    "tests/integration/test_worker_pool.py",
    "tests/e2e/test_alerts.py",
    "tests/e2e/test_ordering.py",
    "tests/e2e/test_dedup_and_status.py",
    "tests/e2e/test_dev_supervisor.py",
    "tests/e2e/test_timeouts_and_outages.py",
    "tests/e2e/test_debugger_search.py",
    "tests/e2e/test_debugger_pages.py",
    "tests/integration/test_database_failover.py",
    "tests/e2e/test_respond_and_delay.py",
)


# Last in the serial pass, one after the other: the two isolation modules that share one
# system (tests/e2e/conftest.py `debugger_and_outbound_system`, started by the first, up
# until the session ends). Anywhere else, it would idle beside the modules run between
# or after them, its pollers querying amid their timing bounds.
SHARED_SYSTEM_LAST = (
    "tests/e2e/test_isolation_debugger.py",
    "tests/e2e/test_isolation_outbound.py",
)


def run_order(nodeid: str) -> int:
    path = nodeid.split("::")[0]
    if path in LONGEST_FIRST:
        return LONGEST_FIRST.index(path)
    if path in SHARED_SYSTEM_LAST:
        return len(LONGEST_FIRST) + 2
    return len(LONGEST_FIRST) + (1 if path.startswith("tests/unit/") else 0)


def is_serial(nodeid: str) -> bool:
    path = nodeid.split("::")[0]
    return any(
        fnmatch(path, pattern) or nodeid == pattern or nodeid.startswith(pattern + "[")
        for pattern in SERIAL
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m serial` (make test's second pass) collects only the files SERIAL names:
    importing all the others costs seconds for tests it would deselect."""
    if config.getoption("markexpr") != "serial" or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix != ".py":
        return None
    path = collection_path.relative_to(config.rootpath).as_posix()
    if any(fnmatch(path, pattern.split("::")[0]) for pattern in SERIAL):
        return None  # collected, unless something else (--ignore) says otherwise
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Before `-m` selects: `-m serial` and `-m "not serial"` see the marks. Files are
    put in `run_order` (a stable sort: each file's tests stay together, in order)."""
    for item in items:
        if is_serial(item.nodeid):
            item.add_marker(pytest.mark.serial)
        elif item.get_closest_marker("serial") is not None:
            # The serial pass collects only SERIAL's files: this test would run in no pass.
            raise pytest.UsageError(f"{item.nodeid}: mark it serial in tests/conftest.py SERIAL")
    items.sort(key=lambda item: run_order(item.nodeid))


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with fresh_vhost() as url:
        yield url


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The vhosts and databases given back are removed in the background: wait for it
    here, inside the run (and its time), rather than at interpreter exit."""
    SERVERS.close()
