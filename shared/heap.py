"""The cyclic garbage collector, set for a long-running service process.

Measured with `perf` under the 50-connection sync load (docs/performance.md, issue 29):
CPython's collector took 7-8 % of the ingress's and the runner workers' CPU
(`gc_collect_main` and its visits). Two causes: what start-up made (modules, pydantic
models, compiled templates, pools: hundreds of thousands of objects that live as long
as the process) is traversed again by every full collection, and with the default
threshold (700 allocations) a young collection runs every few requests.

`settle` is called once start-up is over: it freezes what exists then out of every
later collection (`gc.freeze`) and collects young objects less often. Cycles are still
collected; garbage in cycles waits at most `YOUNG_THRESHOLD` allocations (a few MB)."""

import gc

# Allocations between two young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
