"""What each run costs its worker, measured from both sides of the process boundary.

Inside a worker, runs share one event loop and take turns: a run computes in slices
between two awaits. `MeteredRun` wraps a run's coroutine and charges every slice to
that run; past its CPU budget the run is stopped at its next turn. A slice is timed
by the clock (`perf_counter`, a vDSO call), not by the thread's CPU clock (a system
call, costly in a VM, on every slice): the worker runs one thread of Python at a time,
so the two differ only when the machine is overloaded, and then in the run's
disfavour. A slice that never
ends (one huge big-integer operation, a C call that holds the GIL) cannot be stopped
from inside, so the worker also writes, into memory it shares with the supervisor,
which run is computing and since when (`SliceMarker`). The supervisor reads it and
kills the worker when a slice outlasts its bound: it knows which run to blame.
"""

import mmap
import os
import struct
import time
from collections.abc import Coroutine, Generator
from typing import Any

# Two 8-byte fields: the key of the run computing now (0: none), at offset 0, and the
# monotonic ns when its slice began, at offset 8. Each is written by one aligned store.
_FIELD = struct.Struct("=q")
_KEY, _SINCE = 0, 8
_SIZE = 16
# A slice gives one turn to the others for each TURN_PER_CPU_S of CPU it used.
TURN_PER_CPU_S = 0.002
MAX_YIELDED_TURNS = 64


class CpuBudgetExceeded(BaseException):
    """Thrown into a run that used up its CPU budget. A BaseException, so that no
    step's error handling can swallow it: it ends the run."""


class SliceMarker:
    """Two numbers in shared memory: which run is computing and since when."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE)

    @classmethod
    def create(cls) -> "SliceMarker":
        fd = os.memfd_create("flowhooks-run-slice", 0)  # inherited by the worker
        os.ftruncate(fd, _SIZE)
        return cls(fd)

    # The worker writes without a lock and can be preempted between two stores, so the
    # order of the stores is what keeps a reader from ever seeing a run paired with a
    # stale time: the time first, then the key; and leaving clears the key only.

    def enter(self, key: int) -> None:
        _FIELD.pack_into(self._map, _SINCE, time.monotonic_ns())
        _FIELD.pack_into(self._map, _KEY, key)

    def leave(self) -> None:
        _FIELD.pack_into(self._map, _KEY, 0)

    def read(self) -> tuple[int, float]:
        """(run key, seconds its slice has lasted); (0, 0.0) when no run computes. The
        key is read before the time: a key seen set was set after its time was."""
        while True:
            key = _FIELD.unpack_from(self._map, _KEY)[0]
            since_ns = _FIELD.unpack_from(self._map, _SINCE)[0]
            if _FIELD.unpack_from(self._map, _KEY)[0] == key:
                break  # no other slice began in between
        if key == 0:
            return 0, 0.0
        return key, (time.monotonic_ns() - since_ns) / 1e9

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


class MeteredRun:
    """Awaitable: runs `coroutine`, charging the CPU time of each of its slices to it
    and marking it in `marker` while it computes."""

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Any],
        key: int,
        marker: SliceMarker,
        cpu_budget_s: float,
    ) -> None:
        self.coroutine = coroutine
        self.key = key
        self.marker = marker
        self.cpu_budget_s = cpu_budget_s
        self.cpu_used_s = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self.coroutine
        to_send: Any = None
        to_throw: BaseException | None = None
        stopped = False
        while True:
            self.marker.enter(self.key)
            started = time.perf_counter()
            try:
                if to_throw is not None:
                    yielded = coroutine.throw(to_throw)
                else:
                    yielded = coroutine.send(to_send)
            except StopIteration as stop:
                return stop.value
            finally:
                spent = time.perf_counter() - started
                self.cpu_used_s += spent
                self.marker.leave()
            to_send, to_throw = None, None
            if self.cpu_used_s > self.cpu_budget_s and not stopped:
                # Do not wait for what it awaits: end it now, at its own await (once:
                # its cleanup may await in turn).
                to_throw, stopped = CpuBudgetExceeded(), True
                continue
            # A long slice is paid for with turns given to the worker's other runs (a
            # bare yield puts this run at the back of the ready queue), so that light
            # runs pass a heavy one instead of waiting behind each of its slices.
            for _ in range(min(MAX_YIELDED_TURNS, int(spent / TURN_PER_CPU_S))):
                try:
                    yield None
                except BaseException as exc:
                    to_throw = exc
                    break
            if to_throw is not None:
                continue
            try:
                to_send = yield yielded
            except BaseException as exc:  # cancellation and the like, for the run
                to_throw = exc
