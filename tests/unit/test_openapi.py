"""The OpenAPI documents: every route an app serves is a documented operation (or
declared as not part of the API), and the documents are valid OpenAPI 3.1 whose
request bodies are the validating models' own schemas."""

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services import registry
from services.auth.app import SERVICE as AUTH
from services.auth.tokens_api import NewToken
from services.debugger.alerts_api import AlertConfig
from services.debugger.app import SERVICE as DEBUGGER
from services.runner.app import SERVICE as RUNNER
from services.runner.definition import FlowDefinition
from shared.openapi import DOCS_CSP, add_docs_routes, build_document
from shared.service import ServiceSpec

SERVICES: list[ServiceSpec[Any]] = registry.specs()
# What every app serves besides its API: the probes and the documentation itself.
NOT_API = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/{name}"}


def _app(spec: ServiceSpec[Any]) -> web.Application:
    settings = spec.settings(runner_token_key="k" * 43) if spec is RUNNER else spec.settings()
    return spec.create_app(settings)


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_every_served_route_is_a_documented_operation(spec: ServiceSpec[Any]) -> None:
    document = build_document(spec.name, spec.routes)
    declared_elsewhere = {
        (route.method, route.path)
        for route in spec.routes
        if route.doc is not None and not route.doc.in_api
    }
    undocumented = []
    for served in _app(spec).router.routes():
        path = served.resource.canonical if served.resource is not None else ""
        if served.method == "HEAD" or path in NOT_API:
            continue
        if (served.method, path) in declared_elsewhere:
            continue
        if served.method.lower() not in document["paths"].get(path, {}):
            undocumented.append(f"{served.method} {path}")
    assert not undocumented, (
        f"{spec.name}: routes without an OpenAPI operation: {undocumented}; give each "
        "Route a summary and models (shared/http_api.py), or `in_api=False` for a page"
    )


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_document_is_valid_openapi_31(spec: ServiceSpec[Any]) -> None:
    from schemathesis.openapi import from_dict

    document = build_document(f"flowhooks {spec.name}", spec.routes)
    assert document["openapi"] == "3.1.0"
    schema = from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations  # every operation resolves (references, parameters, bodies)
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert {"4XX", "5XX"} <= set(operation["responses"]), (method, path)
            for name in _path_names(path):
                assert any(p["name"] == name for p in operation["parameters"]), (path, name)


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def test_request_bodies_are_the_validating_models() -> None:
    def component(spec: ServiceSpec[Any], method: str, path: str) -> dict[str, Any]:
        document = build_document(spec.name, spec.routes)
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[1]
        return dict(document["components"]["schemas"][name])

    flow = component(RUNNER, "post", "/v1/flows")
    assert set(flow["properties"]) == set(FlowDefinition.model_fields)
    assert flow["additionalProperties"] is False  # extra="forbid", as the model validates
    assert flow["required"] == ["name"]
    assert "required" not in component(RUNNER, "patch", "/v1/flows/{flow_id}")
    assert set(component(AUTH, "post", "/v1/access-tokens")["properties"]) == set(
        NewToken.model_fields
    )
    alert = component(DEBUGGER, "put", "/v1/flows/{flow_id}/alert")
    assert set(alert["properties"]) == set(AlertConfig.model_fields)


async def test_served_document_and_docs_page() -> None:
    # The kernel's routes on a bare app: the service's own start needs its database.
    app = web.Application()
    add_docs_routes(app, "flowhooks auth", AUTH.routes)
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/openapi.json")
        assert answer.status == 200
        document = await answer.json()
        assert "/v1/access-tokens" in document["paths"]

        page = await client.get("/docs")
        assert page.status == 200
        assert page.headers["Content-Security-Policy"] == DOCS_CSP
        html = await page.text()
        assert "<script>" not in html  # no inline script: the policy allows none
        for asset in ("docs/swagger-ui-bundle.js", "docs/swagger-ui.css", "docs/start.js"):
            assert asset in html
            served = await client.get(f"/{asset}")
            assert served.status == 200, asset
            assert len(await served.read()) > 0
        # Only the page's own files: nothing else on disk is reachable.
        for name in ("index.css", "..%2F__init__.py", "swagger-initializer.js"):
            assert (await client.get(f"/docs/{name}")).status == 404
