from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services import registry
from services.runner.callbacks import DEFAULT_RETRY_DELAYS_S
from services.runner.token_keys import TokenKey, TokenKeyRing, parse_ring
from shared.settings import DatabaseSettings, WebhookSecretsSettings


class RunnerSettings(DatabaseSettings, WebhookSecretsSettings):
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
    # Upper bound for a flow's `webhook.timeout_s`.
    runner_max_timeout_s: float = Field(default=300.0, gt=0)
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
    # Address-space bound of one worker process (RLIMIT_AS).
    runner_worker_memory_mb: int = Field(default=512, ge=128)
    # CPU time one run may use in all.
    runner_run_cpu_s: float = Field(default=5.0, gt=0)
    # Longest a run may compute without a pause (one operation that cannot be
    # interrupted): past it the supervisor kills the worker and fails the run.
    runner_run_slice_s: float = Field(default=1.0, gt=0)
    # Budget of one template render (interrupted from inside the worker, cheaper than a
    # kill). Past it the step (or response) fails with a clear error.
    runner_render_timeout_s: float = Field(default=0.5, gt=0)
    # Largest rendered text, and largest string or list one operator may build.
    runner_max_output_chars: int = Field(default=1_000_000, ge=1000)
    # Largest value (encoded as JSON) a step may produce.
    runner_max_value_bytes: int = Field(default=1_000_000, ge=1000)
    # Loop iterations of one run in total (nested loops multiply).
    runner_max_loop_iterations: int = Field(default=10_000, ge=1)
    # Step trace of one run: entries kept, and bytes of inputs and outputs kept.
    runner_max_trace_steps: int = Field(default=1_000, ge=10)
    runner_max_trace_bytes: int = Field(default=1_000_000, ge=10_000)
    # Largest response body a flow may give its sender.
    runner_max_response_bytes: int = Field(default=1_000_000, ge=1000)
    # Networks `http` steps may reach although they are private, loopback or
    # link-local (JSON list of CIDRs, e.g. ["10.1.0.0/16"]). Empty: only public addresses.
    runner_http_allow_networks: list[str] = Field(default_factory=list)
    # Largest response body an `http` step reads.
    runner_http_max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Most items a `loop` step iterates over.
    runner_loop_max_items: int = Field(default=10_000, ge=1)
    # run.finished events are group-committed: while one message awaits its confirm, the
    # next collects up to this many runs.
    runner_event_batch: int = Field(default=200, ge=1)
    # Tell the debugger when an async run starts (outcome `running`).
    runner_record_started: bool = True
    # Compiled templates kept per process.
    runner_template_cache_size: int = Field(default=10_000, ge=1)
    # Completion callbacks (`webhook.callback`, services/runner/callbacks.py). Networks a
    # callback URL may reach although private, loopback or link-local (JSON list of
    # CIDRs); checked on save and at each attempt. Empty: only public addresses.
    runner_callback_allow_networks: list[str] = Field(default_factory=list)
    # Caps of the jittered wait after the 1st, 2nd, ... failed attempt (each wait is
    # uniform in [0, cap)); past the list, the last cap repeats.
    runner_callback_retry_delays_s: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_DELAYS_S), min_length=1
    )
    # No attempt starts later than this after the run finished: the callback is `failed`.
    runner_callback_give_up_s: float = Field(default=86_400.0, gt=0)
    # One attempt's whole request, answer included.
    runner_callback_timeout_s: float = Field(default=10.0, gt=0)
    # Callback messages handled at once per runner process (attempts in flight).
    runner_callback_prefetch: int = Field(default=32, ge=1)
    # Fairness of the callback sender (shared/delivery_guard.py): a tarpit or a dead
    # receiver delays only its own workspace's callbacks. Short connect and first-byte
    # (status and headers) timeouts, so a receiver that accepts and stalls holds a slot
    # for seconds, not the whole timeout (receivers should answer at once and work after).
    runner_callback_connect_timeout_s: float = Field(default=3.0, gt=0)
    runner_callback_first_byte_timeout_s: float = Field(default=5.0, gt=0)
    # Attempts in flight to one destination (scheme+host+port) per runner process;
    # callbacks beyond it are deferred (parked 5 s, no attempt counted).
    runner_callback_per_destination: int = Field(default=4, ge=1)
    # Attempts in flight per process that the workspaces share fairly (each active
    # workspace at most slots / active workspaces). Keep it under the prefetch: the rest
    # of the window is where another workspace's callback is taken at once.
    runner_callback_slots: int = Field(default=16, ge=1)
    # Circuit breaker per destination: this many failed attempts in a row (no answer,
    # a timeout, 5xx or 429) open it; after the cool-down one probe is let through.
    runner_callback_breaker_failures: int = Field(default=5, ge=1)
    runner_callback_breaker_cool_down_s: float = Field(default=30.0, gt=0)

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
