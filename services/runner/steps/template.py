"""`template`: renders one Jinja2 template; output `{"value": ...}` (JSON where the
text is JSON; a single `{{ expression }}` keeps its type)."""

from typing import Any, Literal

from services.runner.steps.base import RunContext, StepModel, StepType


class TemplateStep(StepModel):
    type: Literal["template"]
    template: str

    def templates(self) -> dict[str, str]:
        return {"template": self.template}


async def run(step: TemplateStep, ctx: RunContext) -> Any:
    return {"value": ctx.templates.render_value(step.template, ctx.values, f"{ctx.path}.template")}


TEMPLATE = StepType("template", TemplateStep, run)
