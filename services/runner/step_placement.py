"""Where `respond` and `delay` steps may stand in a flow, checked on save (and whenever a
definition is parsed).

- `respond` answers a sync caller early; refused in async flows, whose caller was
  answered `202` when the request was queued: nobody would get the answer, and a flow
  author who wrote one expects an effect that cannot happen. Only at the top level of
  `steps`: before its answer is sent, the run is handed over as a resumed run (stored
  like a zero-second `delay`, services/runner/delays.py), whose position is one index
  into `steps`; inside a loop, a condition or `on_error` it would not be.
- `delay` stores the run and frees its worker (services/runner/delays.py). Only at the
  top level of `steps`: a run resumes at the step after it, which is one index into
  one list (a delay inside a loop or a condition would need the loop's position and
  its partial outputs stored too; in `on_error` the failure is being handled). In a
  sync flow only after a top-level `respond`: its caller is answered before the run
  waits, instead of holding a connection for days."""

from typing import Any

from shared.errors import BadRequest

RESPOND, DELAY = "respond", "delay"
_RESPOND_TOP_LEVEL = (
    "a respond step may stand only at the top level of steps: the rest of the run is"
    " handed over at it, and resumes at the step after it"
)


def check_step_placement(steps: list[Any], on_error: list[Any], is_async: bool) -> None:
    answered = False
    for index, step in enumerate(steps):
        path = f"steps[{index}]"
        if step.type == DELAY and not is_async and not answered:
            raise _refuse(
                path,
                "a delay in a sync flow must come after a respond step (at the top level"
                " of steps): its caller is answered before the run waits",
            )
        answered = answered or step.type == RESPOND
        _check_nested(step, path, is_async)
    for index, step in enumerate(on_error):
        path = f"on_error[{index}]"
        if step.type == DELAY:
            raise _refuse(path, "a delay may stand only at the top level of steps")
        if step.type == RESPOND and not is_async:
            raise _refuse(path, _RESPOND_TOP_LEVEL)
        _check_nested(step, path, is_async)
    if is_async:
        for index, step in enumerate(steps):
            _check_async(step, f"steps[{index}]")
        for index, step in enumerate(on_error):
            _check_async(step, f"on_error[{index}]")


def _check_nested(step: Any, path: str, is_async: bool) -> None:
    for name, nested in step.nested().items():
        for index, inner in enumerate(nested):
            inner_path = f"{path}.{name}[{index}]"
            if inner.type == DELAY:
                raise _refuse(inner_path, "a delay may stand only at the top level of steps")
            if inner.type == RESPOND and not is_async:
                raise _refuse(inner_path, _RESPOND_TOP_LEVEL)
            _check_nested(inner, inner_path, is_async)


def _check_async(step: Any, path: str) -> None:
    if step.type == RESPOND:
        raise _refuse(
            path,
            "an async flow's caller is answered 202 when the request is queued: a respond"
            " step would answer nobody (use it in a sync flow)",
        )
    for name, nested in step.nested().items():
        for index, inner in enumerate(nested):
            _check_async(inner, f"{path}.{name}[{index}]")


def _refuse(field: str, message: str) -> BadRequest:
    return BadRequest(f"{field}: {message}", data={"field": field})
