"""What OpenTelemetry tracing costs (shared/tracing.py): CPU per sync webhook of every
service (the runner's workers included), with tracing off (no
OTEL_EXPORTER_OTLP_ENDPOINT), on at 1 % and at 100 % sampling
(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG`), reported as
ratios to "off" measured in the same run. Each variant gets a system of its own
(tracing is configured at start) and the same load: the load generator in its own
process, open loop at `--rate` requests a second for `--seconds` (the same rate for
all: batches, and so CPU per request, depend on the rate; a closed loop would give each
variant its own), loopback only. Spans go to an OTLP/HTTP sink in this process that
counts them without decoding.

    .venv/bin/python -m bench.tracing [--rate 60] [--seconds 20]
"""

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench.measure import RESULTS, SMALL_JSON, SYNC_FLOW, cpu_seconds, loadgen
from harness.otlp import otlp_receiver
from harness.system import System, running_system

# After the load: the debugger's last writes and the spans' last export (every 200 ms
# here) belong to the requests measured.
SETTLE_S = 1.5


async def sync_flow(system: System) -> tuple[str, str]:
    token = system.create_token("acme", "automation")
    headers = {"Authorization": f"Bearer {token}"}
    runner = system.url("runner")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{runner}/v1/flows", json=SYNC_FLOW, headers=headers) as r:
            flow = await r.json()
            assert r.status == 201, flow
        async with session.get(f"{runner}/v1/flows/{flow['id']}/webhook", headers=headers) as r:
            return flow["id"], (await r.json())["token"]


def measure(system: System, args: argparse.Namespace) -> dict[str, Any]:
    flow_id, token = asyncio.run(sync_flow(system))
    spec = {
        "url": f"{system.url('ingress')}/v1/flow-webhook/{flow_id}",
        "body": SMALL_JSON,
        "headers": {"Authorization": f"Bearer {token}"},
    }
    loadgen({**spec, "seconds": 2, "rate": args.rate})  # warm: flows cached, workers up
    pids = {s.name: s.process.pid for services in system.processes.values() for s in services}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = loadgen({**spec, "seconds": args.seconds, "rate": args.rate})
    time.sleep(SETTLE_S)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    count = max(1, result["statuses"].get("200", 0))
    per_service = {name: (after[name] - before[name]) * 1000 / count for name in pids}
    return {
        "requests_200": count,
        "rps": result["rps"],
        "p50_ms": result["p50_ms"],
        "cpu_ms_per_request": {k: round(v, 3) for k, v in per_service.items()},
        "cpu_ms_per_request_total": round(sum(per_service.values()), 3),
    }


def helpers_per_request(rounds: int) -> dict[str, float]:
    """The tracing helpers one sync webhook goes through (server span, hand-on, the
    batch send span, the runner's span, the worker's run and two steps, the debugger's
    recorded span), timed in this process: microseconds per request, off (the context
    carried, nothing recorded), on but not sampled (what 99 % of requests cost at 1 %),
    and sampled (spans exported to nowhere). Steady where the system figures above
    move with the machine's load."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from shared import tracing
    from shared.schemas.runs import WebhookRequest

    class Nowhere(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    request = WebhookRequest(
        request_id="r" * 32, flow_id="f", workspace_id="w", received_at=datetime.now(UTC),
        method="POST", path="/v1/flow-webhook/f", query={}, headers={"a": "b"},
        content_type="application/json", raw_body=SMALL_JSON, input={"kind": "x"},
    )  # fmt: skip
    sender = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    async def one() -> None:
        with tracing.span("POST /v1/flow-webhook/{flow_id}", kind=tracing.SERVER, parent={}):
            handed = tracing.handed_on(request)
            carried = tracing.carrier()
        # The batch's send span (shared/messaging/batching.py): none when off.
        if tracing.enabled():
            with tracing.span("publish", kind=tracing.PRODUCER, parent=carried):
                tracing.carrier()
        with tracing.processing("sync-runs", handed.trace):
            handed = tracing.handed_on(handed)
            with tracing.span("flowhooks.run", parent=handed.trace):
                await tracing.traced_step("a", "template", asyncio.sleep(0))
                await tracing.traced_step("b", "template", asyncio.sleep(0))
        tracing.recorded_span("store", tracing.traceparent_of(handed.trace), time.time_ns())

    async def timed() -> float:
        for _ in range(200):
            await one()
        started = time.process_time()
        for _ in range(rounds):
            await one()
        return (time.process_time() - started) * 1e6 / rounds

    figures = {"off": asyncio.run(timed())}
    for name, sampler in (("not sampled", ALWAYS_OFF), ("sampled", ALWAYS_ON)):
        provider = TracerProvider(sampler=ParentBased(sampler))
        provider.add_span_processor(BatchSpanProcessor(Nowhere(), max_queue_size=1_000_000))
        trace._TRACER_PROVIDER = provider  # a fresh provider per variant, in this process
        tracing.switch(True)
        figures[name] = asyncio.run(timed())
        provider.shutdown()
    tracing.switch(False)
    del sender
    return {name: round(value, 1) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5000, help="of the in-process timing")
    args = parser.parse_args()
    helpers = helpers_per_request(args.rounds)
    print(f"tracing helpers, CPU us per request in-process: {helpers}", flush=True)
    results: dict[str, Any] = {}
    with otlp_receiver(decoding=False) as sink:
        variants: list[tuple[str, dict[str, str]]] = [("off", {})]
        for name, ratio in (("1%", "0.01"), ("100%", "1.0")):
            variants.append(
                (
                    name,
                    {
                        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.base,
                        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                        "OTEL_TRACES_SAMPLER_ARG": ratio,
                        "OTEL_BSP_SCHEDULE_DELAY": "200",
                    },
                )
            )
        for name, env in variants:
            exported_before = sink.exports
            with running_system(
                FLOWHOOKS_LOG_LEVEL="warning", FLOWHOOKS_INGRESS_FLOW_RATE_LIMIT_PER_S="0", **env
            ) as system:
                result = measure(system, args)
            result["otlp_exports"] = sink.exports - exported_before
            results[name] = result
            print(
                f"tracing {name:5} {result['rps']:>8} req/s  p50 {result['p50_ms']:>6} ms"
                f"  CPU {result['cpu_ms_per_request_total']:>7} ms/request"
                f"  {result['cpu_ms_per_request']}",
                flush=True,
            )
    base = results["off"]["cpu_ms_per_request_total"]
    ratios = {name: round(r["cpu_ms_per_request_total"] / base, 3) for name, r in results.items()}
    print(f"CPU per request, ratio to off: {ratios}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (RESULTS / f"tracing-{stamp}.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "results": results,
                "ratios_to_off": ratios,
                "helpers_us_per_request": helpers,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
