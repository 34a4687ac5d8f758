"""Step types. Each is one module with a pydantic model (its fields and validation)
and `run(step, ctx)`; adding a step type is adding a module and one line in
`STEP_TYPES`."""

from services.runner.steps.base import StepModel, StepType
from services.runner.steps.condition import CONDITION
from services.runner.steps.delay import DELAY
from services.runner.steps.fail import FAIL
from services.runner.steps.http import HTTP
from services.runner.steps.loop import LOOP
from services.runner.steps.respond import RESPOND
from services.runner.steps.template import TEMPLATE

STEP_TYPES: dict[str, StepType] = {
    step_type.name: step_type
    for step_type in (TEMPLATE, HTTP, CONDITION, LOOP, FAIL, RESPOND, DELAY)
}

__all__ = ["STEP_TYPES", "StepModel", "StepType"]
