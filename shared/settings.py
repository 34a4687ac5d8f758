"""Settings shared by every service. Each service subclasses `ServiceSettings` once
(`services/<name>/settings.py`); every field comes from an environment variable
`FLOWHOOKS_<FIELD>` (e.g. `FLOWHOOKS_AMQP_URL`). Services that own a database schema
subclass `DatabaseSettings` instead: the ingress never gets the database's credentials
(`flowhooks run` passes each service only the variables of its own fields)."""

import copy
from typing import Annotated, Any, ClassVar, NamedTuple, TypeVar

from pydantic import BaseModel, Field, SecretStr, create_model, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

from shared.messaging.encoding import DEFAULT_MIN_BYTES
from shared.messaging.topology import DEFAULT_QUEUE_BOUNDS, QueueBounds
from shared.secret_box import SecretBox


class Ports(NamedTuple):
    """A service's default ports: its own, and its ops port (`/metrics` and the probes,
    kept off the public network, shared/web.py)."""

    port: int
    ops_port: int


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads: `FLOWHOOKS_<FIELD>`, or the
    field's own name for it (a service's ports)."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    return {
        field.validation_alias.upper()
        if isinstance(field.validation_alias, str)
        else f"{prefix}{name}".upper()
        for name, field in settings.model_fields.items()
    }


