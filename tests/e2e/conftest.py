from collections.abc import Iterator

import pytest

from tests.e2e.system import System
from tests.infra import fresh_database, fresh_vhost


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """One running system per test module (starting four services takes seconds)."""
    with fresh_vhost() as amqp_url, fresh_database() as database_url:
        running = System(amqp_url, database_url)
        try:
            running.start_all()
            yield running
        finally:
            logs = running.logs()
            codes = running.stop_all()
            bad = {name: code for name, code in codes.items() if code != 0}
            assert not bad, f"services did not stop cleanly: {bad}\n{logs}"
