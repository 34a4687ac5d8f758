"""The one list of flowhooks services. Everything that needs every service (the
`flowhooks` command, the development supervisor, the broker's users and permissions,
the test and benchmark harness, the deploy-file tests) iterates `NAMES` and asks
`spec(name)` for the rest: settings class, ports, database schema, routes.

A service is one package, `services/<name>/`, whose `app.py` declares `SERVICE`, a
`ServiceSpec` (shared/service.py); adding one to flowhooks is adding its name and
default ports here. Names and ports only, each spec imported when first asked for:
importing every service's app (aiohttp, asyncpg, its handlers) would cost every
`flowhooks` command, and the API client that needs only the default URLs, about a
second; a service process imports its own app only.
"""

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from shared.settings import Ports

if TYPE_CHECKING:
    from shared.service import ServiceSpec

# Each service's default ports (its settings' `port` and `ops_port`, which the variables
# FLOWHOOKS_<NAME>_PORT and FLOWHOOKS_<NAME>_OPS_PORT change). Their order is that of
# `flowhooks run`'s list and of the broker's users; migrations do not depend on it (no
# schema reads another's).
PORTS: dict[str, Ports] = {
    "ingress": Ports(8080, 9080),
    "auth": Ports(8081, 9081),
    "runner": Ports(8082, 9082),
    "debugger": Ports(8083, 9083),
}
NAMES: tuple[str, ...] = tuple(PORTS)


@cache
def spec(name: str) -> "ServiceSpec[Any]":
    """The `SERVICE` of `services/<name>/app.py`."""
    if name not in NAMES:
        raise KeyError(f"no service {name!r}; the services are {', '.join(NAMES)}")
    found: ServiceSpec[Any] = importlib.import_module(f"services.{name}.app").SERVICE
    assert found.name == name, f"services/{name}/app.py declares {found.name!r}"
    return found


def specs() -> "list[ServiceSpec[Any]]":
    return [spec(name) for name in NAMES]
