"""`python -m bench.chaos [--quick | --suite]` (`make chaos`): does anything accepted get
lost or stored twice while the broker and the database fail?

Self-contained and loopback only: its own 3-node RabbitMQ cluster on private ports
(harness/rabbit_cluster.py), its own PostgreSQL primary with a synchronous replica
(harness/pg_replica.py), the four services as subprocesses (harness/system.py) with
`FLOWHOOKS_AMQP_URLS` (every node) and `FLOWHOOKS_BROKER_REPLICAS=3` (quorum queues).
Open-loop load at a fixed rate on an async flow and on a sync flow, each request's JSON
body carrying a unique `chaos_id`, while it

1. SIGKILLs the broker node the ingress is connected to, then boots it again;
2. SIGKILLs the node the runner is connected to, then boots it again;
3. SIGKILLs the whole cluster, then boots it again;
4. SIGKILLs the PostgreSQL primary, then promotes the replica.

Then it waits (bounded) until the debugger has stored every accepted request (answered
200/202 by the ingress), reads `debugger.requests` directly, and prints one detail line
per phase (recovery, per mode: from the fault until the answer to the first request that
was sent after the kill landed and was accepted; `recovery_s` is the worst) and, last on
stdout, the ledger:

    accepted=N stored=N lost=0 duplicated=0 refused_503=N recovery_s=X

Exit code 0 only when nothing accepted is missing (or recorded only as queued/running)
or stored under two records, every phase recovered, and the run kept its deadline.
Progress goes to stderr. If the PostgreSQL pair cannot be set up, the broker phases run
alone on a fresh database of the shared server, and the output says so.
"""

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import uvloop

from harness.infra import fresh_database
from harness.pg_replica import PostgresPair, postgres_pair
from harness.rabbit_cluster import RabbitCluster, rabbit_cluster
from harness.system import System
from shared.schemas.vocabulary import Outcome, RunMode

T = TypeVar("T")

MODES = (RunMode.ASYNC, RunMode.SYNC)
ACCEPTED = frozenset({200, 202})
CLIENT_ERROR = -1  # connection refused or reset, a broken answer
CLIENT_TIMEOUT = -2  # no answer within the client's timeout
FINAL_OUTCOMES: frozenset[str] = frozenset(Outcome)
WORKSPACE = "chaos"

FLOW = {
    "name": "chaos",
    "status": "live",
    "webhook": {
        "ref_id": "web1",
        "async": False,
        "timeout_s": 10,
        "response": {"status_code": 200, "body": '{"chaos_id": "{{ res1.value }}"}'},
    },
    "steps": [{"ref_id": "res1", "type": "template", "template": "{{ web1.chaos_id }}"}],
}


@dataclass(frozen=True)
class Profile:
    rate: float  # requests a second, per mode
    warmup_s: float  # load before the first fault
    down_s: float  # how long a killed node (or the cluster) stays down
    promote_after_s: float  # from the primary's death to the replica's promotion
    steady_s: float  # load after a phase recovered, before the next fault
    settle_s: float  # the longest wait for both modes to be accepted again after a phase
    verify_s: float  # the longest wait for the debugger to store every accepted request
    deadline_s: float  # from the start to the end of the load (phases cut short beyond)
    flow_timeout_s: float  # the sync flow's timeout (its client waits 5 s more)


