"""A CPU-time budget for template rendering.

The Jinja2 sandbox stops attribute tricks but not CPU: two nested loops over
`range(100000)` run for minutes, and rendering runs in the event loop's thread, where
`asyncio.wait_for` cannot interrupt it. `RenderWatchdog` is one daemon thread per
runner process: while a render is armed with `limit(seconds)`, the watchdog raises
`RenderTimeout` inside the rendering thread once the render has used its budget of
that thread's CPU time (`PyThreadState_SetAsyncExc`, CPython's way to interrupt
pure-Python code in another thread; Jinja templates compile to Python bytecode, so the
exception lands at the next instruction). The budget is CPU time, read from the
rendering thread's own CPU clock (`pthread_getcpuclockid`), not wall time: a render
whose thread waits for a core while other processes compute is not charged the wait,
so load from others cannot fail a render that is within its budget. The longest any
render can compute in the event loop is therefore the budget plus the watchdog's tick.
All state changes happen under one lock, so the exception can only ever be raised while
its render is armed, and a pending one is cleared on disarm.

The watchdog does not tick: a render cannot use more CPU time than the wall time that
has passed, so it sleeps until the earliest moment the armed render could be past its
budget (what is left of it, at least `tick_s`), and, with nothing armed, until a render
is armed. Renders last micro- to milliseconds against a budget of half a second, so it
wakes a few times a second under load and never when idle (it ticked every 5 ms in
every worker, idle or not: a few % of a worker's CPU under load). Between renders under
load it does not wait to be woken: it wakes again a budget later if renders were armed
since its last check (each such wake is a check, as for an armed render), else it waits
for the next render. Waking it at every arm cost a thread switch and the GIL handed
back and forth a render (a tenth of a worker's CPU under load, py-spy).

Several renders can share one budget (`RenderBudget`: the webhook response's body and
headers, an `http` step's fields): each is armed with what is left of it and charged
what it used.
"""

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class RenderTimeout(Exception):
    """Raised inside a render that used up its budget."""


@dataclass
class RenderBudget:
    """CPU time that several renders share, and what they have used of it."""

    seconds: float
    what: str  # for the error: "the response's body and headers"
    used_s: float = 0.0

    @property
    def left_s(self) -> float:
        return self.seconds - self.used_s


class RenderWatchdog:
    def __init__(self, tick_s: float = 0.005) -> None:
        self.tick_s = tick_s  # the shortest sleep between two checks of one render
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed = False
        self._idle = False  # the watchdog waits for a render to be armed
        self._wakes_at = 0.0  # monotonic: when it checks next (if not idle)
        self._budget_ns = 0  # CPU ns the armed render may use
        self._clock = 0  # the rendering thread's CPU clock
        self._started_ns = 0  # that clock when the render was armed
        self._target = 0
        self._fired = False
        # A render was armed since the last check, with this budget: renders come and
        # go, so the watchdog checks again that much later instead of being woken.
        self._seen = False
        self._seen_s = 0.0
        self._thread: threading.Thread | None = None
        self.fired_count = 0

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="render-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def limit(self, seconds: float, budget: RenderBudget | None = None) -> Iterator[None]:
        """Arms the watchdog for a render in the calling thread: at most `seconds` of
        its CPU time, or what is left of `budget` (which is then charged what the render
        used; a budget already spent fails the render before it starts)."""
        if budget is not None:
            seconds = budget.left_s
            if seconds <= 0:
                raise RenderTimeout
        self._ensure_started()
        target = threading.get_ident()
        clock = time.pthread_getcpuclockid(target)
        with self._lock:
            self._clock = clock
            self._started_ns = time.clock_gettime_ns(clock)
            self._budget_ns = int(seconds * 1e9)
            self._target = target
            self._fired = False
            self._armed = True
            self._seen = True
            self._seen_s = seconds
            started_ns = self._started_ns
            if self._idle or time.monotonic() + seconds < self._wakes_at:
                self._wake.notify()  # it would check this render too late
        try:
            yield
        finally:
            with self._lock:
                if self._fired:
                    # Fired but perhaps not raised yet: withdraw it.
                    _set_async_exc(self._target, ctypes.py_object())
                    self._fired = False
                self._armed = False
            if budget is not None:
                budget.used_s += (time.clock_gettime_ns(clock) - started_ns) / 1e9

    def _watch(self) -> None:
        with self._lock:
            while True:
                self._wake.wait(self._check())

    def _check(self) -> float | None:
        """Under the lock: fires at the armed render if it is past its budget; how long
        to sleep before the next check (None: until a render is armed)."""
        seen, self._seen = self._seen, False
        if not self._armed and seen and not self._fired:
            # Renders were armed since the last check: the next comes soon, and a wake
            # a budget from now is in time for it (a render armed with less notifies).
            sleep_s = max(self.tick_s, self._seen_s)
            self._idle = False
            self._wakes_at = time.monotonic() + sleep_s
            return sleep_s
        self._idle = not self._armed or self._fired
        if self._idle:
            return None
        try:
            used_ns = time.clock_gettime_ns(self._clock) - self._started_ns
        except OSError:  # the thread is gone (it cannot be while armed)
            self._idle = True
            return None
        if used_ns > self._budget_ns:
            _set_async_exc(self._target, ctypes.py_object(RenderTimeout))
            self._fired = True
            self.fired_count += 1
            self._idle = True
            return None
        # Its CPU time cannot reach the budget before this much wall time has passed.
        sleep_s = max(self.tick_s, (self._budget_ns - used_ns) / 1e9)
        self._wakes_at = time.monotonic() + sleep_s
        return sleep_s
