from pydantic import Field

from shared.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    auth_port: int = 8081
    # Token checks served at once by one auth process.
    auth_rpc_prefetch: int = Field(default=64, ge=1)
