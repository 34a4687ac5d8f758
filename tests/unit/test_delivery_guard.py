"""The outgoing deliveries' guard (shared/delivery_guard.py): the per-destination limit,
the fair share per owner, and the circuit breaker's states, on an injected clock."""

import pytest

from shared.delivery_guard import (
    Deferred,
    DeliveryGuard,
    Permit,
    destination_of,
    health_of,
)

TARPIT = "http://127.0.0.2:8001/hook?token=x"
OTHER_PATH_SAME_PLACE = "http://127.0.0.2:8001/other"
HEALTHY = "https://example.com/hook"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock | None = None, **overrides: float) -> DeliveryGuard:
    settings: dict[str, float] = {
        "per_destination": 2,
        "slots": 8,
        "failures_to_open": 3,
        "cool_down_s": 30.0,
        "busy_retry_s": 5.0,
    }
    settings.update(overrides)
    return DeliveryGuard(
        per_destination=int(settings["per_destination"]),
        slots=int(settings["slots"]),
        failures_to_open=int(settings["failures_to_open"]),
        cool_down_s=settings["cool_down_s"],
        busy_retry_s=settings["busy_retry_s"],
        clock=clock or Clock(),
    )


def admitted(result: Permit | Deferred) -> Permit:
    assert isinstance(result, Permit), result
    return result


def test_the_destination_is_scheme_host_and_port() -> None:
    assert destination_of("http://Example.COM/a?b=c") == "http://example.com:80"
    assert destination_of("https://example.com/x") == "https://example.com:443"
    assert destination_of("https://example.com:8443/x") == "https://example.com:8443"
    assert destination_of(TARPIT) == destination_of(OTHER_PATH_SAME_PLACE)


@pytest.mark.parametrize(
    ("status", "health"),
    [
        *((status, "failing") for status in (None, 500, 503, 429)),
        *((status, "healthy") for status in (200, 204, 302, 404, 410)),
    ],
)
def test_no_answer_5xx_and_429_are_failures_any_other_answer_is_health(
    status: int | None, health: str
) -> None:
    assert health_of(status) == health


def test_at_most_per_destination_in_flight_the_rest_deferred_without_waiting() -> None:
    g = guard()
    first, second = admitted(g.admit(TARPIT, "a")), admitted(g.admit(OTHER_PATH_SAME_PLACE, "a"))
    assert g.admit(TARPIT, "a") == Deferred("destination_busy", 5.0)
    # Another destination, and another owner's delivery elsewhere, go at once.
    admitted(g.admit(HEALTHY, "a"))
    admitted(g.admit(HEALTHY, "b"))
    first.done("healthy")
    third = admitted(g.admit(TARPIT, "a"))
    second.done("unknown")
    third.done("unknown")
    assert g.deferred == 1


def test_an_owner_alone_uses_every_slot_and_another_owner_gets_in_at_once() -> None:
    g = guard(slots=4, per_destination=100)
    held = [admitted(g.admit(f"http://h{i}.example/", "a")) for i in range(4)]
    # Alone, `a` had the 4 slots. `b` holds none: admitted at once, over the slots.
    assert g.admit("http://h9.example/", "a") == Deferred("owner_busy", 5.0)
    b = admitted(g.admit("http://b.example/", "b"))
    # Two active owners: 2 slots each. `a` holds 4: waits until it is back under 2.
    for permit in held[:2]:
        permit.done("healthy")
    assert g.admit("http://h9.example/", "a") == Deferred("owner_busy", 5.0)
    held[2].done("healthy")
    a = admitted(g.admit("http://h9.example/", "a"))
    assert (g.in_flight("a"), g.in_flight("b")) == (2, 1)
    for permit in (a, b, held[3]):
        permit.done("healthy")
    assert (g.in_flight("a"), g.in_flight("b")) == (0, 0)


def test_many_owners_each_get_at_least_one() -> None:
    g = guard(slots=2, per_destination=100)
    for owner in ("a", "b", "c", "d"):
        admitted(g.admit(f"http://{owner}.example/", owner))
    assert g.admit("http://a.example/", "a") == Deferred("owner_busy", 5.0)
    admitted(g.admit("http://e.example/", "e"))


def test_the_breaker_opens_after_consecutive_failures_and_defers_for_the_cool_down() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(2):
        admitted(g.admit(TARPIT, "a")).done("failing")
    assert g.state(TARPIT) == "closed"
    admitted(g.admit(TARPIT, "a")).done("failing")  # the third in a row
    assert g.state(TARPIT) == "open" and g.opened == 1
    clock.now += 10
    assert g.admit(TARPIT, "a") == Deferred("circuit_open", 20.0)
    # Other destinations are not affected, nor other owners elsewhere.
    admitted(g.admit(HEALTHY, "a")).done("healthy")
    admitted(g.admit(HEALTHY, "b")).done("healthy")


def test_a_success_in_between_resets_the_count() -> None:
    g = guard()
    for health in ("failing", "failing", "healthy", "failing", "failing"):
        admitted(g.admit(TARPIT, "a")).done(health)  # type: ignore[arg-type]
    assert g.state(TARPIT) == "closed"
    # Nothing learnt (not sent) neither counts nor resets.
    admitted(g.admit(TARPIT, "a")).done("unknown")
    assert g.state(TARPIT) == "closed"
    admitted(g.admit(TARPIT, "a")).done("failing")
    assert g.state(TARPIT) == "open"


def open_breaker(g: DeliveryGuard) -> None:
    for _ in range(3):
        admitted(g.admit(TARPIT, "a")).done("failing")
    assert g.state(TARPIT) == "open"


def test_after_the_cool_down_one_probe_whose_success_closes_it() -> None:
    clock = Clock()
    g = guard(clock)
    open_breaker(g)
    clock.now += 30
    assert g.state(TARPIT) == "half_open"
    probe = admitted(g.admit(TARPIT, "a"))
    assert probe.probe
    # While the probe is out, everyone else waits a short while (not a whole cool-down).
    assert g.admit(TARPIT, "b") == Deferred("circuit_open", 5.0)
    probe.done("healthy")
    assert g.state(TARPIT) == "closed"
    both = [admitted(g.admit(TARPIT, owner)) for owner in ("a", "b")]
    assert not any(permit.probe for permit in both)


def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    clock = Clock()
    g = guard(clock)
    open_breaker(g)
    clock.now += 31
    admitted(g.admit(TARPIT, "a")).done("failing")
    assert g.state(TARPIT) == "open"
    assert g.admit(TARPIT, "a") == Deferred("circuit_open", 30.0)
    clock.now += 30
    # A probe that was never sent (unknown) lets the next one probe.
    admitted(g.admit(TARPIT, "a")).done("unknown")
    assert g.state(TARPIT) == "half_open"
    admitted(g.admit(TARPIT, "a")).done("healthy")
    assert g.state(TARPIT) == "closed"
    assert g.opened == 1  # reopened after a probe, not opened anew


def test_an_attempt_from_before_the_opening_that_succeeds_closes_it() -> None:
    g = guard(per_destination=5)
    late = admitted(g.admit(TARPIT, "a"))
    open_breaker(g)
    late.done("healthy")
    assert g.state(TARPIT) == "closed"


def test_done_twice_counts_once_and_idle_destinations_are_forgotten() -> None:
    g = guard()
    permit = admitted(g.admit(TARPIT, "a"))
    permit.done("failing")
    permit.done("failing")
    assert g.in_flight("a") == 0
    admitted(g.admit(TARPIT, "a")).done("healthy")
    assert g._destinations == {} and g._owners == {}
