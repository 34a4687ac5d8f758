"""Step types. Each is one module with a pydantic model (its fields and validation)
and `run(step, ctx)`; adding a step type is adding a module and one line in
`STEP_TYPES`."""

from services.runner.steps.base import StepModel, StepType
from services.runner.steps.template import TEMPLATE

STEP_TYPES: dict[str, StepType] = {step_type.name: step_type for step_type in (TEMPLATE,)}

__all__ = ["STEP_TYPES", "StepModel", "StepType"]
