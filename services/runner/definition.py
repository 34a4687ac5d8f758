"""A flow's definition: parsing and validation on save. Every refusal is a 400
`bad_request` whose message and `data.field` point at the place (`steps[0].template`)."""

from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.runner.steps import STEP_TYPES, StepModel
from services.runner.steps.base import REF_ID_PATTERN
from services.runner.templates import TemplateEngine
from shared.errors import BadRequest
from shared.schemas.access import FlowStatus

RESERVED_REF_IDS = frozenset({"request", "loop"})
# Step lists inside each other (`condition` and `loop` steps), the top level being 1.
# Fixed, not a setting: a stored flow must stay valid for every runner, and far deeper
# definitions cannot even be encoded (orjson stops at 255 levels of JSON: 500 on save).
MAX_STEP_DEPTH = 32


class ResponseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status_code: int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str | None = Field(default=None, max_length=200)


class WebhookTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ref_id: str = Field(default="web1", pattern=REF_ID_PATTERN, max_length=64)
    is_async: bool = Field(default=False, alias="async")
    timeout_s: float = Field(default=30.0, gt=0)
    response: ResponseConfig | None = None


class FlowDefinition(BaseModel):
    """What a user saves. `steps` hold the step types' own models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    status: FlowStatus = "draft"
    webhook: WebhookTrigger = Field(default_factory=WebhookTrigger)
    steps: list[Any] = Field(default_factory=list, max_length=200)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "webhook": self.webhook.model_dump(by_alias=True),
            "steps": [step.model_dump(by_alias=True) for step in self.steps],
        }


def _path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _refuse(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", data={"field": field})


def _parse_steps(raw_steps: Any, prefix: str, depth: int = 1) -> list[StepModel]:
    if not isinstance(raw_steps, list):
        raise _refuse(prefix, "must be a list of steps")
    if depth > MAX_STEP_DEPTH:
        raise _refuse(prefix, f"steps are nested deeper than {MAX_STEP_DEPTH} levels")
    steps: list[StepModel] = []
    for index, raw in enumerate(raw_steps):
        path = f"{prefix}[{index}]"
        if not isinstance(raw, dict):
            raise _refuse(path, "must be an object")
        step_type = STEP_TYPES.get(str(raw.get("type")))
        if step_type is None:
            raise _refuse(
                f"{path}.type",
                f"unknown step type {raw.get('type')!r}; known: {', '.join(sorted(STEP_TYPES))}",
            )
        try:
            step = step_type.model.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise _refuse(_path(tuple(error["loc"]), path), error["msg"]) from None
        for name, attribute in step.NESTED.items():
            nested = _parse_steps(getattr(step, attribute), f"{path}.{name}", depth + 1)
            setattr(step, attribute, nested)
        steps.append(step)
    return steps


def parse_definition(raw: Any, engine: TemplateEngine, max_timeout_s: float) -> FlowDefinition:
    if not isinstance(raw, dict):
        raise BadRequest("the flow must be a JSON object")
    try:
        definition = FlowDefinition.model_validate({**raw, "steps": []})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise _refuse(_path(tuple(error["loc"])), error["msg"]) from None
    definition.steps = _parse_steps(raw.get("steps", []), "steps")
    if definition.webhook.timeout_s > max_timeout_s:
        raise _refuse("webhook.timeout_s", f"must be at most {max_timeout_s:g} seconds")
    _check_references(definition, engine)
    return definition


def _check_references(definition: FlowDefinition, engine: TemplateEngine) -> None:
    """Ref-ids unique and not reserved; templates parse and name only what exists."""
    webhook_ref = definition.webhook.ref_id
    if webhook_ref in RESERVED_REF_IDS:
        raise _refuse("webhook.ref_id", f"{webhook_ref!r} is reserved")
    seen = {webhook_ref}
    builtins = set(engine.env.globals) | {"request"}

    def check_template(field: str, source: str, known: set[str]) -> None:
        try:
            names = engine.referenced_names(source)
        except TemplateSyntaxError as exc:
            raise _refuse(
                field, f"template syntax error on line {exc.lineno}: {exc.message}"
            ) from None
        unknown = sorted(names - known - builtins)
        if unknown:
            raise _refuse(
                field,
                f"unknown name {unknown[0]!r}: not the webhook's ref-id, "
                "an earlier step's ref-id or `request`",
            )

    def walk(steps: list[StepModel], prefix: str, known: set[str]) -> set[str]:
        known = set(known)
        for index, step in enumerate(steps):
            path = f"{prefix}[{index}]"
            if step.ref_id in RESERVED_REF_IDS:
                raise _refuse(f"{path}.ref_id", f"{step.ref_id!r} is reserved")
            if step.ref_id in seen:
                raise _refuse(f"{path}.ref_id", f"duplicate ref-id {step.ref_id!r}")
            seen.add(step.ref_id)
            for field, source in step.templates().items():
                check_template(f"{path}.{field}", source, known)
            for field, children in step.nested().items():
                if step.type == "loop":
                    # Ref-ids inside a loop belong to one iteration: not visible after it.
                    walk(children, f"{path}.{field}", known | {"loop"})
                else:
                    known |= walk(children, f"{path}.{field}", known)
            known.add(step.ref_id)
        return known

    known = walk(definition.steps, "steps", {webhook_ref})
    if definition.webhook.response is not None:
        check_template("webhook.response.body", definition.webhook.response.body, known)