QUICK = Profile(
    rate=50,
    warmup_s=3,
    down_s=4,
    promote_after_s=2,
    steady_s=3,
    settle_s=30,
    verify_s=45,
    # From the start, setup included: 89 s alone; a loaded machine (CI beside other
    # work) took 78 s for the setup alone and cut the last phase short at 170.
    deadline_s=200,
    flow_timeout_s=10,
)
# `make test`'s run (tests/e2e/test_chaos.py): the quick run's four faults, each under
# load, at half its rate (still a few hundred requests through every fault, for half the
# CPU, which the test takes from the files running beside it) and with the shortest waits
# around them: a node is down 2 s (its connections are gone at the SIGKILL; what the
# phase tests is the failover and the rejoin, not how long the node stays away), 1 s of
# load before the first fault and after each recovery. The ledger is the same.
SUITE = Profile(
    rate=25,
    warmup_s=1,
    down_s=2,
    promote_after_s=1,
    steady_s=1,
    settle_s=30,
    verify_s=45,
    deadline_s=200,
    flow_timeout_s=10,
)
FULL = Profile(
    rate=50,
    warmup_s=10,
    down_s=20,
    promote_after_s=5,
    steady_s=20,
    settle_s=60,
    verify_s=90,
    deadline_s=600,
    flow_timeout_s=10,
)
# Beyond the load's deadline: verification, then the teardown; past this, a watchdog
# prints what is known, kills what it can and exits.
VERIFY_AFTER_DEADLINE_S = 45.0
HARD_GRACE_S = 95.0

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[chaos {time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- what was sent, what was answered ------------------------------------------------


@dataclass
class Sent:
    mode: str
    chaos_id: str
    sent_at: float
    answered_at: float | None = None
    status: int | None = None  # None: no answer (yet)
    request_id: str | None = None


@dataclass
class Phase:
    name: str
    what: str
    fault_at: float
    recovered_at: dict[str, float] = field(default_factory=dict)  # mode: first accepted
    # When the kill had landed (the process dead): recovery counts only requests sent
    # after it (one accepted while the kill was on its way proves nothing).
    killed_at: float = math.inf
    restarted_after_s: float | None = None  # from the fault until the node ran again
    ended_at: float | None = None
    note: str = ""

    def recovery(self, mode: str) -> float | None:
        at = self.recovered_at.get(mode)
        return None if at is None else at - self.fault_at


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # chaos_id: [(record id, outcome)], from the last read of debugger.requests.
    stored: dict[str, list[tuple[str, str]]] | None = None
    last_accepted_sent_at: dict[str, float] = field(default_factory=dict)
    failed: bool = False  # deadline missed, a phase never recovered, setup failed
    printed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, sent: Sent) -> None:
        if sent.status not in ACCEPTED or sent.answered_at is None:
            return
        last = self.last_accepted_sent_at.get(sent.mode, -1.0)
        self.last_accepted_sent_at[sent.mode] = max(last, sent.sent_at)
        for phase in self.phases:
            if sent.sent_at >= phase.killed_at:
                first = phase.recovered_at.get(sent.mode)
                if first is None or sent.answered_at < first:
                    phase.recovered_at[sent.mode] = sent.answered_at

    def accepted_since(self, since: float) -> bool:
        return all(self.last_accepted_sent_at.get(mode, -1.0) >= since for mode in MODES)

    # -- the report --------------------------------------------------------------------

    def tally(self) -> dict[str, Any]:
        sent = list(self.sent)
        accepted = {s.chaos_id: s for s in sent if s.status in ACCEPTED}
        stored = self.stored or {}

        def final(chaos_id: str) -> bool:
            return any(outcome in FINAL_OUTCOMES for _, outcome in stored.get(chaos_id, []))

        stored_ok = [c for c in accepted if final(c)]
        pending = [c for c in accepted if c in stored and not final(c)]
        missing = [c for c in accepted if c not in stored]
        duplicated = [c for c, records in stored.items() if len(records) > 1]
        other = Counter(
            status_name(s.status) for s in sent if s.status not in ACCEPTED and s.status != 503
        )
        refused_stored = Counter(
            status_name(s.status) for s in sent if s.status not in ACCEPTED and s.chaos_id in stored
        )
        id_mismatch = [
            c
            for c, s in accepted.items()
            if s.request_id and c in stored and s.request_id not in {i for i, _ in stored[c]}
        ]
        recoveries = [
            self._unrecovered(phase) if (r := phase.recovery(mode)) is None else r
            for phase in self.phases
            for mode in MODES
        ]
        return {
            "sent": sent,
            "accepted": accepted,
            "stored_ok": stored_ok,
            "pending": pending,
            "missing": missing,
            "duplicated": duplicated,
            "refused_503": sum(1 for s in sent if s.status == 503),
            "other": other,
            "refused_stored": refused_stored,
            "id_mismatch": id_mismatch,
            "recovery_s": max(recoveries, default=0.0),
        }

    def _unrecovered(self, phase: Phase) -> float:
        """A mode never accepted again after the phase: its 'recovery' is the whole rest
        of the run (and the run fails)."""
        end = max((s.answered_at or s.sent_at for s in self.sent), default=phase.fault_at)
        return max(0.0, end - phase.fault_at)

    def report(self) -> int:
        """Detail lines, then the ledger line last on stdout; the exit code."""
        with self.lock:
            if self.printed:
                return 3
            self.printed = True
        t = self.tally()
        lines = list(self.notes)
        for phase in self.phases:
            recoveries = " ".join(
                f"recovery_{mode}_s={fmt(phase.recovery(mode))}" for mode in MODES
            )
            window = [
                s
                for s in t["sent"]
                if s.sent_at >= phase.fault_at
                and (phase.ended_at is None or s.sent_at < phase.ended_at)
            ]
            statuses = Counter(status_name(s.status) for s in window)
            # The last request (sent in this phase) that was not accepted, per mode.
            refused_until = " ".join(
                f"not_accepted_until_{mode}_s="
                + fmt(
                    max(
                        (
                            s.sent_at - phase.fault_at
                            for s in window
                            if s.mode == mode and s.status not in ACCEPTED
                        ),
                        default=None,
                    ),
                    none="-",
                )
                for mode in MODES
            )
            restarted = fmt(phase.restarted_after_s)
            lines.append(
                f"phase={phase.name} fault=({phase.what}) "
                f"kill_took_s={fmt(phase.killed_at - phase.fault_at, none='-')} "
                f"restarted_after_s={restarted} "
                f"{recoveries} {refused_until} sent={len(window)} "
                f"answers={dict(sorted(statuses.items()))}"
                + (f" note={phase.note}" if phase.note else "")
            )
            for mode in MODES:
                if phase.recovery(mode) is None:
                    self.failed = True
                    lines.append(f"FAIL: phase {phase.name}: no {mode} request accepted after it")
        for mode in MODES:
            of_mode = [s for s in t["sent"] if s.mode == mode]
            lines.append(
                f"mode={mode} sent={len(of_mode)} "
                f"accepted={sum(1 for s in of_mode if s.status in ACCEPTED)} "
                f"answers={dict(sorted(Counter(status_name(s.status) for s in of_mode).items()))}"
            )
        lost = len(t["missing"]) + len(t["pending"])
        if self.stored is None:
            lines.append("stored records were never read (the database did not answer)")
        lines.append(
            f"other={sum(t['other'].values())} {dict(sorted(t['other'].items()))} "
            f"refused_but_stored={sum(t['refused_stored'].values())} "
            f"{dict(sorted(t['refused_stored'].items()))} "
            f"lost_never_recorded={len(t['missing'])} "
            f"lost_only_queued_or_running={len(t['pending'])} "
            f"stored_under_another_id={len(t['id_mismatch'])}"
        )
        lost_by = Counter(
            f"{phase_of(t['accepted'][c], self.phases)}/{t['accepted'][c].mode}"
            for c in [*t["missing"], *t["pending"]]
        )
        if lost_by:
            lines.append(f"lost by phase (of the answer)/mode: {dict(sorted(lost_by.items()))}")
        for chaos_id in t["missing"][:10]:
            s = t["accepted"][chaos_id]
            lines.append(f"LOST {describe(s, self.phases)}: never recorded")
        for chaos_id in t["pending"][:10]:
            s = t["accepted"][chaos_id]
            lines.append(
                f"LOST {describe(s, self.phases)}: recorded only as "
                f"{(self.stored or {}).get(chaos_id)}"
            )
        for chaos_id in t["duplicated"][:10]:
            lines.append(
                f"DUPLICATED chaos_id={chaos_id}: records {(self.stored or {})[chaos_id]}"
                + (f" ({describe(s, self.phases)})" if (s := t["accepted"].get(chaos_id)) else "")
            )
        accepted = len(t["accepted"])
        ledger = (
            f"accepted={accepted} stored={len(t['stored_ok'])} lost={lost} "
            f"duplicated={len(t['duplicated'])} refused_503={t['refused_503']} "
            f"recovery_s={t['recovery_s']:.2f}"
        )
        sys.stderr.flush()
        print("\n".join([*lines, ledger]), flush=True)
        ok = accepted > 0 and lost == 0 and not t["duplicated"] and not self.failed
        return 0 if ok else 1


def status_name(status: int | None) -> str:
    if status is None:
        return "unanswered"
    if status == CLIENT_ERROR:
        return "client_error"
    if status == CLIENT_TIMEOUT:
        return "client_timeout"
    return str(status)


def fmt(value: float | None, none: str = "never") -> str:
    return none if value is None or math.isinf(value) else f"{value:.2f}"


def phase_of(sent: Sent, phases: list[Phase]) -> str:
    """The phase the request was answered in (the last fault before its answer)."""
    at = sent.answered_at if sent.answered_at is not None else sent.sent_at
    phase = "warmup"
    for p in phases:
        if at >= p.fault_at:
            phase = p.name
    return phase


def describe(sent: Sent, phases: list[Phase]) -> str:
    return (
        f"chaos_id={sent.chaos_id} mode={sent.mode} request_id={sent.request_id} "
        f"status={status_name(sent.status)} phase={phase_of(sent, phases)} "
        f"sent_at={sent.sent_at - STARTED:.2f}s answered_at="
        f"{(sent.answered_at or STARTED) - STARTED:.2f}s"
    )


# -- load ------------------------------------------------------------------------------


class Load:
    """Open loop: `rate` requests a second per mode, started on schedule whatever the
    answers do (a sync request waits at most the flow's timeout and 5 s more)."""

    def __init__(
        self,
        ledger: Ledger,
        session: aiohttp.ClientSession,
        targets: dict[str, tuple[str, str]],
        profile: Profile,
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.targets = targets  # mode: (url, token)
        self.profile = profile
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        self.run_id = uuid.uuid4().hex[:6]

    async def run(self) -> None:
        await asyncio.gather(*(self._mode(mode) for mode in MODES))

    async def _mode(self, mode: str) -> None:
        interval = 1 / self.profile.rate
        began = time.monotonic()
        number = 0
        while not self.stopped.is_set():
            task = asyncio.create_task(self._one(mode, number))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            number += 1
            next_at = began + number * interval
            behind = time.monotonic() - next_at
            if behind > 1:  # starved (a busy machine): skip, do not burst
                began += behind
                next_at += behind
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopped.wait(), timeout=max(0.0, next_at - time.monotonic())
                )

    async def _one(self, mode: str, number: int) -> None:
        url, token = self.targets[mode]
        chaos_id = f"{self.run_id}-{mode}-{number:06d}"
        sent = Sent(mode, chaos_id, time.monotonic())
        self.ledger.sent.append(sent)
        timeout = self.profile.flow_timeout_s + 5
        try:
            async with self.session.post(
                url,
                data=json.dumps({"chaos_id": chaos_id, "mode": mode}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                await answer.read()
                sent.request_id = answer.headers.get("X-Request-Id")
                status = answer.status
        except TimeoutError:
            status = CLIENT_TIMEOUT
        except (aiohttp.ClientError, OSError):
            status = CLIENT_ERROR
        sent.answered_at = time.monotonic()
        sent.status = status
        self.ledger.answered(sent)

    async def stop(self, wait_s: float) -> None:
        """Stop sending; wait (bounded) for the answers in flight; the rest stay
        unanswered (not accepted)."""
        self.stopped.set()
        pending = set(self.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=wait_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)


# -- blocking calls off the event loop ----------------------------------------------


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a daemon thread: the load keeps going meanwhile, and a call that
    hangs past the deadline does not hold up the exit (asyncio's default executor would)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as error:  # handed to the awaiting coroutine
            with suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, None, error)
        else:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, daemon=True, name=f"chaos-{fn.__name__}").start()
    return await future


# -- the run ---------------------------------------------------------------------------


@dataclass
class Chaos:
    ledger: Ledger
    profile: Profile
    cluster: RabbitCluster
    pair: PostgresPair | None  # None: broker phases only
    system: System
    database_url: str
    flow_ids: list[str] = field(default_factory=list)

    async def run(self) -> None:
        token = await in_thread(self.system.create_token, WORKSPACE, "automation")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            targets = await self._flows(session, token)
            load = Load(self.ledger, session, targets, self.profile)
            load_task = asyncio.create_task(load.run())
            try:
                remaining = self.profile.deadline_s - (time.monotonic() - STARTED)
                try:
                    await asyncio.wait_for(self._phases(), timeout=max(1.0, remaining))
                except TimeoutError:
                    self.ledger.failed = True
                    self.ledger.notes.append(
                        f"TIMEOUT: the phases did not finish within the deadline "
                        f"({self.profile.deadline_s:.0f} s from the start)"
                    )
                    say("deadline reached: stopping the load")
                for phase in self.ledger.phases:
                    phase.ended_at = phase.ended_at or time.monotonic()
            finally:
                say("stopping the load, waiting for the answers in flight")
                await load.stop(self.profile.flow_timeout_s + 6)
                load_task.cancel()
                with suppress(asyncio.CancelledError):
                    await load_task
        await self.verify()

    async def _flows(
        self, session: aiohttp.ClientSession, token: str
    ) -> dict[str, tuple[str, str]]:
        headers = {"Authorization": f"Bearer {token}"}
        runner = self.system.url("runner")
        targets = {}
        for mode in MODES:
            definition = json.loads(json.dumps(FLOW))
            definition["name"] = f"chaos {mode}"
            definition["webhook"]["async"] = mode == "async"
            definition["webhook"]["timeout_s"] = self.profile.flow_timeout_s
            async with session.post(
                f"{runner}/v1/flows", json=definition, headers=headers
            ) as answer:
                flow = await answer.json()
                if answer.status != 201:
                    raise RuntimeError(f"creating the {mode} flow: {answer.status} {flow}")
            async with session.get(
                f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers
            ) as answer:
                webhook = await answer.json()
                if answer.status != 200:
                    raise RuntimeError(f"the {mode} flow's webhook: {answer.status} {webhook}")
            self.flow_ids.append(flow["id"])
            url = f"{self.system.url('ingress')}/v1/flow-webhook/{flow['id']}"
            targets[mode] = (url, webhook["token"])
        return targets

    async def _phases(self) -> None:
        began = time.monotonic()
        say(f"load: {self.profile.rate:g} req/s async + {self.profile.rate:g} req/s sync")
        await self._until_accepted(began, "the first accepted requests")
        await asyncio.gather(asyncio.sleep(self.profile.warmup_s), self._log_queues("before"))
        await self._node_phase("ingress-node", "ingress")
        await self._node_phase("runner-node", "runner")
        await self._cluster_phase()
        if self.pair is not None:
            await self._postgres_phase()
        else:
            self.ledger.notes.append("phase=postgres skipped: the PostgreSQL pair is unavailable")

    async def _until_accepted(self, since: float, what: str) -> bool:
        deadline = time.monotonic() + self.profile.settle_s
        while not self.ledger.accepted_since(since):
            if time.monotonic() > deadline:
                say(f"no {what} within {self.profile.settle_s:g} s; going on")
                return False
            await asyncio.sleep(0.1)
        return True

    def _begin(self, name: str, what: str) -> Phase:
        now = time.monotonic()
        if self.ledger.phases:
            self.ledger.phases[-1].ended_at = now
        phase = Phase(name, what, now)
        self.ledger.phases.append(phase)
        say(f"phase {name}: {what}")
        return phase

    async def _settle(self, phase: Phase, since: float) -> None:
        """Until both modes are accepted again (bounded), then steady load."""
        if await self._until_accepted(since, f"accepted requests after {phase.name}"):
            say(
                f"phase {phase.name}: recovered (async {fmt(phase.recovery('async'))} s, "
                f"sync {fmt(phase.recovery('sync'))} s after the fault)"
            )
        await asyncio.sleep(self.profile.steady_s)

    async def _connections(self) -> dict[str, list[int]]:
        """Which node(s) each service's broker connection(s) are on, e.g.
        {"ingress": [1], "runner": [2]} (one `rabbitmqctl list_connections`); {} when
        the broker cannot tell."""
        try:
            return await in_thread(connections_by_service, self.cluster)
        except Exception as error:  # informative only
            say(f"listing connections: {error!r}")
            return {}

    async def _log_queues(self, when: str, timeout_s: float = 15.0) -> None:
        """The durable queues' type, leader and online members, to stderr."""
        try:
            queues = await asyncio.wait_for(in_thread(queue_state, self.cluster), timeout_s)
        except Exception as error:  # informative only
            say(f"queues ({when}): unknown ({error!r})")
            return
        say(f"queues ({when}): {queues}")

    async def _node_of(self, service: str) -> tuple[int, dict[str, list[int]], str]:
        """The node the service is connected to (it may be reconnecting: retried)."""
        connections: dict[str, list[int]] = {}
        for _ in range(20):
            connections = await self._connections()
            if connections.get(service):
                return connections[service][0], connections, ""
            index = await in_thread(self.cluster.node_of_connection, f"flowhooks-{service}")
            if index is not None:
                return index, connections, ""
            await asyncio.sleep(0.5)
        return 0, connections, f"no_{service}_connection_found_killed_node_0"

    async def _node_phase(self, name: str, service: str) -> None:
        index, connections, note = await self._node_of(service)
        node = self.cluster.nodes[index]
        on_it = sorted(s for s, nodes in connections.items() if index in nodes)
        phase = self._begin(
            name,
            f"SIGKILL node {index} {node.name} :{node.amqp_port}, "
            f"connections there: {','.join(on_it) or '?'}; all: {connections}",
        )
        phase.note = note
        await in_thread(self.cluster.kill, index)
        phase.killed_at = time.monotonic()
        # Where the queues' leaders moved, while the node is down (diagnostic only).
        await asyncio.gather(
            asyncio.sleep(self.profile.down_s),
            self._log_queues(f"{name}, node {index} down", self.profile.down_s),
        )
        say(f"phase {name}: booting node {index} again")
        await in_thread(self.cluster.restart, index)
        phase.restarted_after_s = time.monotonic() - phase.fault_at
        await self._settle(phase, time.monotonic())

    async def _cluster_phase(self) -> None:
        phase = self._begin("cluster", "SIGKILL all nodes")
        await in_thread(self.cluster.kill_all)
        phase.killed_at = time.monotonic()
        await asyncio.sleep(self.profile.down_s)
        say("phase cluster: booting every node again")
        await in_thread(self.cluster.restart_all)
        phase.restarted_after_s = time.monotonic() - phase.fault_at
        await self._settle(phase, time.monotonic())

    async def _postgres_phase(self) -> None:
        assert self.pair is not None
        phase = self._begin("postgres", "SIGKILL the primary, promote the replica")
        await in_thread(self.pair.kill_primary)
        phase.killed_at = time.monotonic()
        await asyncio.sleep(self.profile.promote_after_s)
        say("phase postgres: promoting the replica")
        await in_thread(self.pair.promote)
        phase.restarted_after_s = time.monotonic() - phase.fault_at
        await self._settle(phase, time.monotonic())

    # -- verification ------------------------------------------------------------------

    async def verify(self) -> None:
        """Read the stored records until every accepted request is stored with its
        outcome, or the time is up."""
        accepted = {s.chaos_id for s in self.ledger.sent if s.status in ACCEPTED}
        budget = min(
            self.profile.verify_s,
            self.profile.deadline_s + VERIFY_AFTER_DEADLINE_S - (time.monotonic() - STARTED),
        )
        deadline = time.monotonic() + max(10.0, budget)
        say(f"verifying: {len(accepted)} accepted; waiting up to {max(10.0, budget):.0f} s")
        while True:
            try:
                self.ledger.stored = await read_stored(self.database_url, self.flow_ids)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                say(f"reading debugger.requests: {error!r}")
            stored = self.ledger.stored or {}
            unsettled = [
                c
                for c in accepted
                if not any(outcome in FINAL_OUTCOMES for _, outcome in stored.get(c, []))
            ]
            if self.ledger.stored is not None and not unsettled:
                say("every accepted request is stored")
                return
            if time.monotonic() > deadline:
                say(f"{len(unsettled)} accepted requests still not stored with an outcome")
                return
            await asyncio.sleep(2)


def connections_by_service(cluster: RabbitCluster) -> dict[str, list[int]]:
    """{service: sorted node indexes} of the `flowhooks-<service>-<instance>` connections."""
    found: dict[str, set[int]] = {}
    for name, index in cluster.connections():
        parts = name.split("-")
        if len(parts) >= 2 and parts[0] == "flowhooks":
            found.setdefault(parts[1], set()).add(index)
    return {service: sorted(nodes) for service, nodes in sorted(found.items())}


def queue_state(cluster: RabbitCluster) -> str:
    """`name type leader online-members` of every flowhooks queue, from one running node
    (node names shortened to their index)."""
    if not cluster.running():
        return "no node running"
    index = {node.name: str(i) for i, node in enumerate(cluster.nodes)}
    parts = []
    for row in cluster.query("list_queues", "name", "type", "leader", "online"):
        name = str(row.get("name", ""))
        if not name.startswith("flowhooks.") or row.get("type") != "quorum":
            if name.startswith("flowhooks.") and row.get("type") != "quorum":
                parts.append(f"{name.removeprefix('flowhooks.')}:{row.get('type')}")
            continue
        leader = index.get(str(row.get("leader")), "?")
        online = "".join(sorted(index.get(str(n), "?") for n in row.get("online") or []))
        parts.append(f"{name.removeprefix('flowhooks.')}:q L{leader} on{online}")
    return " ".join(sorted(parts))


async def read_stored(database_url: str, flow_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """chaos_id: [(record id, outcome)] of the chaos flows' stored requests."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT id, outcome, input->>'chaos_id' AS chaos_id, raw_body"
            " FROM debugger.requests WHERE flow_id = ANY($1::uuid[])",
            flow_ids,
            timeout=30,
        )
    finally:
        await conn.close(timeout=5)
    stored: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        chaos_id = row["chaos_id"]
        if chaos_id is None:  # no parsed input: the raw body
            match = re.search(r'"chaos_id":\s*"([^"]+)"', row["raw_body"] or "")
            chaos_id = match.group(1) if match else f"?{row['id']}"
        stored.setdefault(chaos_id, []).append((row["id"], row["outcome"]))
    return stored


# -- setup, teardown, the deadline -------------------------------------------------------


async def create_database(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute("CREATE DATABASE flowhooks")
    finally:
        await conn.close()


def service_env() -> dict[str, str]:
    return {
        "FLOWHOOKS_BROKER_REPLICAS": "3",
        # Nothing pruned during the run.
        "FLOWHOOKS_DEBUGGER_RETENTION_MAX_PER_FLOW": "100000000",
        "FLOWHOOKS_DEBUGGER_RETENTION_MAX_AGE_S": str(365 * 86400),
        "FLOWHOOKS_DEBUGGER_RETENTION_INTERVAL_S": "3600",
        # A database write retried while PostgreSQL fails over waits at most 4 s.
        "FLOWHOOKS_DEBUGGER_WRITE_MAX_RETRY_DELAY_S": "4",
        "FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S": "0",
    }


LOG_EVENT = re.compile(r'"event":\s*"([^"]+)"')
LOG_LEVEL = re.compile(r'"level":\s*"(warning|error|critical)"')


def publish_failures(lines: list[str]) -> dict[str, int]:
    """`publish_failed` log lines counted by routing key and kind of error (a broker's
    nack, a closed channel, a lost connection...)."""
    counts: Counter[str] = Counter()
    for line in lines:
        if '"publish_failed"' not in line:
            continue
        with suppress(ValueError):
            entry = json.loads(line)
            error = str(entry.get("error", ""))
            kind = "Nack" if "Nack" in error else error.lstrip("<").split("(", 1)[0].split(":")[0]
            counts[f"{entry.get('routing_key')} {kind}"] += 1
    return dict(counts.most_common())


def interesting_logs(system: System, ledger: Ledger) -> str:
    """Per service: its log file, its warning/error events counted, the lines naming a
    lost or duplicated request (the first 10 of them), the last warnings and errors."""
    t = ledger.tally()
    ids = [
        s.request_id
        for c in [*t["missing"], *t["pending"], *t["duplicated"]][:10]
        if (s := t["accepted"].get(c)) is not None and s.request_id
    ]
    out = []
    for services in system.processes.values():
        for service in services:
            text = service.output()
            lines = text.splitlines()
            alive = "running" if service.process.poll() is None else "EXITED"
            flagged = [line for line in lines if LOG_LEVEL.search(line)]
            events = Counter(m.group(1) for line in flagged if (m := LOG_EVENT.search(line)))
            out.append(
                f"--- {service.name}:{service.port} ({alive}, log {service.log.name}) "
                f"warning/error events: {dict(events.most_common())}"
            )
            failures = publish_failures(flagged)
            if failures:
                out.append(f"--- {service.name}: publish failures (routing key, error): {failures}")
            naming = [line for line in lines if any(i in line for i in ids)]
            if naming:
                out.append(f"--- {service.name}: lines naming lost/duplicated request ids")
                out += naming[-30:]
            out.append(f"--- {service.name}: last warnings/errors")
            out += flagged[-15:]
            if alive == "EXITED":
                out += lines[-40:]
    return "\n".join(out)


def kill_descendants(pid: int) -> None:
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            for child in (task / "children").read_text().split():
                kill_descendants(int(child))
                with suppress(ProcessLookupError):
                    os.kill(int(child), signal.SIGKILL)


def start_watchdog(ledger: Ledger, profile: Profile, closers: list[Callable[[], None]]) -> None:
    """Past the hard deadline: the ledger with what is known, then kill everything."""

    def fire() -> None:
        ledger.failed = True
        ledger.notes.append("HARD DEADLINE: the run was stopped; stored counts are partial")
        with suppress(Exception):
            ledger.report()
        cleanup = threading.Thread(target=lambda: [c() for c in reversed(closers)], daemon=True)
        cleanup.start()
        cleanup.join(timeout=30)
        kill_descendants(os.getpid())
        os._exit(3)

    timer = threading.Timer(
        profile.deadline_s + VERIFY_AFTER_DEADLINE_S + HARD_GRACE_S - (time.monotonic() - STARTED),
        fire,
    )
    timer.daemon = True
    timer.start()


def run(profile: Profile, ledger: Ledger) -> None:
    closers: list[Callable[[], None]] = []
    start_watchdog(ledger, profile, closers)
    with ExitStack() as stack:
        say("booting the 3-node RabbitMQ cluster and the PostgreSQL pair")
        # Both boot at once (the cluster takes ~10 s, the pair ~2 s).
        pair_box: dict[str, Any] = {}

        def boot_pair() -> None:
            manager = postgres_pair()
            try:
                pair_box["pair"] = manager.__enter__()
                pair_box["manager"] = manager
            except Exception as error:
                pair_box["error"] = error

        pair_thread = threading.Thread(target=boot_pair, daemon=True)
        pair_thread.start()
        cluster = stack.enter_context(rabbit_cluster(3))
        closers.append(cluster.close)
        pair_thread.join(timeout=120)
        pair = pair_box.get("pair")
        if pair is not None:
            manager = pair_box["manager"]
            stack.callback(manager.__exit__, None, None, None)
            closers.append(pair.close)
            asyncio.run(create_database(pair.primary_dsn()))
            database_url = pair.dsn("flowhooks")
        else:
            error = pair_box.get("error", "it did not start within 120 s")
            note = (
                f"POSTGRES PAIR UNAVAILABLE ({error!r}): broker phases only, "
                "on a fresh database of the shared PostgreSQL"
            )
            say(note)
            ledger.notes.append(note)
            database_url = stack.enter_context(fresh_database())
        say(f"cluster up: {', '.join(cluster.urls)}; database {database_url}")
        system = System(
            amqp_url=cluster.urls[0],
            database_url=database_url,
            extra_env={"FLOWHOOKS_AMQP_URLS": ",".join(cluster.urls), **service_env()},
        )

        def stop_system() -> None:
            codes = system.stop_all()
            say(f"services stopped: {codes}")

        stack.callback(stop_system)

        def kill_services() -> None:
            for services in system.processes.values():
                for service in services:
                    service.process.kill()

        closers.append(kill_services)
        system.start_all()
        say("services ready: " + ", ".join(f"{n} {system.url(n)}" for n in system.processes))
        chaos = Chaos(ledger, profile, cluster, pair, system, database_url)
        try:
            uvloop.run(chaos.run())
        finally:
            t = ledger.tally()
            crashed = [
                f"{s.name}:{s.port} exited {s.process.returncode}"
                for services in system.processes.values()
                for s in services
                if s.process.poll() is not None
            ]
            if crashed:
                ledger.notes.append(f"SERVICES EXITED during the run: {crashed}")
            if t["missing"] or t["pending"] or t["duplicated"] or ledger.failed or crashed:
                print(interesting_logs(system, ledger), file=sys.stderr, flush=True)
        say("tearing down")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_true", help="short phases (under 3 minutes)")
    length.add_argument(
        "--suite", action="store_true", help="the test suite's: shortest phases, half the rate"
    )
    parser.add_argument("--rate", type=float, help="requests a second per mode")
    args = parser.parse_args()
    profile = SUITE if args.suite else QUICK if args.quick else FULL
    if args.rate:
        profile = Profile(**{**profile.__dict__, "rate": args.rate})
    ledger = Ledger()
    code = 1
    try:
        run(profile, ledger)
    except Exception as error:
        ledger.failed = True
        ledger.notes.append(f"ERROR: {error!r}")
        say(f"failed: {error!r}")
    finally:
        code = ledger.report()
        say(f"done in {time.monotonic() - STARTED:.1f} s, exit {code}")
    sys.exit(code)


if __name__ == "__main__":
    main()
