"""FairShare: who may hold how many of a runner's worker processes. A workspace holds
at most its share; the last free ones (the reserve) go only to a workspace holding
none; a workspace with a kill not yet replaced takes nothing; waiting workspaces are
served fewest-held first, in turn among equals; where nothing is free, a workspace
holding more gives a worker back."""

import pytest

from services.runner.fair_share import FairShare


def taken(share: FairShare, workspace: str, count: int) -> None:
    for _ in range(count):
        assert share.may_take(workspace), (workspace, share.held)
        share.take(workspace)


def test_a_workspace_holds_at_most_its_share() -> None:
    share = FairShare(units=8, per_workspace=4, reserve=1)
    taken(share, "evil", 4)
    assert not share.may_take("evil") and share.must_wait("evil")
    assert share.free == 4 and share.may_take("acme")


def test_the_reserve_is_only_for_a_workspace_holding_none() -> None:
    share = FairShare(units=6, per_workspace=6, reserve=2)
    taken(share, "evil", 4)
    assert share.free == 2 and not share.may_take("evil")  # only the reserve is left
    taken(share, "acme", 1)
    # acme holds one now: the last free unit is someone else's first.
    assert not share.may_take("acme")
    taken(share, "third", 1)
    assert share.free == 0 and not share.may_take("fourth")


def test_two_or_ten_hostile_workspaces_leave_the_reserve() -> None:
    for hostile in (2, 10):
        share = FairShare(units=16, per_workspace=8, reserve=2)
        progress = True
        while progress:  # each grabs all it may, in turn
            progress = False
            for n in range(hostile):
                if share.may_take(f"evil{n}"):
                    share.take(f"evil{n}")
                    progress = True
        assert share.free == 2, (hostile, share.held)
        assert share.may_take("innocent")


def test_a_kill_holds_its_unit_until_replaced_and_blocks_taking() -> None:
    share = FairShare(units=8, per_workspace=4, reserve=1)
    taken(share, "evil", 2)
    share.give_back("evil")  # its worker died...
    share.charge_kill("evil")  # ...and is its own cost
    assert share.holds("evil") == 2 and share.free == 6
    assert not share.may_take("evil") and share.must_wait("evil")
    share.replaced("evil")
    assert share.holds("evil") == 1 and share.kills == {} and share.may_take("evil")


def test_fewest_held_first_then_in_turn() -> None:
    share = FairShare(units=10, per_workspace=10, reserve=0)
    taken(share, "a", 2)
    for waiter in ("a", "b", "c"):
        share.wait(waiter)
    order = []
    for _ in range(6):
        workspace = share.next_turn()
        assert workspace is not None
        share.take(workspace)
        order.append(workspace)
    # b and c hold none: they go first, taking turns, until they hold as many as a.
    assert order == ["b", "c", "b", "c", "a", "b"]


def test_a_workspace_at_its_share_is_passed_over() -> None:
    share = FairShare(units=4, per_workspace=1, reserve=0)
    taken(share, "a", 1)
    share.wait("a")
    share.wait("b")
    assert share.next_turn() == "b" and share.eligible_waiting() == 1


def test_nothing_free_drains_the_one_holding_most() -> None:
    share = FairShare(units=4, per_workspace=4, reserve=1)
    taken(share, "evil", 3)
    taken(share, "acme", 1)
    share.wait("new")
    assert share.to_drain() == ["evil", "acme"]  # most held first
    assert share.to_drain(draining=1) == []  # one drain per waiting workspace
    share.stop_waiting("new")
    assert share.to_drain() == []


def test_holders_of_one_take_turns_with_a_workspace_holding_none() -> None:
    share = FairShare(units=2, per_workspace=2, reserve=1)
    taken(share, "a", 1)
    taken(share, "b", 1)
    share.wait("c")
    assert share.to_drain() == ["a", "b"]


def test_no_drain_that_would_only_swap_two_workspaces() -> None:
    share = FairShare(units=5, per_workspace=5, reserve=1)
    taken(share, "a", 3)
    taken(share, "b", 1)
    share.wait("b")  # b holds 1, a holds 3: moving one evens them out
    assert not share.may_take("b") and share.to_drain() == ["a"]
    share.give_back("a")
    taken(share, "c", 1)
    # a holds 2, b 1: moving one would only swap them.
    assert share.to_drain() == []


def test_a_workspace_with_a_kill_is_not_served_by_draining() -> None:
    share = FairShare(units=2, per_workspace=2, reserve=0)
    taken(share, "a", 2)
    share.give_back("a")
    share.charge_kill("a")
    share.wait("a")
    assert share.to_drain() == []


@pytest.mark.parametrize(("units", "reserve", "expected"), [(1, 2, 0), (3, 2, 2), (3, 9, 2)])
def test_at_least_one_unit_is_never_reserved(units: int, reserve: int, expected: int) -> None:
    share = FairShare(units=units, per_workspace=0, reserve=reserve)
    assert (share.reserve, share.per_workspace) == (expected, 1)
    assert share.may_take("a")
