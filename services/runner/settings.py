from typing import TYPE_CHECKING, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import registry
from services.runner.bounds import RunBounds
from services.runner.callbacks import DEFAULT_RETRY_DELAYS_S, retry_policy
from services.runner.token_keys import TokenKey, TokenKeyRing, parse_ring
from shared.delivery import DeliverySettings
from shared.retry import RetryPolicy
from shared.settings import DatabaseSettings, WebhookSecretsSettings, flat_fields, section

# Two sections declared as models, each field its own variable (shared/settings.py,
# `flat_fields`): FLOWHOOKS_RUNNER_<field of services.runner.bounds.RunBounds> (what a
# run may use: FLOWHOOKS_RUNNER_RUN_CPU_S, ..._RENDER_TIMEOUT_S, ..._WORKER_MEMORY_MB,
# ...), and FLOWHOOKS_RUNNER_CALLBACK_<field of shared.delivery.DeliverySettings> (the
# callbacks' timeouts, address policy, per-destination limit, fair share and breaker).
if TYPE_CHECKING:

    class _Sections(BaseSettings):
        pass

else:
    _Sections = flat_fields(("runner_", RunBounds), ("runner_callback_", DeliverySettings))


class RunnerSettings(DatabaseSettings, WebhookSecretsSettings, _Sections):
    # A refused ring must not print (part of) its keys in the error.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    SERVICE = "runner"
    PORTS = registry.PORTS[SERVICE]

    # The key ring from which every flow's webhook token is derived (HMAC): keys separated
    # by commas, the current one first, then previous ones (each optionally `@<ISO time>`,
    # after which its tokens are refused); see token_keys.py and docs/operations.md.
    # Required, and the same on every runner replica (and for `flows rotate-all-tokens`).
    runner_token_keys: SecretStr | None = None
    # The former single key, still read as a ring of one key; set one of the two only.
    runner_token_key: SecretStr | None = None

    # The ingress's public base URL, shown in `GET /v1/flows/{id}/webhook`.
    runner_webhook_base_url: str = "http://127.0.0.1:8080"
    # The same URL as the ingress's setting of that name (one variable for a deployment);
    # when set it wins over FLOWHOOKS_RUNNER_WEBHOOK_BASE_URL.
    ingress_public_url: str | None = None

    def webhook_base_url(self) -> str:
        """The base of the webhook URL the flows API shows."""
        return self.ingress_public_url or self.runner_webhook_base_url

    # Upper bound for a flow's `webhook.timeout_s`.
    runner_max_timeout_s: float = Field(default=300.0, gt=0)
    # Runs waiting in `delay` steps (services/runner/delays.py): how often each replica
    # looks for due ones, how many it claims per transaction, and each workspace's
    # bounds on its waiting runs and their stored state (past them a run fails, naming
    # the bound).
    runner_delay_poll_s: float = Field(default=1.0, gt=0)
    runner_delay_resume_batch: int = Field(default=500, ge=1)
    runner_delay_max_waiting_runs: int = Field(default=100_000, ge=0)
    runner_delay_max_state_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    # One waiting run's stored state (its context and trace), at most.
    runner_delay_max_run_state_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Messages of webhook requests (each holds one or many) taken from the broker at once
    # per runner process, per queue. Runs beyond the free slots wait in the runner, in
    # their workspace's turn; the window must be well above the slots (workers x slots)
    # so that a workspace whose runs wait for their share cannot fill it and keep the
    # other workspaces' messages in the queue.
    runner_sync_prefetch: int = Field(default=128, ge=1)
    # 0: derived from the pool, every run it can run at once (most workers x slots: each
    # may be a message of its own) and half as much again (services/runner/runs.py,
    # `async_window`), so that runs that run never fill the window either.
    runner_async_prefetch: int = Field(default=0, ge=0)
    # Async messages of that window that may hold one workspace's runs waiting for its
    # share (a backlog next to its slots); past it, and past a quarter of the window for
    # all workspaces together, such runs are parked in the broker (services/runner/runs.py)
    # so that they never hold the window other workspaces' runs are queued behind.
    runner_async_waiting_messages: int = Field(default=1, ge=0)
    # How often the runner tells each ingress which of its async runs finished
    # (`runs.drained`, for the ingress's per-workspace queued bounds).
    runner_drain_report_interval_s: float = Field(default=0.25, gt=0)
    # How long the runner remembers that a request finished (a batch delivered again
    # after a runner died runs only the requests not finished within this time).
    runner_finished_keep_s: float = Field(default=600.0, gt=0)
    # Worker processes that run flows, started with the runner and always kept (0: one
    # per core). A worker hosts one workspace's runs at a time (so a kill stops only
    # that workspace's runs), up to `runner_worker_slots` at once.
    runner_workers: int = Field(default=0, ge=0)
    runner_worker_slots: int = Field(default=16, ge=1)
    # Most worker processes at once (0: four per started worker, at least 8): how many
    # workspaces can run at the same moment without waiting for one another. Each may
    # reach FLOWHOOKS_RUNNER_WORKER_MEMORY_MB: size the runner's memory for this many.
    runner_max_workers: int = Field(default=0, ge=0)
    # Idle workers kept started beyond those in use, so that a workspace that needs a
    # worker never waits for a process to start (~0.3-0.5 s of CPU); they are also the
    # reserve only a workspace holding no worker may take.
    runner_spare_workers: int = Field(default=2, ge=1)
    # An idle worker beyond the spares and `runner_workers` is stopped after this long.
    runner_worker_idle_s: float = Field(default=60.0, gt=0)
    # Share of the worker processes (`runner_max_workers`) one workspace may hold.
    runner_workspace_share: float = Field(default=0.5, gt=0, le=1)
    # Longest a run may compute without a pause (one operation that cannot be
    # interrupted): past it the supervisor kills the worker and fails the run.
    runner_run_slice_s: float = Field(default=1.0, gt=0)
    # run.finished events are group-committed: while one message awaits its confirm, the
    # next collects up to this many runs.
    runner_event_batch: int = Field(default=200, ge=1)
    # Tell the debugger when an async run starts (outcome `running`).
    runner_record_started: bool = True
    # ... only once it has run this long (announced between this and twice this after
    # it started; services/runner/started_hold.py): a run that ends sooner sends no
    # run.started, and its record goes from `queued` to its outcome. Most async runs
    # end within milliseconds, so their `running` was a message at every hop for a state
    # nobody could see; 0.1 s is below what a person or a status poller notices, and a
    # hold of ms would still catch runs waiting a moment for a worker under load.
    # 0: at once, as each starts.
    runner_record_started_after_s: float = Field(default=0.1, ge=0)
    # Paced flows (webhook.ordering, ...; services/runner/paced_runs.py): a claimed run's
    # lease (renewed every third of it while it runs; a dead replica's runs are taken
    # over once it lapses), how long a run waits for earlier runs of its key still on
    # their way to the table, how often an idle dispatcher looks for runs another
    # replica made eligible, and how many paced runs one replica runs at once (0: its
    # pool's slots).
    runner_paced_lease_s: float = Field(default=15.0, gt=0)
    runner_paced_settle_s: float = Field(default=0.2, ge=0)
    runner_paced_poll_s: float = Field(default=0.25, gt=0)
    runner_paced_max_in_flight: int = Field(default=0, ge=0)
    # Completion callbacks (`webhook.callback`, services/runner/callbacks.py): besides
    # these, the fields of `_CallbackDelivery` (shared/delivery.py, `DeliverySettings`):
    # FLOWHOOKS_RUNNER_CALLBACK_ALLOW_NETWORKS, _TIMEOUT_S, _CONNECT_TIMEOUT_S,
    # _FIRST_BYTE_TIMEOUT_S, _PER_DESTINATION (callbacks beyond it are parked 5 s, no
    # attempt counted), _SLOTS (keep it under the prefetch), _BREAKER_FAILURES and
    # _BREAKER_COOL_DOWN_S.
    # Caps of the jittered wait after the 1st, 2nd, ... failed attempt (each wait is
    # uniform in [0, cap)); past the list, the last cap repeats.
    runner_callback_retry_delays_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_DELAYS_S), min_length=1
    )
    # No attempt starts later than this after the run finished: the callback is `failed`.
    runner_callback_give_up_s: float = Field(default=86_400.0, gt=0)
    # Callback messages handled at once per runner process (attempts in flight).
    runner_callback_prefetch: int = Field(default=32, ge=1)

    def run_bounds(self) -> RunBounds:
        return section(self, RunBounds, "runner_")

    def callback_delivery(self) -> DeliverySettings:
        return section(self, DeliverySettings, "runner_callback_")

    def callback_retry(self) -> RetryPolicy:
        return retry_policy(self.runner_callback_retry_delays_s, self.runner_callback_give_up_s)

    @field_validator("runner_callback_retry_delays_s")
    @classmethod
    def _positive_delays(cls, delays: list[float]) -> list[float]:
        if any(delay <= 0 for delay in delays):
            raise ValueError("each retry delay must be more than 0 seconds")
        return delays

    @model_validator(mode="after")
    def _check_token_ring(self) -> Self:
        self.token_ring()  # a bad ring stops the runner at start, not at the first token
        return self

    def token_ring(self) -> TokenKeyRing:
        ring = self.runner_token_keys.get_secret_value() if self.runner_token_keys else ""
        single = self.runner_token_key.get_secret_value() if self.runner_token_key else ""
        if ring.strip() and single.strip():
            # Two sources of truth for a secret is how rotations go wrong: refuse.
            raise ValueError(
                "set FLOWHOOKS_RUNNER_TOKEN_KEYS or FLOWHOOKS_RUNNER_TOKEN_KEY, not both"
            )
        if ring.strip():
            return parse_ring(ring)
        if single.strip():
            # Taken whole: the old variable never had a ring's ',' and '@' syntax.
            return TokenKeyRing((TokenKey.of(single.strip()),))
        raise ValueError("FLOWHOOKS_RUNNER_TOKEN_KEYS is required (the flow-token key ring)")
