from pydantic import Field

from shared.settings import DatabaseSettings


class DebuggerSettings(DatabaseSettings):
    debugger_port: int = 8083
    # /metrics and the probes, kept off the public network (shared/web.py).
    debugger_ops_port: int = Field(default=9083, ge=1, le=65535)

    @property
    def ops_port(self) -> int:
        return self.debugger_ops_port

    # Rows written per transaction (a batch also takes whatever arrived while the
    # previous one was being written), and the longest wait to fill a batch.
    debugger_batch_size: int = Field(default=1000, ge=1)
    debugger_batch_linger_ms: float = Field(default=20.0, ge=0)
    # Unacknowledged messages held at once; at least the batch size (twice it lets the
    # next batch fill while one is written). A message can carry many events.
    debugger_prefetch: int = Field(default=2000, ge=1)
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
    # How long a replay of a sync request may run.
    debugger_replay_timeout_s: float = Field(default=30.0, gt=0)
    # Secret headers and query parameters are stored as "[redacted]": the list of
    # shared/redaction.py (the one the runner's http step uses too) plus these names.
    # Authorization never reaches the debugger.
    debugger_redact_headers: list[str] = Field(default_factory=list)
    debugger_redact_query: list[str] = Field(default_factory=list)
