from pydantic import Field

from shared.settings import ServiceSettings


class DebuggerSettings(ServiceSettings):
    debugger_port: int = 8083
    # Events written per transaction, and the longest wait to fill a batch.
    debugger_batch_size: int = Field(default=200, ge=1)
    debugger_batch_linger_ms: float = Field(default=20.0, ge=0)
    # Unacknowledged events held at once; at least the batch size.
    debugger_prefetch: int = Field(default=1000, ge=1)
    # Raw bodies are stored up to this many bytes (and marked truncated beyond).
    debugger_max_raw_body_bytes: int = Field(default=65_536, ge=0)
    # Retention: requests older than this, and beyond the newest N per flow, are deleted
    # by a periodic job in batches.
    debugger_retention_max_age_s: float = Field(default=30 * 86400, gt=0)
    debugger_retention_max_per_flow: int = Field(default=100_000, ge=1)
    debugger_retention_interval_s: float = Field(default=60.0, gt=0)
    debugger_retention_batch: int = Field(default=1000, ge=1)
    # How long a replay of a sync request may run.
    debugger_replay_timeout_s: float = Field(default=30.0, gt=0)
    # Header values replaced by "[redacted]" (authorization never reaches the debugger).
    debugger_redact_headers: list[str] = Field(
        default=["cookie", "set-cookie", "x-api-key", "x-auth-token", "proxy-authorization"]
    )
