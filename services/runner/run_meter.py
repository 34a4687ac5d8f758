"""What each run costs its worker, measured from both sides of the process boundary.

Inside a worker, runs share one event loop and take turns: a run computes in slices
between two awaits. `MeteredRun` wraps a run's coroutine and charges every slice to
that run; past its CPU budget the run is stopped at its next turn. A slice is charged
the CPU time of the worker's thread (`time.thread_time_ns`, a system call of 0.6 to
1 µs), not the wall time: when other processes (another workspace's runs on the other
workers, the other services) take the cores, the wall time of a slice grows and its CPU
time does not, so load from others cannot make a run that is within its budget look
over it. (A slice shorter than `SHORT_SLICE_NS` in wall time is charged that instead,
which is no less than its CPU time, to spare the second system call.)

A slice that never ends (one huge big-integer operation, a C call that holds the GIL)
cannot be stopped from inside, so the worker also writes, into memory it shares with
the supervisor, which run is computing and since when, in wall time and in the thread's
CPU time (`SliceMarker`). The supervisor reads it; once a slice has
lasted past its bound in wall time (cheap to see), it reads the thread's CPU time from
/proc and kills the worker only if the slice's CPU time is past the bound too: it
knows which run to blame.
"""

import mmap
import os
import struct
import time
from collections.abc import Coroutine, Generator
from typing import Any

# Three 8-byte fields, each written by one aligned store: the key of the run computing
# now (0: none), at offset 0; the monotonic ns when its slice began, at offset 8; the
# worker's main thread's CPU time (CLOCK_THREAD_CPUTIME_ID, ns) when it began, at 16.
_FIELD = struct.Struct("=q")
_KEY, _SINCE, _CPU_SINCE = 0, 8, 16
_SIZE = 24
# A slice this short in wall time is charged its wall time (its CPU time is no more, and
# the second system call would cost a short slice a tenth of its time); a longer one,
# which others' load may have stretched, is charged its CPU time.
SHORT_SLICE_NS = 100_000
# A slice gives one turn to the others for each TURN_PER_CPU_S of CPU it used.
TURN_PER_CPU_S = 0.002
MAX_YIELDED_TURNS = 64


class CpuBudgetExceeded(BaseException):
    """Thrown into a run that used up its CPU budget. A BaseException, so that no
    step's error handling can swallow it: it ends the run."""


class SliceMarker:
    """Three numbers in shared memory: which run is computing, since when, and the
    worker thread's CPU time when its slice began."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._schedstat: str | None = None  # the supervisor's: where to read CPU time

    @classmethod
    def create(cls) -> "SliceMarker":
        fd = os.memfd_create("flowhooks-run-slice", 0)  # inherited by the worker
        os.ftruncate(fd, _SIZE)
        return cls(fd)

    def watch(self, pid: int) -> None:
        """The supervisor's side: `pid` is the worker writing this marker. Its runs
        compute in its main thread (whose id is the pid), and the first field of that
        thread's schedstat is the thread's CPU time in ns, the clock the worker stores."""
        self._schedstat = f"/proc/{pid}/task/{pid}/schedstat"

    # The worker writes without a lock and can be preempted between two stores, so the
    # order of the stores is what keeps a reader from ever pairing a run with another
    # slice's times: the CPU time first, then the wall time, then the key; and leaving
    # clears the key only.

    def enter(self, key: int, cpu_ns: int, since_ns: int | None = None) -> None:
        """Run `key` computes from now; `cpu_ns` is the thread's CPU time now and
        `since_ns` `time.monotonic_ns()` now (the caller has read them for its own
        meter: one clock read less a slice; None: read here)."""
        _FIELD.pack_into(self._map, _CPU_SINCE, cpu_ns)
        _FIELD.pack_into(self._map, _SINCE, time.monotonic_ns() if since_ns is None else since_ns)
        _FIELD.pack_into(self._map, _KEY, key)

    def leave(self) -> None:
        _FIELD.pack_into(self._map, _KEY, 0)

    def _field(self, offset: int) -> int:
        value: int = _FIELD.unpack_from(self._map, offset)[0]
        return value

    def read(self) -> tuple[int, float]:
        """(run key, wall seconds its slice has lasted); (0, 0.0) when no run computes.
        The key is read before the time: a key seen set was set after its time was."""
        while True:
            key = self._field(_KEY)
            since_ns = self._field(_SINCE)
            if self._field(_KEY) == key:
                break  # no other slice began in between
        if key == 0:
            return 0, 0.0
        return key, (time.monotonic_ns() - since_ns) / 1e9

    def cpu_s(self, key: int) -> float:
        """CPU seconds the slice of run `key` that is computing now has used; 0.0 when
        no slice of `key` computes (any more). A system call and a /proc read: the
        supervisor asks only once `read` shows a slice past its bound in wall time.
        Without /proc (or before `watch`), the wall time stands in, as it did before.
        The schedstat figure lags the thread's clock by at most a scheduler tick (a few
        ms), in the slice's favour."""
        first_key, since_ns = self._field(_KEY), self._field(_SINCE)
        cpu_since_ns = self._field(_CPU_SINCE)
        if first_key != key or key == 0:
            return 0.0
        if self._schedstat is None:
            return (time.monotonic_ns() - since_ns) / 1e9
        try:
            with open(self._schedstat, "rb") as stat:
                cpu_now_ns = int(stat.read().split()[0])
        except FileNotFoundError:
            return 0.0  # the worker is gone: the pool's loss handling blames the run
        except (OSError, ValueError, IndexError):
            return (time.monotonic_ns() - since_ns) / 1e9
        # The same slice still, and the CPU time paired with it (see `enter`'s order):
        # its wall time unchanged and its key still set.
        if self._field(_SINCE) != since_ns or self._field(_KEY) != key:
            return 0.0
        return max(0, cpu_now_ns - cpu_since_ns) / 1e9

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
            started_ns = time.thread_time_ns()
            # Read after the CPU clock, as `enter` would: the marker's wall time is the
            # meter's too.
            wall_started_ns = time.monotonic_ns()
            self.marker.enter(self.key, started_ns, wall_started_ns)
            try:
                if to_throw is not None:
                    yielded = coroutine.throw(to_throw)
                else:
                    yielded = coroutine.send(to_send)
            except StopIteration as stop:
                return stop.value
            finally:
                spent_ns = time.monotonic_ns() - wall_started_ns
                if spent_ns > SHORT_SLICE_NS:
                    spent_ns = time.thread_time_ns() - started_ns
                spent = spent_ns / 1e9
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
