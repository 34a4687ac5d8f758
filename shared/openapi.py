"""OpenAPI 3.1 documents built from the routes' declarations, and the `/docs` page.

Each `Route` of a `ServiceSpec` (shared/http_api.py) gives its `Operation` (`Route.doc`):
a summary, the pydantic models the kernel validates its body and query with and
serialises its answers with (one source of truth: nothing here is declared twice).
pydantic's JSON Schema is 2020-12, the dialect OpenAPI 3.1 uses, so the models' schemas
go in `components.schemas` unchanged. Every error is the envelope (`shared/errors.py`):
each operation documents `4XX` and `5XX` as `ErrorEnvelope`.

`/docs` is Swagger UI from the `swagger-ui-py` package's files (nothing is fetched at
run time), under a Content-Security-Policy that allows only this origin's scripts."""

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, RootModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.schemas.vocabulary import ErrorEnvelope

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"


class AnyJson(RootModel[Any]):
    """Any JSON value (a flow's input, a step's output)."""


class NoContent(BaseModel):
    """Marker: the answer has no body (204)."""


class Page(BaseModel):
    """A list answer's paging: pass `next_cursor` as `?cursor=` (null: the last page)."""

    model_config = ConfigDict(extra="allow")

    next_cursor: str | None


@dataclass(frozen=True)
class Operation:
    """What one route documents. `responses` maps a status (or `"default"`) to the
    model of its body; errors (the envelope) are added to every operation."""

    summary: str
    responses: Mapping[int | Literal["default"], type[BaseModel]]
    body: type[BaseModel] | None = None
    # PATCH: the body's fields, none of them required (merged over the stored ones).
    partial: bool = False
    body_required: bool = True
    body_media: tuple[str, ...] = (JSON,)
    # The media type of the non-error answers (a stream, a flow's own answer).
    response_media: str = JSON
    query: type[BaseModel] | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    # No bearer token (the webhook takes its flow's own token or signature instead).
    secured: bool = True
    # False: served but not part of the API (a page for people); left out of the
    # document and named so by the coverage test.
    in_api: bool = True


class DocumentedRoute(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def doc(self) -> Operation | None: ...


_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


@dataclass
class _Models:
    """Every model the document names, collected first so pydantic builds one set of
    components with `#/components/schemas/...` references."""

    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = field(default_factory=list)

    def add(self, model: type[BaseModel], mode: JsonSchemaMode) -> None:
        if (model, mode) not in self.wanted:
            self.wanted.append((model, mode))

    def build(self) -> tuple[dict[tuple[Any, str], dict[str, Any]], dict[str, Any]]:
        refs, top = models_json_schema(self.wanted, ref_template="#/components/schemas/{model}")
        by_model: dict[tuple[Any, str], dict[str, Any]] = {key: ref for key, ref in refs.items()}
        return by_model, dict(top.get("$defs", {}))


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def build_document(title: str, routes: Iterable[DocumentedRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes that declare an operation."""
    documented = [r for r in routes if r.doc is not None and r.doc.in_api]
    models = _Models()
    models.add(ErrorEnvelope, "serialization")
    for route in documented:
        doc = route.doc
        assert doc is not None
        if doc.body is not None:
            models.add(doc.body, "validation")
        for model in doc.responses.values():
            if model is not NoContent:
                models.add(model, "serialization")
    refs, schemas = models.build()
    envelope = {"content": {JSON: {"schema": refs[(ErrorEnvelope, "serialization")]}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        doc = route.doc
        assert doc is not None
        path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        operation: dict[str, Any] = {
            "operationId": _operation_id(route.method, path),
            "summary": doc.summary,
        }
        if doc.description:
            operation["description"] = doc.description
        if doc.tags:
            operation["tags"] = list(doc.tags)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(route.path)
        ]
        if doc.query is not None:
            parameters += _query_parameters(doc.query)
        if parameters:
            operation["parameters"] = parameters
        if doc.body is not None:
            schema = refs[(doc.body, "validation")]
            if doc.partial:
                schema = _partial(schema, schemas)
            operation["requestBody"] = {
                "required": doc.body_required,
                "content": {media: {"schema": schema} for media in doc.body_media},
            }
        responses: dict[str, Any] = {}
        for status, model in doc.responses.items():
            described: dict[str, Any] = {"description": _describe(model)}
            if model is not NoContent:
                described["content"] = {
                    doc.response_media: {"schema": refs[(model, "serialization")]}
                }
            responses[str(status)] = described
        responses["4XX"] = {"description": "The request was refused", **envelope}
        responses["5XX"] = {"description": "The service or a peer failed", **envelope}
        operation["responses"] = responses
        if doc.secured:
            operation["security"] = [{"bearer": []}]
        else:
            operation["security"] = []
        paths.setdefault(path, {})[route.method.lower()] = operation

    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": _version()},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A personal access token (`flowhooks token create`)",
                }
            },
        },
    }


def _partial(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A component like `schema`'s but with no required field (`<Name>Patch`)."""
    name = schema["$ref"].rsplit("/", 1)[1]
    patch = copy.deepcopy(schemas[name])
    patch.pop("required", None)
    patch["title"] = f"{patch.get('title', name)} (patch)"
    schemas[f"{name}Patch"] = patch
    return {"$ref": f"#/components/schemas/{name}Patch"}


def _describe(model: type[BaseModel]) -> str:
    if model is NoContent:
        return "No content"
    doc = (model.__doc__ or "").strip()
    # pydantic's base classes' docstrings are not ours to show.
    if not doc or model.__doc__ in (BaseModel.__doc__, RootModel.__doc__):
        return model.__name__
    return doc.splitlines()[0]


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{words}"


def _version() -> str:
    try:
        return version("flowhooks")
    except PackageNotFoundError:
        return "0"


# The page: Swagger UI's own files, and a start script served from here, not inline,
# so the policy below needs no 'unsafe-inline' for scripts.
_DOCS_HTML = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flowhooks API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/start.js"></script>
</body>
</html>
"""
_START_JS = b"""window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
});
"""
# Swagger UI sets style attributes (React), hence 'unsafe-inline' for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}


def _swagger_ui_dir() -> Path:
    import swagger_ui  # the swagger-ui-py package: Swagger UI's dist files

    return Path(swagger_ui.__file__).parent / "static"


def add_docs_routes(app: web.Application, title: str, routes: Iterable[DocumentedRoute]) -> None:
    """`GET /openapi.json` and `GET /docs` (with its assets) on `app`."""
    routes = list(routes)
    document: dict[str, Any] = {}
    headers = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"}

    async def openapi(request: web.Request) -> web.Response:
        if not document:  # built once, on first use: nothing to do at start
            document.update(build_document(title, routes))
        return web.json_response(document)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=_DOCS_HTML, content_type="text/html", headers=headers)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "start.js":
            return web.Response(body=_START_JS, content_type="text/javascript", headers=headers)
        if name not in _ASSETS:  # a fixed list: no path from the URL reaches the disk
            raise web.HTTPNotFound()
        body = (_swagger_ui_dir() / name).read_bytes()
        return web.Response(
            body=body,
            content_type=_ASSETS[name],
            headers={**headers, "Cache-Control": "public, max-age=86400"},
        )

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", page)
    app.router.add_get("/docs/{name}", asset)
