"""The batch counters the bench reads items per message from (shared/metrics.py)."""

from prometheus_client import CollectorRegistry, generate_latest

from shared.metrics import BatchCounters


def test_batch_counters_export_messages_and_items_by_hop() -> None:
    registry = CollectorRegistry()
    messages = {"run.finished": 2, "rpc.replies": 1}
    items = {"run.finished": 30, "rpc.replies": 4}
    registry.register(BatchCounters(lambda: (messages, items)))
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("flowhooks_broker_batch_")
    ]
    assert lines == [
        'flowhooks_broker_batch_messages_total{hop="rpc.replies"} 1.0',
        'flowhooks_broker_batch_messages_total{hop="run.finished"} 2.0',
        'flowhooks_broker_batch_items_total{hop="rpc.replies"} 4.0',
        'flowhooks_broker_batch_items_total{hop="run.finished"} 30.0',
    ]
