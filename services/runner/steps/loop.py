"""`loop`: `over` (a template giving a list) runs `steps` once per item, with
`{{ loop.item }}` and `{{ loop.index }}` (from 0); output `{"value": [the last step's
output of each iteration]}`. Ref-ids inside the loop are local to one iteration."""

from typing import Any, ClassVar, Literal

from pydantic import Field

from services.runner.steps.base import RunContext, StepModel, StepType
from services.runner.templates import TemplateFailure


class LoopStep(StepModel):
    NESTED: ClassVar[dict[str, str]] = {"steps": "steps"}

    type: Literal["loop"]
    over: str
    steps: list[Any] = Field(default_factory=list)

    def templates(self) -> dict[str, str]:
        return {"over": self.over}


async def run(step: LoopStep, ctx: RunContext) -> Any:
    items = ctx.templates.render_value(step.over, ctx.values, f"{ctx.path}.over")
    if isinstance(items, dict):
        items = list(items.items())
    if not isinstance(items, list):
        raise TemplateFailure(f"{ctx.path}.over: must give a list, not {type(items).__name__}")
    if len(items) > ctx.limits.loop_max_items:
        raise TemplateFailure(
            f"{ctx.path}.over: more than {ctx.limits.loop_max_items} items"
            " (FLOWHOOKS_RUNNER_LOOP_MAX_ITEMS)"
        )
    if not ctx.state.count_iterations(len(items)):
        raise TemplateFailure(
            f"{ctx.path}.over: the run's loops would go past {ctx.limits.max_loop_iterations}"
            " iterations in total (FLOWHOOKS_RUNNER_MAX_LOOP_ITERATIONS)"
        )
    outputs = []
    for index, item in enumerate(items):
        values = {**ctx.values, "loop": {"item": item, "index": index}}
        outputs.append(
            await ctx.engine.run_steps(
                step.steps, values, f"{ctx.path}.steps", ctx.state, (*ctx.iterations, index)
            )
        )
    return {"value": outputs}


LOOP = StepType("loop", LoopStep, run)
