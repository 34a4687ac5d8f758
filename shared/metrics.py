"""Metrics every service exports, on its own app's registry (`shared/web.py` `Ops`):
the process and Python collectors, RPC latency, queue depth and the broker's health.

Counters a component already keeps as plain integers (the broker's publish failures,
the runner pool's worker kills, the debugger's ingest counters) are exported by
`Counters`, read at scrape time: the hot path stays a bare `+= 1`.

Every label value comes from a closed set (declared RPC methods, durable queue names,
fixed outcome words): never a flow, workspace or request id."""

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector, CollectorRegistry

# Seconds; RPCs are milliseconds when well, up to the RPC timeout (5 s) when not.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# A counter with one label: its name, documentation, label name, the label's closed set
# of values, and what reads the counts by value.
Labelled = tuple[str, str, str, Sequence[str], Callable[[], Mapping[str, float]]]


class Counters(Collector):
    """Counters (and gauges) read from callables at scrape time. A `labelled` counter
    exports every value of its closed set, at 0 where the read has none (alert rules
    see a series from the start)."""

    def __init__(
        self,
        counters: Sequence[tuple[str, str, Callable[[], float]]] = (),
        gauges: Sequence[tuple[str, str, Callable[[], float]]] = (),
        labelled: Sequence[Labelled] = (),
    ) -> None:
        self.counters = counters
        self.gauges = gauges
        self.labelled = labelled

    def collect(self) -> Iterable[Metric]:
        for name, documentation, read in self.counters:
            yield CounterMetricFamily(name, documentation, value=read())
        for name, documentation, label, values, read_all in self.labelled:
            family = CounterMetricFamily(name, documentation, labels=[label])
            counts = read_all()
            for value in values:
                family.add_metric([value], counts.get(value, 0))
            yield family
        for name, documentation, read in self.gauges:
            yield GaugeMetricFamily(name, documentation, value=read())

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry refuses a duplicate at registration.
        for name, documentation, _ in self.counters:
            yield CounterMetricFamily(name, documentation)
        for name, documentation, label, _, _ in self.labelled:
            yield CounterMetricFamily(name, documentation, labels=[label])
        for name, documentation, _ in self.gauges:
            yield GaugeMetricFamily(name, documentation)


class BatchCounters(Collector):
    """`flowhooks_broker_batch_messages_total{hop}` and `..._batch_items_total{hop}`:
    batched messages this service sent and the items they held, by hop (a routing key
    or queue name of the code's own topology, or `rpc.replies`: a closed set). Their
    ratio is the mean items per message (bench/budget.py)."""

    def __init__(self, read: Callable[[], tuple[Mapping[str, int], Mapping[str, int]]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        messages, items = self.read()
        for name, counts in (("messages", messages), ("items", items)):
            family = CounterMetricFamily(
                f"flowhooks_broker_batch_{name}",
                f"Batched messages sent by this service ({name}), by hop",
                labels=["hop"],
            )
            for hop, count in sorted(counts.items()):
                family.add_metric([hop], count)
            yield family

    def describe(self) -> Iterable[Metric]:
        for name in ("messages", "items"):
            yield CounterMetricFamily(f"flowhooks_broker_batch_{name}", "", labels=["hop"])


class KernelMetrics:
    """Created by the service kernel for every service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # process_* (CPU, memory, file descriptors), python_info, python_gc_*.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.rpc_duration = Histogram(
            "flowhooks_rpc_duration_seconds",
            "RPC calls made by this service, from publish to reply (or timeout)",
            ["method"],
            registry=registry,
            buckets=RPC_BUCKETS,
        )
        self.queue_messages = Gauge(
            "flowhooks_queue_messages",
            "Messages ready in a durable queue this service consumes (passive declare)",
            ["queue"],
            registry=registry,
        )

    def watch_broker(
        self,
        publish_failures: Callable[[], float],
        connected: Callable[[], bool],
        batches: Callable[[], tuple[Mapping[str, int], Mapping[str, int]]] = lambda: ({}, {}),
    ) -> None:
        self.registry.register(BatchCounters(batches))
        self.registry.register(
            Counters(
                counters=[
                    (
                        "flowhooks_broker_publish_failures",
                        "Publishes the broker did not confirm (answered 503 or retried)",
                        publish_failures,
                    )
                ],
                gauges=[
                    (
                        "flowhooks_broker_connected",
                        "1 while the broker connection is up",
                        lambda: float(connected()),
                    )
                ],
            )
        )
