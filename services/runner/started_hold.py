"""`run.started` after a hold: an async run is announced to the debugger (`running`)
only if it is still going `hold_s` after it started.

Why: most async runs finish within milliseconds of starting, so their `running` lasted
a few ms in the debugger and their `run.started` was work for nothing at every hop: the
runner's encode and publish, a quorum-queue message at the broker, and the debugger's
decode and merge (issue 29). A run that finishes within the hold sends none; its record
goes from `queued` (the ingress's `request.queued`) to its outcome. A long run (an http
step waiting, a slow template) still shows `running`, between `hold_s` and twice that
after it started.

How, cheaply: no timer per run. Runs are kept in two generations, each a dict (token ->
what to announce); one timer per generation. A run that starts while no timer is armed
opens the old generation and arms the timer for `hold_s`; later runs join the young one.
When the timer fires, what is left of the old generation (runs not withdrawn, so still
going after at least `hold_s`) is published, the young one becomes the old, and the
timer is armed again only if that is not empty. A run that ends withdraws its token
(a dict pop). Per run: one dict insert, one or two pops and a counter; no encode, no
future and no publish for a run that ends within the hold.

A run withdraws its token when `RunService._execute` returns, whatever it returned:
a run that stopped in a `delay` step within the hold sends no `running`, only its
`waiting` (services/runner/delays.py); one that stopped later had its `running`
handed to the publisher before its `waiting` was, and both go through the same
publisher (services/runner/app.py), which sends in that order: `waiting`, same rank,
is written after it."""

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from shared.schemas.runs import progress_json

log = structlog.get_logger(__name__)

# `loop.call_later`'s shape (a fake in unit tests).
CallLater = Callable[[float, Callable[[], None]], Any]


class HeldStarts:
    def __init__(
        self,
        publish: Callable[[bytes], None],
        hold_s: float,
        call_later: CallLater | None = None,
    ) -> None:
        """`publish`: a `RunProgress` as encoded, best effort and not awaited
        (`BatchPublisher.publish_encoded_soon`). `hold_s` > 0."""
        if hold_s <= 0:
            raise ValueError("hold_s must be above 0 (0: announce at once, without this)")
        self._publish = publish
        self.hold_s = hold_s
        self._call_later = call_later
        # Runs held, by token: the request as encoded and when the run started.
        self._old: dict[int, tuple[bytes, datetime]] = {}
        self._young: dict[int, tuple[bytes, datetime]] = {}
        self._next_token = 0
        self._timer: Any = None  # asyncio.TimerHandle (None: not armed)
        self.announced = 0  # runs announced (for tests and metrics)

    def hold(self, request: bytes, started_at: datetime) -> int:
        """A run started (`request` as encoded, `request_json`); its token for
        `withdraw`."""
        token = self._next_token
        self._next_token = token + 1
        if self._timer is None:
            # Nothing held: this run opens the generation the timer will announce.
            self._old[token] = (request, started_at)
            self._arm()
        else:
            self._young[token] = (request, started_at)
        return token

    def withdraw(self, token: int) -> None:
        """The run ended: not announced if it was not yet."""
        if self._young.pop(token, None) is None:
            self._old.pop(token, None)

    @property
    def held(self) -> int:
        return len(self._old) + len(self._young)

    def tick(self) -> None:
        """The timer: the old generation's runs still going are announced."""
        due, self._old, self._young = self._old, self._young, {}
        self._timer = None
        if self._old:
            self._arm()
        try:
            for request, started_at in due.values():
                self._publish(progress_json(request, started_at))
        except Exception:  # best effort: the runs' outcomes are what is guaranteed
            log.exception("run_started_not_announced")
        self.announced += len(due)

    async def close(self) -> None:
        """Shutdown (after the runs in flight ended): nothing more is announced."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._old.clear()
        self._young.clear()

    def _arm(self) -> None:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(self.hold_s, self.tick)
