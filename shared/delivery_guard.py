"""Who may start an outgoing delivery now (completion callbacks in the runner, alert
notices in the debugger), so that a slow or dead destination delays only the deliveries
of its owner (contract, "Isolation": "a slow or dead destination delays only its
owner's deliveries").

Three rules, checked together and without waiting (`DeliveryGuard.admit`):
- **Per destination** (scheme, host and port of the URL): at most `per_destination`
  attempts in flight at once in this process. A tarpit (accepts, answers slowly) holds
  that many, not the sender's whole window.
- **Circuit breaker per destination**: `failures_to_open` failed attempts in a row (no
  answer: a timeout, a refused or reset connection; or a 5xx / 429 answer) open it; while
  open, nothing is sent there until `cool_down_s` has passed; then one probe is let
  through (half-open): its success closes the circuit, its failure opens it for another
  cool-down. Any success closes it. Deliveries to an open circuit are deferred by their
  sender, not attempted: they burn none of their attempts.
- **Fair share per owner** (the workspace): an owner may hold at most
  `max(1, slots // active owners)` attempts in flight, where the active owners are those
  with attempts in flight (and the one asking). Alone, an owner may use every slot;
  when another owner's delivery arrives, it is admitted at once (it holds none), and the
  busy owner's next ones wait until it is back under its share.

A refusal says how long to wait (`Deferred.retry_in_s`); the senders park the delivery
for that long (the callbacks' wait ladder, the alert outbox's `next_attempt_at`). State
is per process and in memory: replicas do not share breakers (each learns on its own,
at the cost of `failures_to_open` attempts), and a restart forgets them, which only
costs the same again.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from yarl import URL

# How a finished attempt went, for the breaker. `unknown`: nothing was learnt about the
# destination (the attempt was not sent: a secret that cannot be opened, a URL refused by
# the address policy before any connection).
Health = Literal["healthy", "failing", "unknown"]
# Why a delivery is not admitted now.
Why = Literal["circuit_open", "destination_busy", "owner_busy"]


def destination_of(url: str) -> str:
    """The key the limits and the breaker are kept under: scheme://host:port (the same
    host on another port, or over another scheme, is another destination)."""
    try:
        target = URL(url)
        host = (target.host or "").lower()
        return f"{target.scheme.lower()}://{host}:{target.port or 0}"
    except (ValueError, TypeError):
        return url  # not a URL: the sender refuses it; keep it apart from every other


def health_of(status: int | None) -> Health:
    """None (no answer: timeout, connection refused or reset) and 5xx / 429 answers are
    failures; any other answer shows the destination alive."""
    if status is None or status == 429 or status >= 500:
        return "failing"
    return "healthy"


@dataclass(frozen=True)
class Deferred:
    """Not now: `retry_in_s` from now at the earliest; `why` for the logs and metrics."""

    why: Why
    retry_in_s: float

    def spread_s(self, rng: Callable[[], float], at_least_s: float = 0.0) -> float:
        """The wait a sender gives it, spread so that deliveries deferred together do
        not come back together: an open circuit's rest of cool-down plus up to half of it
        more, a busy one at least `at_least_s`; plus up to a second (`rng` in [0, 1))."""
        if self.why == "circuit_open":
            return self.retry_in_s * (1 + 0.5 * rng()) + rng()
        return max(self.retry_in_s, at_least_s) + rng()


@dataclass
class _Destination:
    in_flight: int = 0
    failures: int = 0  # in a row
    opened_at: float | None = None  # open (or half-open, past the cool-down) since
    probing: bool = False  # half-open: the one probe is in flight


class Permit:
    """An admitted attempt. `done` once it finished (or was not sent); a second call does
    nothing, so a `finally` may call it after the success path did."""

    def __init__(self, guard: "DeliveryGuard", destination: str, owner: str, probe: bool) -> None:
        self._guard = guard
        self.destination = destination
        self.owner = owner
        self.probe = probe
        self._open = True

    def done(self, health: Health) -> None:
        if self._open:
            self._open = False
            self._guard._finished(self, health)


class DeliveryGuard:
    def __init__(
        self,
        *,
        per_destination: int,
        slots: int,
        failures_to_open: int,
        cool_down_s: float,
        busy_retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_destination < 1 or slots < 1 or failures_to_open < 1:
            raise ValueError("per_destination, slots and failures_to_open must be at least 1")
        self.per_destination = per_destination
        self.slots = slots
        self.failures_to_open = failures_to_open
        self.cool_down_s = cool_down_s
        # How long a delivery refused for a busy destination or owner waits before it
        # asks again (the sender may add jitter).
        self.busy_retry_s = busy_retry_s
        self.clock = clock
        self._destinations: dict[str, _Destination] = {}
        self._owners: dict[str, int] = {}  # attempts in flight per owner (> 0 only)
        # Exported as metrics: deliveries deferred, and circuits opened.
        self.deferred = 0
        self.opened = 0

    def admit(self, url: str, owner: str) -> Permit | Deferred:
        key = destination_of(url)
        place = self._destinations.get(key) or _Destination()
        now = self.clock()
        probe = False
        if place.opened_at is not None:
            left = place.opened_at + self.cool_down_s - now
            if left > 0:
                return self._defer("circuit_open", left)
            if place.probing:
                return self._defer("circuit_open", self.busy_retry_s)
            probe = True  # half-open: this one finds out
        elif place.in_flight >= self.per_destination:
            return self._defer("destination_busy", self.busy_retry_s)
        held = self._owners.get(owner, 0)
        active = len(self._owners) + (0 if held else 1)
        if held >= max(1, self.slots // active):
            return self._defer("owner_busy", self.busy_retry_s)
        place.in_flight += 1
        place.probing = place.probing or probe
        self._destinations[key] = place
        self._owners[owner] = held + 1
        return Permit(self, key, owner, probe)

    def state(self, url: str) -> Literal["closed", "open", "half_open"]:
        """The breaker of `url`'s destination (for tests and logs)."""
        place = self._destinations.get(destination_of(url))
        if place is None or place.opened_at is None:
            return "closed"
        return "open" if self.clock() < place.opened_at + self.cool_down_s else "half_open"

    def in_flight(self, owner: str) -> int:
        return self._owners.get(owner, 0)

    def _defer(self, why: Why, s: float) -> Deferred:
        self.deferred += 1
        return Deferred(why, max(s, 0.0))

    def _finished(self, permit: Permit, health: Health) -> None:
        place = self._destinations[permit.destination]
        place.in_flight -= 1
        if permit.probe:
            place.probing = False
        if health == "healthy":
            place.failures, place.opened_at = 0, None
        elif health == "failing":
            place.failures += 1
            reopen = permit.probe and place.opened_at is not None
            if reopen or (place.opened_at is None and place.failures >= self.failures_to_open):
                if place.opened_at is None:
                    self.opened += 1
                place.opened_at = self.clock()
        # A destination with nothing to remember is forgotten: the map stays as small as
        # the destinations in flight or failing.
        if place.in_flight == 0 and place.failures == 0 and place.opened_at is None:
            del self._destinations[permit.destination]
        held = self._owners[permit.owner] - 1
        if held:
            self._owners[permit.owner] = held
        else:
            del self._owners[permit.owner]
