"""The runner's metrics, on its app's registry (created in `app.wire`)."""

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram

from services.runner.callbacks import CallbackSender
from services.runner.pool import WorkerPool
from shared.metrics import Counters

if TYPE_CHECKING:  # it imports this module
    from services.runner.runs import RunService

# Seconds: a template flow takes milliseconds; flows with `http` steps or long loops run
# up to their timeout (the flows API allows minutes).
RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class RunnerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No registry (tests building components directly): observed, never exported.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.run_duration = Histogram(
            "flowhooks_run_duration_seconds",
            "Runs, from the start in a worker to the result, by outcome",
            ["outcome"],
            registry=self.registry,
            buckets=RUN_BUCKETS,
        )
        # Each outcome's child, looked up once (`labels` takes a lock and builds a key
        # at every call: once a run).
        self._run_duration_of: dict[str, Histogram] = {}

    def observe_run(self, outcome: str, duration_s: float) -> None:
        child = self._run_duration_of.get(outcome)
        if child is None:
            child = self._run_duration_of[outcome] = self.run_duration.labels(outcome)
        child.observe(duration_s)

    def watch(self, pool: WorkerPool, callbacks: CallbackSender, runs: "RunService") -> None:
        """The counters the pool, the run service and the callback sender keep, read at
        scrape time."""
        guard = callbacks.guard
        self.registry.register(
            Counters(
                counters=[
                    (
                        "flowhooks_runner_workers_started",
                        "Worker processes started (the first, spares, replacements of killed)",
                        lambda: pool.workers_started,
                    ),
                    (
                        "flowhooks_runner_workers_drained",
                        "Workers taken back from a workspace holding more, for one waiting"
                        " within its share",
                        lambda: pool.workers_drained,
                    ),
                    (
                        "flowhooks_runner_workers_killed",
                        "Workers killed by the supervisor (a run past its time or memory)",
                        lambda: pool.workers_killed,
                    ),
                    (
                        "flowhooks_runner_workers_lost",
                        "Workers that died on their own (crashed, killed from outside)",
                        lambda: pool.workers_lost,
                    ),
                    (
                        "flowhooks_runner_runs_retried",
                        "Runs started again on another worker after theirs died",
                        lambda: pool.runs_retried,
                    ),
                    (
                        "flowhooks_runner_runs_parked",
                        "Async runs parked in the wait queue (their workspace at its share,"
                        " its waiting messages used)",
                        lambda: runs.runs_parked,
                    ),
                    (
                        "flowhooks_runner_runs_stored_waiting",
                        "Runs stopped in a delay step and stored by this runner",
                        lambda: runs.delays.stored if runs.delays is not None else 0,
                    ),
                    (
                        "flowhooks_runner_runs_resumed",
                        "Waiting runs this runner republished when their delay was over",
                        lambda: runs.delays.resumed if runs.delays is not None else 0,
                    ),
                    (
                        "flowhooks_callback_attempts_failed",
                        "Completion callback attempts that did not get a 2xx",
                        lambda: callbacks.attempts_failed,
                    ),
                    (
                        "flowhooks_callbacks_given_up",
                        "Completion callbacks given up on after their last attempt",
                        lambda: callbacks.given_up,
                    ),
                    (
                        "flowhooks_callbacks_deferred",
                        "Completion callbacks parked again without an attempt (destination"
                        " busy or its circuit open, workspace over its share)",
                        lambda: callbacks.deferred,
                    ),
                    (
                        "flowhooks_callback_circuits_opened",
                        "Callback destinations whose circuit breaker opened",
                        lambda: guard.opened if guard is not None else 0,
                    ),
                ],
                gauges=[
                    (
                        "flowhooks_runner_runs_in_pool",
                        "Runs in this runner's worker pool now (running or waiting for a slot)",
                        lambda: runs.runs_running,
                    ),
                    (
                        "flowhooks_runner_workers_alive",
                        "Worker processes alive (assigned, idle or retiring)",
                        lambda: len(pool.worker_pids),
                    ),
                    (
                        "flowhooks_runner_workspaces_holding_workers",
                        "Workspaces holding at least one worker",
                        lambda: pool.workspaces_holding,
                    ),
                ],
            )
        )
