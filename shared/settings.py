"""Settings shared by every service. Each service subclasses `ServiceSettings` once
(`services/<name>/settings.py`); every field comes from an environment variable
`FLOWHOOKS_<FIELD>` (e.g. `FLOWHOOKS_AMQP_URL`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWHOOKS_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/flowhooks"
    host: str = "127.0.0.1"
    log_level: str = "info"
    # Outgoing publishes wait at most this long for the broker's confirm.
    publish_timeout_s: float = Field(default=5.0, gt=0)
    # Default time an RPC caller waits for its answer.
    rpc_timeout_s: float = Field(default=5.0, gt=0)
    # Graceful shutdown: how long in-flight work may take after SIGTERM.
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    database_pool_max: int = Field(default=10, ge=1)
    # A client must send each request's headers within this time (slow senders).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    # Longest request line / single header line accepted (431/400 beyond).
    http_max_header_bytes: int = Field(default=8190, ge=1024)
