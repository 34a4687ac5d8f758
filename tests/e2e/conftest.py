from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from harness.client import Api
from harness.system import System, running_system

# The shared system's settings: what the modules sharing it need beyond the defaults,
# none of which changes what another module sees (each test's flows and workspaces are
# its own). A key to store webhook secrets (test_asana, test_handshakes,
# test_provider_dedup); SNS certificates and subscription pages served on loopback
# (test_sns); `http` steps to 127.0.0.2 and nowhere else (test_dedup_and_status's and
# test_flow_steps's endpoints). Starting a system costs about 4 s of CPU: a module that
# can share one should (a module's own settings are the reason to start another).
SHARED_SYSTEM_ENV = {
    "FLOWHOOKS_WEBHOOK_SECRETS_KEY": "e2e-shared-webhook-secrets-key-0123456789",
    "FLOWHOOKS_SNS_CERT_URL_PATTERN": r"^http://127\.0\.0\.1:\d+/",
    "FLOWHOOKS_INGRESS_HTTP_ALLOW_NETWORKS": '["127.0.0.1/32"]',
    "FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS": '["127.0.0.2/32"]',
}


@pytest.fixture(scope="session")
def shared_system() -> Iterator[System]:
    """One system for every module marked `shared_system` (one per xdist worker),
    started when the first of them runs, stopped at the end of the session."""
    with running_system(**SHARED_SYSTEM_ENV) as running:
        yield running


@pytest.fixture(scope="session")
def debugger_and_outbound_system() -> Iterator[System]:
    """test_isolation_debugger's and test_isolation_outbound's system (a start less in
    the serial pass): each module's settings (its SYSTEM_ENV) bound a part of the
    services the other does not use (the debugger API's listings and searches; the
    callback and alert senders and the replays), and each sees workspaces of its own.
    No variable may be set by both: one module's value would change the other's test."""
    from tests.e2e import test_isolation_debugger, test_isolation_outbound

    debugger, outbound = test_isolation_debugger.SYSTEM_ENV, test_isolation_outbound.SYSTEM_ENV
    assert not debugger.keys() & outbound.keys(), debugger.keys() & outbound.keys()
    with running_system(**debugger, **outbound) as running:
        yield running


@pytest.fixture(scope="module")
def system(request: pytest.FixtureRequest) -> Iterator[System]:
    """One running system per test module (starting four services takes seconds), or,
    in a module marked `shared_system`, the session's shared one with workspaces of the
    module's own. A module that needs other settings, or stops, kills or restarts
    services, overrides this fixture (and is not marked)."""
    if request.node.get_closest_marker("shared_system") is not None:
        shared: System = request.getfixturevalue("shared_system")
        yield shared.with_own_workspaces()
        return
    with running_system() as running:
        yield running


@pytest.fixture
async def api(system: System) -> AsyncIterator[Api]:
    """An HTTP client with a fresh `automation` token of workspace `acme`."""
    token = system.create_token("acme", "automation")
    async with aiohttp.ClientSession() as session:
        yield Api(system, session, token)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed e2e test shows the tail of every service's log: a timing failure in CI
    cannot be run again to see what the services were doing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        system = value.system if isinstance(value, Api) else value
        if isinstance(system, System):
            report.sections.append(("service logs", system.logs()))
            return