class ServiceSettings(BaseSettings):
    # `populate_by_name`: `port=` in code, while the environment names the service.
    model_config = SettingsConfigDict(
        env_prefix="FLOWHOOKS_", extra="ignore", populate_by_name=True
    )

    # Each service's settings class sets its name and default ports; `port` and
    # `ops_port` then read FLOWHOOKS_<SERVICE>_PORT and FLOWHOOKS_<SERVICE>_OPS_PORT (the
    # names every deployment uses), so that one environment can hold every service's.
    SERVICE: ClassVar[str] = ""
    PORTS: ClassVar[Ports | None] = None
    port: int = Field(default=0, ge=0, le=65535)
    # None: no ops port (`/metrics` and the probes on the service's own port).
    ops_port: int | None = Field(default=None, ge=1, le=65535)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # The nodes of a RabbitMQ cluster, comma separated (same login on each): a service
    # connects to one and, when it is lost, moves to the next. Unset: FLOWHOOKS_AMQP_URL.
    amqp_urls: Annotated[tuple[str, ...], NoDecode] = ()
    # Quorum members of every durable queue; the same in every service. 1 (one node):
    # the RPC and sync-run queues are classic. On a cluster of 3 or more nodes, 3: every
    # durable queue is a quorum queue of 3 members, so losing a node loses no queue.
    broker_replicas: int = Field(default=1, ge=1)
    # Batched messages to quorum queues (async runs, the events: not RPCs nor sync runs)
    # whose body is at least this many bytes are sent deflated (shared/messaging/
    # encoding.py): the quorum write-ahead log's work grows with the bytes. 0: never.
    # Rolling upgrade: only once every consumer runs a version that inflates.
    broker_compress_min_bytes: int = Field(default=DEFAULT_MIN_BYTES, ge=0)
    # The runners' broker login: a `flow.changed` from any other user is dropped as forged
    # (by auth and the debugger). Unset: this service's own login, right when every
    # service shares one (development); with `flowhooks broker-setup`: flowhooks-runner.
    trusted_runner_user: str | None = None
    host: str = "127.0.0.1"
    log_level: str = "info"
    # Outgoing publishes wait at most this long for the broker's confirm.
    publish_timeout_s: float = Field(default=5.0, gt=0)
    # Default time an RPC caller waits for its answer.
    rpc_timeout_s: float = Field(default=5.0, gt=0)
    # Graceful shutdown: how long in-flight work may take after SIGTERM.
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    # A client must send each request's headers within this time (slow senders).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    # Longest request line / single header line accepted (431/400 beyond).
    http_max_header_bytes: int = Field(default=8190, ge=1024)
    # The whole body of a request to a management API (flows, tokens) must arrive within
    # this time (slow senders get 408). The ingress has its own, FLOWHOOKS_INGRESS_BODY_TIMEOUT_S.
    http_body_timeout_s: float = Field(default=30.0, gt=0)
    # How often each service reads the depth of the durable queues it consumes
    # (`flowhooks_queue_messages`): one passive declare per queue each time.
    queue_depth_interval_s: float = Field(default=15.0, gt=0)

    @field_validator("amqp_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @property
    def broker_urls(self) -> tuple[str, ...]:
        return self.amqp_urls or (self.amqp_url,)

    @property
    def runner_user(self) -> str:
        return self.trusted_runner_user or URL(self.broker_urls[0]).user or "guest"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        ports = cls.__dict__.get("PORTS")
        if ports is None:  # a base class (DatabaseSettings), not a service's
            return
        assert cls.SERVICE, f"{cls.__name__} declares PORTS but not SERVICE"
        for field, default in (("port", ports.port), ("ops_port", ports.ops_port)):
            cls.model_fields[field] = FieldInfo.merge_field_infos(
                cls.model_fields[field],
                default=default,
                validation_alias=f"FLOWHOOKS_{cls.SERVICE}_{field}".upper(),
            )
        cls.model_rebuild(force=True)


class QueueBoundsSettings(BaseSettings):
    """The backstops on every durable queue: a RabbitMQ policy (`topology.queue_bounds_policy`)
    that `flowhooks broker-setup` and `flowhooks run` apply, one value for every queue.
    Past either bound the broker refuses publishes to that queue, which every publisher
    answers 503 with Retry-After (the ingress's per-workspace bounds refuse one tenant
    long before). Size them so that the queues that can fill together (the async runs,
    their wait queue, the debugger's events) stay below the broker's memory high
    watermark; a change applies to the running queues when it is applied again."""

    model_config = SettingsConfigDict(env_prefix="FLOWHOOKS_", extra="ignore")

    # Messages ready in one durable queue.
    queue_max_length: int = Field(default=DEFAULT_QUEUE_BOUNDS.max_length, ge=1)
    # Bytes of the message bodies ready in one durable queue.
    queue_max_bytes: int = Field(default=DEFAULT_QUEUE_BOUNDS.max_bytes, ge=1)

    def bounds(self) -> QueueBounds:
        return QueueBounds(self.queue_max_length, self.queue_max_bytes)


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns a PostgreSQL schema (auth, runner, debugger) and of
    the commands that write to one (`flowhooks migrate`, `flowhooks token create`)."""

    database_url: str = "postgresql://postgres@127.0.0.1:5432/flowhooks"
    database_pool_max: int = Field(default=10, ge=1)


class WebhookSecretsSettings(ServiceSettings):
    """The key ring of flows' signing secrets (shared/secret_box.py): the runner seals
    with it, the ingress opens with it; no other service holds it."""

    # `current,previous`, each 32 characters at least; the same in runners and ingresses.
    # Unset: the runner refuses signing flows on save (400), the ingress answers them 503.
    webhook_secrets_key: SecretStr | None = None

    @field_validator("webhook_secrets_key")
    @classmethod
    def _secrets_key_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # empty (a deployment's unfilled secret): signing modes are off
        SecretBox(value.get_secret_value())  # its error names the rule, not the key
        return value


Section = TypeVar("Section", bound=BaseModel)


class _FlatFields(BaseSettings):
    # The same as every service's: a base class's config may win over another's.
    model_config = SettingsConfigDict(env_prefix="FLOWHOOKS_", extra="ignore")


def flat_fields(*sections: tuple[str, type[BaseModel]]) -> type[BaseSettings]:
    """A settings base class with the fields of each `(prefix, model)`, each named
    `prefix` + its name, with its type, default and bounds: flat, so that each is one
    variable, `FLOWHOOKS_<PREFIX><FIELD>` (the names the supervisor, the deploy files and
    the docs know), while the section is declared once, as a model, and read as one
    (`section`). A service's settings class derives from it; under TYPE_CHECKING from
    a plain class, since the fields are made here: code reads a section, not its
    flat fields."""
    fields: dict[str, Any] = {
        prefix + name: (field.annotation, copy.copy(field))
        for prefix, model in sections
        for name, field in model.model_fields.items()
    }
    made: type[BaseSettings] = create_model(
        "Fields_" + "_".join(model.__name__ for _, model in sections),
        __base__=_FlatFields,
        **fields,
    )
    return made


def section(settings: BaseSettings, model: type[Section], prefix: str) -> Section:
    """The fields `prefix` + name of `settings` as one `model` (see `flat_fields`)."""
    return model.model_validate(
        {name: getattr(settings, prefix + name) for name in model.model_fields}
    )
