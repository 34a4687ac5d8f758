"""Fair share of a runner's worker processes among workspaces.

A worker process hosts the runs of one workspace at a time (`pool.py`), so what
workspaces share is the processes (`units`, each with its slots); a workspace's runs
take the slots of the workers it holds. This is the bookkeeping of who may hold how
many; the pool asks it and acts (pure, no asyncio, so its rules are unit-tested alone).

- A workspace holds at most `per_workspace` units (its share).
- The last `reserve` free units go only to a workspace that holds none: however many
  workspaces hold workers (with hanging runs, say), one that holds none gets one at
  once. Two or ten hostile workspaces cannot starve an eleventh: they stop growing
  while only the reserve is left, and the reserve is exactly what a newcomer takes.
- A worker killed because of its workspace's runs stays that workspace's unit until a
  new process has replaced it (`charge_kill` / `replaced`), and meanwhile the workspace
  takes no new unit: its kills cost its own runs (they wait), not everyone's
  processes, and however fast it kills, the pool spawns no faster than it replaces.
- Workspaces waiting for a unit are served fewest-held first, ties in turn (round
  robin): each active workspace gets its share of what is free.
- When nothing is free, `to_drain` names a workspace that holds at least two more units
  than one that waits (or any unit, when the waiting one holds none): the pool stops
  giving one of its workers new runs, so that it returns to the pool once its runs are
  done. Runs are never stopped for fairness; holdings even out as runs end.
"""

from collections import OrderedDict


class FairShare:
    def __init__(self, units: int, per_workspace: int, reserve: int) -> None:
        if units < 1:
            raise ValueError("at least one unit")
        self.units = units
        self.per_workspace = max(1, min(per_workspace, units))
        # At least one unit is never reserved: with one unit in all it is anyone's.
        self.reserve = max(0, min(reserve, units - 1))
        # Units each workspace holds (its workers, and its kills not yet replaced).
        self.held: dict[str, int] = {}
        # Kills not yet replaced, by workspace (counted in `held` too).
        self.kills: dict[str, int] = {}
        self._held_total = 0
        # Workspaces waiting for a unit, in turn order (a served one goes to the back).
        self._waiting: OrderedDict[str, None] = OrderedDict()

    @property
    def free(self) -> int:
        return self.units - self._held_total

    def holds(self, workspace: str) -> int:
        return self.held.get(workspace, 0)

    def may_take(self, workspace: str) -> bool:
        """Whether the workspace may hold one more unit now (one is free for it)."""
        if self.kills.get(workspace):
            return False
        held = self.held.get(workspace, 0)
        if held >= self.per_workspace:
            return False
        return self.free > (self.reserve if held else 0)

    def must_wait(self, workspace: str) -> bool:
        """Whether a workspace that needs one more unit would not get it now."""
        return workspace in self._waiting or not self.may_take(workspace)

    # --- waiting ------------------------------------------------------------------

    def wait(self, workspace: str) -> None:
        if workspace not in self._waiting:
            self._waiting[workspace] = None

    def stop_waiting(self, workspace: str) -> None:
        self._waiting.pop(workspace, None)

    @property
    def waiting(self) -> list[str]:
        return list(self._waiting)

    def next_turn(self) -> str | None:
        """The waiting workspace that gets the next free unit: of those that may take
        one, the one holding fewest, the earliest in turn among equals."""
        best: str | None = None
        for workspace in self._waiting:
            if self.may_take(workspace) and (
                best is None or self.holds(workspace) < self.holds(best)
            ):
                best = workspace
        return best

    def eligible_waiting(self) -> int:
        """Waiting workspaces that may take a unit now."""
        return sum(1 for workspace in self._waiting if self.may_take(workspace))

    # --- holding ------------------------------------------------------------------

    def take(self, workspace: str) -> None:
        self.held[workspace] = self.held.get(workspace, 0) + 1
        self._held_total += 1
        if workspace in self._waiting:
            self._waiting.move_to_end(workspace)  # its turn is used: to the back

    def give_back(self, workspace: str) -> None:
        left = self.held[workspace] - 1
        if left:
            self.held[workspace] = left
        else:
            del self.held[workspace]
        self._held_total -= 1

    def charge_kill(self, workspace: str) -> None:
        """One of the workspace's workers died: it holds the unit until `replaced`."""
        self.take(workspace)
        self.kills[workspace] = self.kills.get(workspace, 0) + 1

    def replaced(self, workspace: str) -> None:
        """A new process took the place of one of the workspace's killed workers."""
        left = self.kills[workspace] - 1
        if left:
            self.kills[workspace] = left
        else:
            del self.kills[workspace]
        self.give_back(workspace)

    def to_drain(self, draining: int = 0) -> list[str]:
        """The workspaces one of whose units may be freed for a workspace that waits and
        cannot take one (nothing free for it, though it is within its share), most held
        first; empty if none. `draining`: units already being freed; each serves one
        such waiter."""
        starved = [
            workspace
            for workspace in self._waiting
            if not self.kills.get(workspace)
            and self.holds(workspace) < self.per_workspace
            and not self.may_take(workspace)
        ]
        starved.sort(key=self.holds)  # stable: turn order among equals
        for waiter in starved[draining:]:
            need = self.holds(waiter)
            # Two more than the waiter: moving one evens them out (one more would only
            # swap them); a waiter that holds nothing takes turns with those holding one.
            margin = 1 if need == 0 else 2
            victims = [
                workspace
                for workspace, held in self.held.items()
                if workspace != waiter and held - self.kills.get(workspace, 0) >= need + margin
            ]
            return sorted(victims, key=lambda w: self.kills.get(w, 0) - self.held[w])
        return []
