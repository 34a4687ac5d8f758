"""`webhook.ordering`, `webhook.concurrency`, `webhook.debounce`, `webhook.throttle` and
`webhook.delay_s`: how a flow's async runs are paced (contract, "Ordering and pacing").
The models are validated on save (definition.py); `Pacing.lane` says, for one request,
where it waits in `runner.paced_runs` (paced_runs.py).

Keys are read like dedup keys (shared/dedup_keys.py: `header:<name>`, `json:<pointer>`,
combined with ` + `), so a key stored is at most 200 characters or `sha256:<hex>`,
whatever size of value the spec reads. A request without the key: ordering and
throttle put it in the flow's keyless lane (one key, `""`: never less strict than
asked); debounce does not collapse it (it runs after `period_s`, alone)."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.dedup_keys import CombinedKeySpec, KeySpec, extract_key, parse_key_spec
from shared.schemas.runs import WebhookRequest

# Bounds on what one flow may ask for: runs at once per key or flow, starts per period,
# and how long a run may be held back.
MAX_CONCURRENCY = 1000
MAX_THROTTLE_LIMIT = 100_000
MAX_PERIOD_S = 86_400.0
MAX_DELAY_S = 7 * 86_400.0
# A burst without `max_wait_s` is held at most this many periods after its first request.
DEFAULT_MAX_WAIT_PERIODS = 10
# The lane of requests that carry no key.
KEYLESS = ""


class _Keyed(BaseModel):
    """A setting with a key spec, read as a dedup key is."""

    model_config = ConfigDict(extra="forbid")

    key: str

    @field_validator("key")
    @classmethod
    def _valid_key(cls, key: str) -> str:
        parse_key_spec(key)  # its ValueError is the field's error
        return key


class OrderingConfig(_Keyed):
    """Runs of one key start in arrival order, at most `concurrency` at once."""

    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)


class ConcurrencyConfig(BaseModel):
    """At most `limit` runs of the flow at once, across every runner replica."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1, le=MAX_CONCURRENCY)


class DebounceConfig(_Keyed):
    """A burst of one key becomes one run (the last request's), `period_s` after the last
    request, at most `max_wait_s` after the first."""

    period_s: float = Field(gt=0, le=MAX_PERIOD_S)
    max_wait_s: float | None = Field(default=None, gt=0, le=MAX_PERIOD_S * 7)

    @model_validator(mode="after")
    def _wait_covers_period(self) -> "DebounceConfig":
        if self.max_wait_s is not None and self.max_wait_s < self.period_s:
            raise ValueError("max_wait_s must be at least period_s")
        return self

    def max_wait(self) -> float:
        return self.max_wait_s or self.period_s * DEFAULT_MAX_WAIT_PERIODS


class ThrottleConfig(_Keyed):
    """At most `limit` runs of one key start per `period_s`; the rest wait."""

    limit: int = Field(ge=1, le=MAX_THROTTLE_LIMIT)
    period_s: float = Field(gt=0, le=MAX_PERIOD_S)


# The fields of `webhook` that pace a flow (definition.py refuses them on a sync flow).
PACING_FIELDS = ("ordering", "concurrency", "debounce", "throttle", "delay_s")


@dataclass(frozen=True)
class Lane:
    """Where one request waits: the columns of its `runner.paced_runs` row."""

    not_before: datetime
    order_key: str | None = None
    order_limit: int | None = None
    flow_limit: int | None = None
    throttle_key: str | None = None
    throttle_limit: int | None = None
    throttle_period_s: float | None = None
    debounce_key: str | None = None
    debounce_period_s: float | None = None
    debounce_max_s: float | None = None


@dataclass(frozen=True)
class Pacing:
    """A flow's pacing, its key specs parsed once (cached with the flow: runs.py)."""

    ordering: OrderingConfig | None = None
    ordering_key: KeySpec | CombinedKeySpec | None = None
    concurrency: ConcurrencyConfig | None = None
    debounce: DebounceConfig | None = None
    debounce_key: KeySpec | CombinedKeySpec | None = None
    throttle: ThrottleConfig | None = None
    throttle_key: KeySpec | CombinedKeySpec | None = None
    delay_s: float = 0.0

    @classmethod
    def of(cls, webhook: Any) -> "Pacing | None":
        """From a `WebhookTrigger`; None when the flow is not paced (its runs go to the
        pool at once, with no database round trip)."""
        ordering, debounce, throttle = webhook.ordering, webhook.debounce, webhook.throttle
        if not (ordering or webhook.concurrency or debounce or throttle or webhook.delay_s):
            return None
        return cls(
            ordering=ordering,
            ordering_key=parse_key_spec(ordering.key) if ordering else None,
            concurrency=webhook.concurrency,
            debounce=debounce,
            debounce_key=parse_key_spec(debounce.key) if debounce else None,
            throttle=throttle,
            throttle_key=parse_key_spec(throttle.key) if throttle else None,
            delay_s=webhook.delay_s or 0.0,
        )

    def lane(self, request: WebhookRequest) -> Lane:
        def key(spec: KeySpec | CombinedKeySpec | None) -> str | None:
            assert spec is not None
            return extract_key(spec, request.headers, request.input)

        lane = Lane(not_before=request.received_at + timedelta(seconds=self.delay_s))
        if self.ordering is not None:
            lane = _with(
                lane,
                order_key=key(self.ordering_key) or KEYLESS,
                order_limit=self.ordering.concurrency,
            )
        if self.concurrency is not None:
            lane = _with(lane, flow_limit=self.concurrency.limit)
        if self.throttle is not None:
            lane = _with(
                lane,
                throttle_key=key(self.throttle_key) or KEYLESS,
                throttle_limit=self.throttle.limit,
                throttle_period_s=self.throttle.period_s,
            )
        if self.debounce is not None:
            debounce_key = key(self.debounce_key)
            if debounce_key is None:
                # Not collapsed with anyone: its own period, then it runs.
                seconds = self.delay_s + self.debounce.period_s
                lane = _with(lane, not_before=request.received_at + timedelta(seconds=seconds))
            else:
                lane = _with(
                    lane,
                    debounce_key=debounce_key,
                    debounce_period_s=self.debounce.period_s,
                    debounce_max_s=self.debounce.max_wait(),
                )
        return lane


def _with(lane: Lane, **changes: Any) -> Lane:
    return Lane(**{**lane.__dict__, **changes})
