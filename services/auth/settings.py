from pydantic import Field

from services import registry
from shared.settings import DatabaseSettings


class AuthSettings(DatabaseSettings):
    SERVICE = "auth"
    PORTS = registry.PORTS[SERVICE]

    # Token checks served at once by one auth process.
    auth_rpc_prefetch: int = Field(default=64, ge=1)
