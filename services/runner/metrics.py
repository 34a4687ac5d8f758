"""The runner's metrics, on its app's registry (created in `app.wire`)."""

from prometheus_client import CollectorRegistry, Histogram

from services.runner.callbacks import CallbackSender
from services.runner.pool import WorkerPool
from shared.metrics import Counters

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

    def watch(self, pool: WorkerPool, callbacks: CallbackSender) -> None:
        """The counters the pool and the callback sender keep, read at scrape time."""
        self.registry.register(
            Counters(
                counters=[
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
                        "flowhooks_callback_attempts_failed",
                        "Completion callback attempts that did not get a 2xx",
                        lambda: callbacks.attempts_failed,
                    ),
                    (
                        "flowhooks_callbacks_given_up",
                        "Completion callbacks given up on after their last attempt",
                        lambda: callbacks.given_up,
                    ),
                ]
            )
        )
