from pydantic import Field

from shared.settings import DatabaseSettings


class AuthSettings(DatabaseSettings):
    auth_port: int = 8081
    # /metrics and the probes, kept off the public network (shared/web.py).
    auth_ops_port: int = Field(default=9081, ge=1, le=65535)

    @property
    def ops_port(self) -> int:
        return self.auth_ops_port

    # Token checks served at once by one auth process.
    auth_rpc_prefetch: int = Field(default=64, ge=1)
