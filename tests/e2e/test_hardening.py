"""Issue 11's smaller items over real HTTP: /metrics only on the ops port, body timeouts
on the management APIs, over-deep flows refused, integers kept exact or refused."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from harness.client import Api
from harness.system import SERVICES, System, running_system
from services.runner.definition import MAX_STEP_DEPTH

pytestmark = pytest.mark.e2e

BODY_TIMEOUT_S = 1
NOT_FOUND = {"status": 404, "error": "not_found", "message": "no such resource", "data": None}
TOO_SLOW = {
    "status": 408,
    "error": "request_timeout",
    "message": f"the body did not arrive within {BODY_TIMEOUT_S} s",
    "data": None,
}


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with running_system(FLOWHOOKS_HTTP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as running:
        yield running


async def test_metrics_on_the_ops_port_only(api: Api) -> None:
    for name in SERVICES:
        service = api.system.processes[name][0]
        async with api.session.get(f"{service.url}/metrics") as answer:
            assert answer.status == 404, name
            assert await answer.json() == NOT_FOUND
        async with api.session.get(f"{service.ops_url}/metrics") as answer:
            assert answer.status == 200, name
            assert answer.headers["Content-Type"].startswith("text/plain")
            assert "flowhooks_http_requests_total" in await answer.text()
        # The probes answer on both: load balancers ask the service's port, kubelets
        # the ops port.
        for url in (service.url, service.ops_url):
            async with api.session.get(f"{url}/readyz") as answer:
                assert answer.status == 200, (name, url)
                assert (await answer.json())["ready"] is True
            async with api.session.get(f"{url}/healthz") as answer:
                assert await answer.json() == {"status": "ok"}


async def trickle() -> AsyncIterator[bytes]:
    yield b'{"name": '
    await asyncio.sleep(BODY_TIMEOUT_S + 2)
    yield b'"late"}'


@pytest.mark.parametrize(
    ("service", "path"), [("runner", "/v1/flows"), ("auth", "/v1/access-tokens")]
)
async def test_slow_body_to_a_management_api_is_408(api: Api, service: str, path: str) -> None:
    async with api.session.post(
        f"{api.system.url(service)}{path}",
        data=trickle(),
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
    ) as answer:
        assert answer.status == 408
        assert answer.headers["Content-Type"] == "application/json"
        assert await answer.json() == TOO_SLOW


def nested_flow(depth: int) -> dict[str, Any]:
    """Steps lists inside each other `depth` deep (the top level counted)."""
    step: dict[str, Any] = {"ref_id": "leaf", "type": "template", "template": "done"}
    for level in range(depth - 1):
        step = {
            "ref_id": f"c{level}",
            "type": "condition",
            "if": "{{ true }}",
            "then": [step],
            "else": [],
        }
    return {"name": f"nested {depth}", "status": "live", "steps": [step]}


async def test_over_deep_flow_is_400_and_the_deepest_allowed_runs(api: Api) -> None:
    for depth in (MAX_STEP_DEPTH + 1, 150):
        async with api.session.post(
            f"{api.system.url('runner')}/v1/flows",
            json=nested_flow(depth),
            headers={"Authorization": f"Bearer {api.token}"},
        ) as answer:
            assert answer.status == 400, depth
            field = "steps[0]" + ".then[0]" * (MAX_STEP_DEPTH - 1) + ".then"
            assert await answer.json() == {
                "status": 400,
                "error": "bad_request",
                "message": f"{field}: steps are nested deeper than {MAX_STEP_DEPTH} levels",
                "data": {"field": field},
            }
    flow = await api.create_flow(nested_flow(MAX_STEP_DEPTH))
    token = (await api.webhook_info(flow["id"]))["token"]
    status, _, body = await api.send(flow["id"], token, json={})
    assert status == 200, body
    assert orjson.loads(body)["data"] == {"value": True}


async def test_integers_exact_within_64_bits_refused_beyond(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "echo",
            "status": "live",
            "steps": [{"ref_id": "echo", "type": "template", "template": "{{ web1 }}"}],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    exact = b'{"big": 18446744073709551615, "small": -9223372036854775808, "f": 1e19}'
    status, _, body = await api.send(
        flow["id"], token, data=exact, headers={"Content-Type": "application/json"}
    )
    assert status == 200, body
    assert orjson.loads(body)["data"]["value"] == {
        "big": 2**64 - 1,
        "small": -(2**63),
        "f": 1e19,
    }
    for literal in (b"18446744073709551616", b"-9223372036854775809"):
        status, headers, body = await api.send(
            flow["id"],
            token,
            data=b'{"id": ' + literal + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert status == 400
        assert headers["Content-Type"] == "application/json"
        assert orjson.loads(body) == {
            "status": 400,
            "error": "bad_request",
            "message": (
                f"the JSON body holds the integer {literal.decode()}, outside the range of"
                " exact integers (-9223372036854775808 to 18446744073709551615);"
                " send larger numbers as strings"
            ),
            "data": None,
        }


async def test_ops_port_serves_nothing_else(api: Api) -> None:
    ops = api.system.processes["runner"][0].ops_url
    async with api.session.post(
        f"{ops}/v1/flows", json={}, headers={"Authorization": f"Bearer {api.token}"}
    ) as answer:
        assert answer.status == 404
        assert await answer.json() == NOT_FOUND
