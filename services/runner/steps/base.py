"""The uniform interface of a step type."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from services.runner.templates import TemplateEngine

if TYPE_CHECKING:
    from services.runner.engine import Engine

REF_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StepModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref_id: str = Field(pattern=REF_ID_PATTERN, max_length=64)
    type: str

    def templates(self) -> dict[str, str]:
        """Templated fields by name, for validation on save."""
        return {}

    def nested(self) -> dict[str, list["StepModel"]]:
        """Step lists inside this step (condition, loop), by field name."""
        return {}


@dataclass
class RunContext:
    """What a step sees while it runs."""

    templates: TemplateEngine
    values: dict[str, Any]  # ref-id -> output, plus `request` (and `loop` inside loops)
    path: str  # where this step is in the flow, for error messages: "steps[0]"
    engine: "Engine"  # to run nested step lists (condition, loop)


@dataclass(frozen=True)
class StepType:
    name: str
    model: type[StepModel]
    run: Callable[[Any, RunContext], Awaitable[Any]]
