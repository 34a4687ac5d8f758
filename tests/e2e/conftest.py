from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.e2e.client import Api
from tests.e2e.system import System, running_system


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    """One running system per test module (starting four services takes seconds).
    A module that needs other settings, or stops services, overrides this fixture."""
    with running_system() as running:
        yield running


@pytest.fixture
async def api(system: System) -> AsyncIterator[Api]:
    """An HTTP client with a fresh `automation` token of workspace `acme`."""
    token = system.create_token("acme", "automation")
    async with aiohttp.ClientSession() as session:
        yield Api(system, session, token)
