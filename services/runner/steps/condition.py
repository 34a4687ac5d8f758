"""`condition`: `if` (a template such as `{{ web1.amount > 100 }}`) chooses `then` or
`else` (step lists); output `{"value": true|false}`. Steps of the branch that ran are
reachable by their ref-ids afterwards."""

from typing import Any, ClassVar, Literal

from pydantic import Field

from services.runner.steps.base import RunContext, StepModel, StepType


class ConditionStep(StepModel):
    NESTED: ClassVar[dict[str, str]] = {"then": "then", "else": "else_"}

    type: Literal["condition"]
    if_: str = Field(alias="if")
    then: list[Any] = Field(default_factory=list)
    else_: list[Any] = Field(default_factory=list, alias="else")

    def templates(self) -> dict[str, str]:
        return {"if": self.if_}


async def run(step: ConditionStep, ctx: RunContext) -> Any:
    value = ctx.templates.render_value(step.if_, ctx.values, f"{ctx.path}.if")
    chosen = bool(value)
    branch = "then" if chosen else "else"
    await ctx.engine.run_steps(
        step.then if chosen else step.else_,
        ctx.values,
        f"{ctx.path}.{branch}",
        ctx.state,
        ctx.iterations,
    )
    return {"value": chosen}


CONDITION = StepType("condition", ConditionStep, run)
