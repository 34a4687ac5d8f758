from collections.abc import Iterator
from fnmatch import fnmatch

import pytest

from tests.infra import SERVERS, fresh_database, fresh_vhost

# Run by `make test` in a pass of their own, after the parallel one, with nothing beside
# them: they restart a server every other test uses, or they hold the system to bounds
# on time that a neighbour busy on the other core would break. A module path (glob) or
# one test's node id, with why.
SERIAL = {
    "tests/e2e/test_chaos.py": "kills broker nodes and a PostgreSQL primary under load",
    "tests/e2e/test_isolation*.py": "latency and start bounds beside a hostile workspace",
    "tests/integration/test_broker_failover.py": "kills nodes of a 3-node cluster under load",
    "tests/integration/test_database_failover.py": "promotes a standby under load",
    "tests/integration/test_broker_restart.py": "restarts the local RabbitMQ",
    "tests/e2e/test_debugger.py::test_postgresql_restart_loses_nothing": (
        "restarts the local PostgreSQL"
    ),
}


def is_serial(nodeid: str) -> bool:
    path = nodeid.split("::")[0]
    return any(
        fnmatch(path, pattern) or nodeid == pattern or nodeid.startswith(pattern + "[")
        for pattern in SERIAL
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Before `-m` selects: `-m serial` and `-m "not serial"` see the marks."""
    for item in items:
        if is_serial(item.nodeid):
            item.add_marker(pytest.mark.serial)


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
