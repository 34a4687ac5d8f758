from collections.abc import Iterator

import pytest

from tests.infra import fresh_database, fresh_vhost


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with fresh_vhost() as url:
        yield url


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url
