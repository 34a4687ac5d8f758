from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class RunnerSettings(ServiceSettings):
    runner_port: int = 8082
    # Secret from which every flow's webhook token is derived (HMAC); required, and the
    # same on every runner replica. Changing it changes every flow's token.
    runner_token_key: SecretStr
    # The ingress's public base URL, shown in `GET /v1/flows/{id}/webhook`.
    runner_webhook_base_url: str = "http://127.0.0.1:8080"
    # Upper bound for a flow's `webhook.timeout_s`.
    runner_max_timeout_s: float = Field(default=300.0, gt=0)
    # Runs in progress at once per runner process, per queue.
    runner_sync_prefetch: int = Field(default=32, ge=1)
    runner_async_prefetch: int = Field(default=16, ge=1)
    # Budget of one template render: the longest a hostile template can hold a runner's
    # event loop. Past it the step (or response) fails with a clear error.
    runner_render_timeout_s: float = Field(default=0.5, gt=0)
    # Largest rendered text, and largest string or list one operator may build.
    runner_max_output_chars: int = Field(default=1_000_000, ge=1000)
    # Networks `http` steps may reach although they are private, loopback or
    # link-local (JSON list of CIDRs, e.g. ["10.1.0.0/16"]). Empty: only public addresses.
    runner_http_allow_networks: list[str] = Field(default_factory=list)
    # Largest response body an `http` step reads.
    runner_http_max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Most items a `loop` step iterates over.
    runner_loop_max_items: int = Field(default=10_000, ge=1)
    # run.finished events are group-committed: while one message awaits its confirm, the
    # next collects up to this many runs.
    runner_event_batch: int = Field(default=200, ge=1)
    # Tell the debugger when an async run starts (outcome `running`).
    runner_record_started: bool = True
    # Compiled templates kept per process.
    runner_template_cache_size: int = Field(default=10_000, ge=1)
