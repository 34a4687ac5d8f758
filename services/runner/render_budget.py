"""A time budget for template rendering.

The Jinja2 sandbox stops attribute tricks but not CPU: two nested loops over
`range(100000)` run for minutes, and rendering runs in the event loop's thread, where
`asyncio.wait_for` cannot interrupt it. `RenderWatchdog` is one daemon thread per
runner process: while a render is armed with `limit(seconds)`, the watchdog raises
`RenderTimeout` inside the rendering thread once the budget is spent
(`PyThreadState_SetAsyncExc`, CPython's way to interrupt pure-Python code in another
thread; Jinja templates compile to Python bytecode, so the exception lands at the next
instruction). The longest any render can hold the event loop is therefore the budget
plus the watchdog's tick. All state changes happen under one lock, so the exception can
only ever be raised while its render is armed, and a pending one is cleared on disarm.
"""

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class RenderTimeout(Exception):
    """Raised inside a render that outlived its budget."""


class RenderWatchdog:
    def __init__(self, tick_s: float = 0.005) -> None:
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._target = 0
        self._fired = False
        self._thread: threading.Thread | None = None
        self.fired_count = 0

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="render-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        self._ensure_started()
        with self._lock:
            self._deadline = time.monotonic() + seconds
            self._target = threading.get_ident()
            self._fired = False
        try:
            yield
        finally:
            with self._lock:
                if self._fired:
                    # Fired but perhaps not raised yet: withdraw it.
                    _set_async_exc(self._target, ctypes.py_object())
                    self._fired = False
                self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick_s)
            with self._lock:
                if (
                    self._deadline is not None
                    and not self._fired
                    and time.monotonic() > self._deadline
                ):
                    _set_async_exc(self._target, ctypes.py_object(RenderTimeout))
                    self._fired = True
                    self.fired_count += 1
