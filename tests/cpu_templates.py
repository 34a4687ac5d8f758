"""Templates that burn a given amount of CPU time when rendered, calibrated on this
machine (the workers run the same Python and Jinja): for the tests of the CPU budgets."""

import functools
import time

from services.runner.templates import TemplateEngine

_INNER = 1000


def _loops(outer: int) -> str:
    return (
        f"{{% for i in range({outer}) %}}{{% for j in range({_INNER}) %}}"
        "{% endfor %}{% endfor %}"
    )


@functools.cache
def _cpu_per_outer_s() -> float:
    """CPU seconds of one outer iteration (1,000 inner ones): the least of a few tries,
    CPU time being what a busy machine inflates least."""
    engine = TemplateEngine(render_timeout_s=60)
    template = _loops(50)
    engine.render_text(template, {}, "warm-up")
    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        engine.render_text(template, {}, "calibration")
        best = min(best, time.thread_time() - started)
    return best / 50


def burning(cpu_s: float, text: str = "") -> str:
    """A template that renders to `text` after computing for about `cpu_s` of CPU."""
    return _loops(max(1, round(cpu_s / _cpu_per_outer_s()))) + text
