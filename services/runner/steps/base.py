"""The uniform interface of a step type."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from services.runner.templates import TemplateEngine

if TYPE_CHECKING:
    from services.runner.engine import Engine
    from services.runner.outbound import OutboundHttp


@dataclass(frozen=True)
class StepLimits:
    loop_max_items: int = 10_000
    http_max_response_bytes: int = 10 * 1024 * 1024
    http_default_timeout_s: float = 10.0
    http_max_retries: int = 5


REF_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StepModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Step lists inside this step (condition, loop): their JSON name -> attribute.
    NESTED: ClassVar[dict[str, str]] = {}

    ref_id: str = Field(pattern=REF_ID_PATTERN, max_length=64)
    type: str

    def templates(self) -> dict[str, str]:
        """Templated fields by name, for validation on save."""
        return {}

    def trace_input(self) -> dict[str, Any]:
        """What the step trace shows as this step's input (secrets redacted)."""
        return self.templates()

    def nested(self) -> dict[str, list["StepModel"]]:
        """Step lists inside this step, by their JSON name."""
        return {name: getattr(self, attribute) for name, attribute in self.NESTED.items()}


@dataclass
class RunContext:
    """What a step sees while it runs."""

    templates: TemplateEngine
    values: dict[str, Any]  # ref-id -> output, plus `request` (and `loop` inside loops)
    path: str  # where this step is in the flow, for error messages: "steps[0]"
    engine: "Engine"  # to run nested step lists (condition, loop)
    trace: list[Any]  # the run's step trace, which nested steps add to
    limits: StepLimits
    http: "OutboundHttp | None" = None


@dataclass(frozen=True)
class StepType:
    name: str
    model: type[StepModel]
    run: Callable[[Any, RunContext], Awaitable[Any]]
