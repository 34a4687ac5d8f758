"""The uniform interface of a step type."""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from services.runner.bounds import RunBounds
from services.runner.templates import TemplateEngine

if TYPE_CHECKING:
    from services.runner.engine import Engine
    from shared.outbound import OutboundHttp


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


@dataclass(frozen=True)
class EarlyAnswer:
    """What a `respond` step answered the sender, and when (steps/respond.py)."""

    status_code: int
    content_type: str
    body: str
    headers: dict[str, str]
    at: datetime


@dataclass
class RunState:
    """What one run has used so far, against its limits."""

    limits: RunBounds
    request_id: str = ""  # the webhook request's: the same on every attempt of the run
    trace: list[Any] = field(default_factory=list)
    loop_iterations: int = 0
    dropped_steps: int = 0  # steps past `max_trace_steps`, not in the trace
    output_sizes: dict[int, int] = field(default_factory=dict)  # id(entry) -> bytes
    # When the run's timeout ends (time.monotonic()): a step that would wait past it fails
    # at once instead. None: no deadline (an engine run outside a worker).
    deadline: float | None = None
    # The answer a `respond` step gave (None: not answered yet).
    answered: EarlyAnswer | None = None

    def remaining_s(self) -> float | None:
        """Seconds left before the run's deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def record(self, entry: Any) -> bool:
        """Adds a step to the trace unless the trace is full (then only counts it)."""
        if len(self.trace) >= self.limits.max_trace_steps:
            self.dropped_steps += 1
            return False
        self.trace.append(entry)
        return True

    def count_iterations(self, count: int) -> bool:
        """Charges `count` loop iterations; False once the run's total is past its bound."""
        self.loop_iterations += count
        return self.loop_iterations <= self.limits.max_loop_iterations


@dataclass
class RunContext:
    """What a step sees while it runs."""

    templates: TemplateEngine
    values: dict[str, Any]  # ref-id -> output, plus `request` (and `loop` inside loops)
    path: str  # where this step is in the flow, for error messages: "steps[0]"
    engine: "Engine"  # to run nested step lists (condition, loop)
    state: RunState  # the run's trace and what it has used, which nested steps add to
    limits: RunBounds
    http: "OutboundHttp | None" = None
    iterations: tuple[int, ...] = ()  # the indexes of the loops this step runs in


@dataclass(frozen=True)
class StepType:
    name: str
    model: type[StepModel]
    run: Callable[[Any, RunContext], Awaitable[Any]]
