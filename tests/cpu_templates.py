"""Templates that burn a given amount of CPU time when rendered, calibrated on this
machine (the workers run the same Python and Jinja): for the tests of the CPU budgets."""

import functools
import time

from services.runner.templates import TemplateEngine

# Iterations of the inner loop: large enough that the outer one stays within the
# sandbox's MAX_RANGE (100,000) for seconds of CPU on a fast machine (1,000 inner ones
# take 30 us here: 3 s of CPU was a range of 100,150, refused).
_INNER = 10_000


def _loops(outer: int) -> str:
    return (
        f"{{% for i in range({outer}) %}}{{% for j in range({_INNER}) %}}"
        "{% endfor %}{% endfor %}"
    )


@functools.cache
def _cpu_per_outer_s() -> float:
    """CPU seconds of one outer iteration (`_INNER` inner ones): the least of a few tries,
    CPU time being what a busy machine inflates least."""
    engine = TemplateEngine(render_timeout_s=60)
    template = _loops(20)
    engine.render_text(template, {}, "warm-up")
    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        engine.render_text(template, {}, "calibration")
        best = min(best, time.thread_time() - started)
    return best / 20


def burning(cpu_s: float, text: str = "") -> str:
    """A template that renders to `text` after computing for about `cpu_s` of CPU."""
    return _loops(max(1, round(cpu_s / _cpu_per_outer_s()))) + text
