from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from services import registry
from services.debugger.alerts import retry_policy
from shared.delivery import DeliverySettings
from shared.retry import RetryPolicy
from shared.settings import DatabaseSettings, flat_fields, section

# FLOWHOOKS_DEBUGGER_ALERT_<field of shared.delivery.DeliverySettings>, each its own
# variable (shared/settings.py, `flat_fields`): the alert notices' timeouts, address
# policy, per-destination limit, fair share and breaker.
if TYPE_CHECKING:

    class _AlertDelivery(BaseSettings):
        pass

else:
    _AlertDelivery = flat_fields(("debugger_alert_", DeliverySettings))


class DebuggerSettings(DatabaseSettings, _AlertDelivery):
    SERVICE = "debugger"
    PORTS = registry.PORTS[SERVICE]

    # Rows written per transaction (a batch also takes whatever arrived while the
    # previous one was being written), and the longest wait to fill a batch.
    debugger_batch_size: int = Field(default=1000, ge=1)
    debugger_batch_linger_ms: float = Field(default=20.0, ge=0)
    # Unacknowledged messages held at once; at least the batch size (twice it lets the
    # next batch fill while one is written). A message can carry many events.
    debugger_prefetch: int = Field(default=2000, ge=1)
    # Database connections per process, one pool per kind of work, so that a flood of
    # one kind cannot take the connections of another (FLOWHOOKS_DATABASE_POOL_MAX's
    # pool serves the rest: replays, retention, alerts, callback attempts). The intake
    # writes one batch at a time (the second connection covers a reconnect) and has no
    # statement timeout: it must never drop a row.
    debugger_ingest_pool_max: int = Field(default=2, ge=1)
    # The HTTP API, and the status URL's RPC (`debugger.get_run_status`).
    debugger_api_pool_max: int = Field(default=8, ge=2)
    debugger_rpc_pool_max: int = Field(default=2, ge=1)
    # PostgreSQL's statement_timeout for the API's and the RPC's statements: a costly
    # search is stopped in the database, not just abandoned by the client (400 for a
    # search, 503 otherwise).
    debugger_api_statement_timeout_ms: int = Field(default=3000, ge=1)
    # Listings, searches and stats running at once per process: per workspace, and all
    # workspaces together (below the API pool, so that detail and ownership lookups
    # always find a connection). Past its share a request waits up to `wait_s` (at
    # most `queue` of one workspace waiting), then gets 429 with Retry-After.
    debugger_list_per_workspace: int = Field(default=2, ge=1)
    debugger_list_concurrency: int = Field(default=6, ge=1)
    debugger_list_queue: int = Field(default=64, ge=0)
    debugger_list_wait_s: float = Field(default=1.0, ge=0)
    # Statement seconds per second one workspace's listings and searches may use on
    # average (per process), beyond a burst of one statement timeout: back-to-back
    # searches keep this much of a database core busy, not all `per_workspace` cores.
    debugger_list_time_share: float = Field(default=1.0, gt=0)
    # Size caps per stored field (UTF-8 bytes). Beyond them, text is stored cut and JSON
    # as a marker {"truncated": true, "size": N, "preview": "..."}; the row's
    # `truncated` records each cut field's original size.
    debugger_max_raw_body_bytes: int = Field(default=65_536, ge=0)
    debugger_max_input_bytes: int = Field(default=262_144, ge=1024)
    debugger_max_trace_bytes: int = Field(default=1_048_576, ge=4096)
    # Each step's input and output within the trace.
    debugger_max_step_value_bytes: int = Field(default=65_536, ge=1024)
    debugger_max_response_body_bytes: int = Field(default=65_536, ge=0)
    debugger_max_error_bytes: int = Field(default=8_192, ge=256)
    # A batch write that fails: while PostgreSQL is away (connection refused or lost,
    # starting, read-only, not migrated) it is retried for as long as it takes, the
    # delay doubling from the first to the longest; an unknown failure is retried this
    # many times, then handled like refused data (split, the refused rows stored reduced).
    debugger_write_retry_delay_s: float = Field(default=1.0, gt=0)
    debugger_write_max_retry_delay_s: float = Field(default=30.0, gt=0)
    debugger_write_unknown_retries: int = Field(default=3, ge=0)
    # Retention: requests older than this, and beyond the newest N per flow, are deleted
    # by a periodic job in batches.
    debugger_retention_max_age_s: float = Field(default=30 * 86400, gt=0)
    debugger_retention_max_per_flow: int = Field(default=100_000, ge=1)
    debugger_retention_interval_s: float = Field(default=60.0, gt=0)
    debugger_retention_batch: int = Field(default=1000, ge=1)
    # Time partitions of the requests (partitions.py): each covers this long (aligned on
    # the epoch: a day by default, UTC midnight to midnight); a periodic job creates them
    # `ahead` of need, and moves what landed in the default partition. Retention by age
    # drops a partition once its whole range is past the age.
    debugger_partition_interval_s: int = Field(default=86400, ge=60)
    debugger_partition_ahead_s: int = Field(default=3 * 86400, ge=60)
    debugger_partition_check_interval_s: float = Field(default=300.0, gt=0)
    # A search (`match=`, `header=`) without `since` covers this long back.
    debugger_search_window_s: float = Field(default=7 * 86400, gt=0)
    # The move of the unpartitioned table (migration 016) into the partitioned one, in
    # the background: rows per transaction, and the pause between two.
    debugger_legacy_copy_batch: int = Field(default=2000, ge=1)
    debugger_legacy_copy_pause_s: float = Field(default=0.05, ge=0)
    # How long a replay of a sync request may run.
    debugger_replay_timeout_s: float = Field(default=30.0, gt=0)
    # A source's request replayed: the work its routes' filters may cost (shared/filters.py).
    debugger_replay_filter_budget: int = Field(default=1_000_000, ge=1_000)
    # Bulk replay jobs. Replays go one by one through the sync run path, so these bound
    # what a job can take from live webhooks: replays awaiting their outcome at once
    # (per debugger process, all jobs together), and replays started a second per job.
    debugger_replay_in_flight: int = Field(default=4, ge=1)
    debugger_replay_rate: float = Field(default=50.0, gt=0)
    # Items settled per transaction (the job's progress moves by this many at most).
    debugger_replay_chunk: int = Field(default=100, ge=1)
    # Requests a job may select at most (a larger filter is refused: narrow it).
    debugger_replay_max_requests: int = Field(default=100_000, ge=1)
    # A job's lease: renewed by its worker every third of it; a job whose lease lapsed
    # (its debugger died) is taken over by any replica, which looks for running jobs
    # every `poll_s`, and at once after a job is created on it.
    debugger_replay_lease_s: float = Field(default=30.0, gt=0)
    debugger_replay_poll_s: float = Field(default=5.0, gt=0)
    # Jobs one debugger process works at once, one per workspace (replay_jobs.py).
    debugger_replay_max_jobs: int = Field(default=4, ge=1)
    # Round robin when more workspaces have jobs than a process has places: while
    # another workspace's job waits, a job worked this long hands its place over at
    # once (its replays in flight settled) and goes to the back.
    debugger_replay_slice_s: float = Field(default=30.0, gt=0)
    # Secret headers and query parameters are stored as "[redacted]": the list of
    # shared/redaction.py (the one the runner's http step uses too) plus these names.
    # Authorization never reaches the debugger.
    debugger_redact_headers: list[str] = Field(default_factory=list)
    debugger_redact_query: list[str] = Field(default_factory=list)
    # Alerts (alerts.py): besides these, the fields of `_AlertDelivery`
    # (shared/delivery.py, `DeliverySettings`): FLOWHOOKS_DEBUGGER_ALERT_ALLOW_NETWORKS,
    # _TIMEOUT_S, _CONNECT_TIMEOUT_S, _FIRST_BYTE_TIMEOUT_S, _PER_DESTINATION (notices
    # beyond it are put back for 2 s, their attempt not counted), _SLOTS (keep it under
    # the concurrency), _BREAKER_FAILURES and _BREAKER_COOL_DOWN_S.
    # Flows seen in written batches are evaluated at most once per interval; every
    # alert is evaluated again each sweep interval (a backstop for triggers lost to a
    # restart or a full queue), by one replica at a time.
    debugger_alert_eval_interval_s: float = Field(default=1.0, gt=0)
    debugger_alert_sweep_interval_s: float = Field(default=60.0, gt=0)
    # Distinct flows waiting for evaluation; beyond it, the sweep catches up.
    debugger_alert_queue_size: int = Field(default=10_000, ge=1)
    # Delivery: attempts in all; the delay before the second attempt, doubling up to the
    # longest. How often the outbox is looked at.
    debugger_alert_max_attempts: int = Field(default=10, ge=1)
    debugger_alert_retry_delay_s: float = Field(default=5.0, gt=0)
    debugger_alert_max_retry_delay_s: float = Field(default=3600.0, gt=0)
    debugger_alert_poll_interval_s: float = Field(default=1.0, gt=0)
    # Notices claimed and in flight at once per process (claimed round robin across
    # workspaces).
    debugger_alert_concurrency: int = Field(default=32, ge=1)

    # The debugger page links a request's trace id to a tracing UI with this template,
    # `{trace_id}` replaced by the id (e.g. https://jaeger.example/trace/{trace_id});
    # unset: the id is shown as text.
    debugger_trace_url_template: str | None = None

    @field_validator("debugger_trace_url_template")
    @classmethod
    def _trace_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        # Only a web address: never `javascript:` or `data:` in the page's link.
        if not value.startswith(("https://", "http://")) or "{trace_id}" not in value:
            raise ValueError("an http(s) URL containing {trace_id}")
        return value

    def alert_delivery(self) -> DeliverySettings:
        return section(self, DeliverySettings, "debugger_alert_")

    def alert_retry(self) -> RetryPolicy:
        return retry_policy(
            self.debugger_alert_retry_delay_s,
            self.debugger_alert_max_retry_delay_s,
            self.debugger_alert_max_attempts,
        )
