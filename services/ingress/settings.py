from pydantic import Field

from shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    ingress_port: int = 8080
    # Bodies larger than this get 413 before they are read in full.
    ingress_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # The whole body must arrive within this time (slow senders get 408).
    ingress_body_timeout_s: float = Field(default=30.0, gt=0)
    # Per-flow rate limit in each replica (requests a second; 0 turns it off) and burst.
    ingress_flow_rate_limit_per_s: float = Field(default=1000.0, ge=0)
    ingress_flow_rate_burst: int = Field(default=2000, ge=1)
    # Tell the debugger about async requests as soon as they are queued (outcome
    # `queued`). Costs about a third of async throughput (docs/performance.md).
    ingress_record_queued: bool = True
    # Nesting bounds for JSON and XML bodies (400 beyond them).
    ingress_max_json_depth: int = Field(default=64, ge=1, le=1000)
    ingress_max_xml_depth: int = Field(default=64, ge=1, le=250)
    # Answers from auth kept per (flow, bearer); change events from auth evict them.
    ingress_access_cache_size: int = Field(default=10_000, ge=0)
    # Backstop only: correctness comes from the change events, not from this TTL.
    ingress_access_cache_ttl_s: float = Field(default=60.0, gt=0)
