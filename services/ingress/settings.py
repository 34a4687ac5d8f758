import re

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from yarl import URL

from services import registry
from services.ingress.sns import DEFAULT_CERT_URL_PATTERN
from shared.settings import WebhookSecretsSettings


class IngressSettings(WebhookSecretsSettings):
    # A refused secrets key must not print (part of) itself in the error.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    SERVICE = "ingress"
    PORTS = registry.PORTS[SERVICE]

    # Bodies larger than this get 413 before they are read in full.
    ingress_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # The whole body must arrive within this time (slow senders get 408).
    ingress_body_timeout_s: float = Field(default=30.0, gt=0)
    # Per-flow rate limit in each replica (requests a second; 0 turns it off) and burst.
    ingress_flow_rate_limit_per_s: float = Field(default=1000.0, ge=0)
    ingress_flow_rate_burst: int = Field(default=2000, ge=1)
    # Failed signature checks of large bodies a flow may have in each replica: a second
    # (0 turns the budget off) and at once. While it is spent, an unauthenticated body
    # larger than `ingress_bad_signature_small_body_bytes` (or of unknown length) gets
    # 429 before it is read: a flood of forged bodies costs a read a second, not each.
    ingress_bad_signature_rate_per_s: float = Field(default=1.0, ge=0)
    ingress_bad_signature_burst: int = Field(default=10, ge=1)
    # Bodies up to this size are always read and checked (cheap), so a flood cannot lock
    # the real sender's usual deliveries out, and their failures do not spend the budget.
    ingress_bad_signature_small_body_bytes: int = Field(default=64 * 1024, ge=0)
    # Requests refused 401 by their signature that each replica records in the debugger
    # (outcome `rejected`), per flow: a second (0: none) and at once. Past it they are
    # only counted (`flowhooks_webhook_refusal_records_total{result="skipped"}`).
    ingress_refused_records_per_s: float = Field(default=5.0, ge=0)
    ingress_refused_records_burst: int = Field(default=20, ge=1)
    # Work one request's filters may cost (shared/filters.py: characters searched and list
    # elements compared); past it a filter does not match.
    ingress_filter_budget: int = Field(default=1_000_000, ge=1_000)
    # Sources (services/ingress/sources.py): cached answers of `runner.get_source`
    # (evicted by `source.changed`; the TTL is a backstop), and the bound of the one
    # message that carries a request's runs to every route (413 past it).
    ingress_source_cache_size: int = Field(default=10_000, ge=0)
    ingress_source_cache_ttl_s: float = Field(default=5.0, gt=0)
    ingress_source_max_message_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Sync duplicates of one flow that may wait at once for their first request (one
    # poller per key asks the runner for all of them); past it 429 with Retry-After.
    ingress_dedup_max_waiting: int = Field(default=1000, ge=1)
    # Tell the debugger about async requests as soon as they are queued (outcome
    # `queued`): batched with other requests' and never awaited, but one more event each.
    ingress_record_queued: bool = True
    # Nesting bounds for JSON and XML bodies (400 beyond them).
    ingress_max_json_depth: int = Field(default=64, ge=1, le=1000)
    ingress_max_xml_depth: int = Field(default=64, ge=1, le=250)
    # Bounds of one XML body, in the whole document (400 naming the bound beyond them):
    # elements, attributes, and characters of text (text and attribute values).
    ingress_max_xml_elements: int = Field(default=50_000, ge=1)
    ingress_max_xml_attributes: int = Field(default=50_000, ge=0)
    ingress_max_xml_text_chars: int = Field(default=10 * 1024 * 1024, ge=0)
    # Fields of one urlencoded body and parts of one multipart/form-data body (400 beyond).
    ingress_max_form_fields: int = Field(default=1000, ge=1)
    ingress_max_form_parts: int = Field(default=1000, ge=1)
    # Bodies larger than this are parsed on a worker thread, off the event loop, so that
    # parsing one large body does not hold up the other requests; smaller ones inline
    # (a thread hop costs more than parsing them). At most `ingress_parse_threads` large
    # bodies are parsed at once; more wait for a thread.
    ingress_parse_inline_max_bytes: int = Field(default=64 * 1024, ge=0)
    ingress_parse_threads: int = Field(default=2, ge=1)
    # Most webhook requests in one message to the runners (group commit: a message goes
    # at once when none is in flight; requests arriving meanwhile share the next).
    ingress_run_batch: int = Field(default=200, ge=1)
    # Answers from auth kept per (flow, bearer); change events from auth evict them.
    ingress_access_cache_size: int = Field(default=10_000, ge=0)
    # Backstop only: correctness comes from the change events, not from this TTL.
    ingress_access_cache_ttl_s: float = Field(default=60.0, gt=0)
    # What one workspace may have queued through this replica (async runs not finished
    # yet: their number, and the bytes of their bodies); past either, 429 with
    # Retry-After before anything is published (services/ingress/backlog.py). 0: off.
    ingress_workspace_queued_runs: int = Field(default=10_000, ge=0)
    ingress_workspace_queued_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # A queued run whose end no runner reported is no longer counted after this: a lost
    # report (a runner's crash, a broker reconnect) must not hold a workspace's budget.
    ingress_workspace_queued_max_age_s: float = Field(default=600.0, gt=0)
    # Sync requests of one workspace waiting for their answer at once in this replica;
    # past it 429 with Retry-After. 0: off.
    ingress_workspace_sync_requests: int = Field(default=500, ge=0)
    # The base URL senders use to reach this service (e.g. `https://hooks.example.com`):
    # the modes that sign the URL (twilio, square, hubspot) check it + the request's path
    # and query as received. Unset: those modes are answered 503 naming this setting.
    # The runner shows the webhook URL with it too (FLOWHOOKS_INGRESS_PUBLIC_URL there).
    ingress_public_url: str | None = None
    # Networks the ingress's own outgoing requests (a google-pubsub flow's JWKS, SNS's
    # certificates and SubscribeURLs) may reach
    # although they are private, loopback or link-local (JSON list of CIDRs, like
    # FLOWHOOKS_RUNNER_HTTP_ALLOW_NETWORKS). Empty: only public addresses.
    ingress_http_allow_networks: tuple[str, ...] = ()
    # JWKS documents (google-pubsub) kept, by URL, and for how long; a fetch's bounds (the
    # whole request, and the document's size); a failed fetch is remembered this long
    # (the flow's pushes are answered 503 meanwhile, at once).
    ingress_jwks_cache_size: int = Field(default=100, ge=1)
    ingress_jwks_ttl_s: float = Field(default=3600.0, gt=0)
    ingress_jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    ingress_jwks_max_bytes: int = Field(default=64 * 1024, ge=1024)
    ingress_jwks_failure_ttl_s: float = Field(default=5.0, ge=0)
    # AWS SNS (the `sns` mode): the certificate URLs (`SigningCertURL`) and SubscribeURLs
    # the ingress will fetch, a regular expression matched from the URL's start
    # (FLOWHOOKS_SNS_CERT_URL_PATTERN, as the contract names it; default: https on
    # sns.<region>.amazonaws.com). Certificates kept, by URL, and for how long; a fetch's
    # bounds (the whole request, the certificate's size); a failed fetch remembered this
    # long (answered at once meanwhile).
    sns_cert_url_pattern: str = DEFAULT_CERT_URL_PATTERN
    ingress_sns_cert_cache_size: int = Field(default=100, ge=1)
    ingress_sns_cert_ttl_s: float = Field(default=86_400.0, gt=0)
    ingress_sns_cert_timeout_s: float = Field(default=5.0, gt=0, le=60)
    ingress_sns_cert_max_bytes: int = Field(default=64 * 1024, ge=1024)
    ingress_sns_cert_failure_ttl_s: float = Field(default=5.0, ge=0)

    @field_validator("sns_cert_url_pattern")
    @classmethod
    def _cert_url_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("ingress_public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host or url.query_string:
            raise ValueError("must be an absolute http(s) base URL without a query")
        return value.rstrip("/")
