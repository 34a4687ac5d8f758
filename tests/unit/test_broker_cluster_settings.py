"""Several broker nodes (FLOWHOOKS_AMQP_URLS) and replicated queues
(FLOWHOOKS_BROKER_REPLICAS): how the settings read and what topology they give."""

import pytest

from shared.messaging import broker_setup, topology
from shared.messaging.connection import Broker
from shared.settings import ServiceSettings

NODES = "amqp://u:p@10.0.0.1:5672/, amqp://u:p@10.0.0.2:5672/,amqp://u:p@10.0.0.3:5672/"


def test_node_list_is_split_on_commas_and_replaces_the_single_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWHOOKS_AMQP_URL", "amqp://other@127.0.0.1:5672/")
    monkeypatch.setenv("FLOWHOOKS_AMQP_URLS", NODES)
    settings = ServiceSettings()
    assert settings.broker_urls == (
        "amqp://u:p@10.0.0.1:5672/",
        "amqp://u:p@10.0.0.2:5672/",
        "amqp://u:p@10.0.0.3:5672/",
    )
    assert settings.runner_user == "u"


def test_without_a_node_list_the_single_url_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWHOOKS_AMQP_URLS", raising=False)
    monkeypatch.setenv("FLOWHOOKS_AMQP_URL", "amqp://solo@127.0.0.1:5673/")
    settings = ServiceSettings()
    assert settings.broker_urls == ("amqp://solo@127.0.0.1:5673/",)
    assert settings.broker_replicas == 1


def test_broker_takes_one_address_or_several() -> None:
    assert Broker("amqp://a@h:1/", "x").urls == ["amqp://a@h:1/"]
    assert Broker(["amqp://a@h:1/", "amqp://a@h:2/"], "x").user == "a"
    with pytest.raises(ValueError):
        Broker([], "x")


def test_one_replica_keeps_the_single_node_topology() -> None:
    assert topology.durable_queues(1) == topology.DURABLE_QUEUES
    assert "x-queue-type" not in topology.AUTH_RPC.arguments


def test_replicas_make_every_durable_queue_a_quorum_queue_of_that_size() -> None:
    queues = topology.durable_queues(3)
    assert [q.name for q in queues] == [q.name for q in topology.DURABLE_QUEUES]
    for replicated, original in zip(queues, topology.DURABLE_QUEUES, strict=True):
        assert replicated.arguments == {
            **original.arguments,
            "x-queue-type": "quorum",
            "x-quorum-initial-group-size": 3,
        }
        assert replicated.bindings == original.bindings
    sync_runs = dict(zip([q.name for q in queues], queues, strict=True))[topology.SYNC_RUNS.name]
    # The expired-run dead-lettering of the sync queue survives the change of type.
    assert sync_runs.arguments["x-dead-letter-routing-key"] == "run.expired"


def test_broker_setup_declares_the_replicated_topology() -> None:
    document = broker_setup.definitions("v", broker_setup.user_names(), replicas=3)
    assert {q["arguments"]["x-quorum-initial-group-size"] for q in document["queues"]} == {3}
    single = broker_setup.definitions("v", broker_setup.user_names())
    assert {q["name"]: q["arguments"] for q in single["queues"]}[topology.AUTH_RPC.name] == {}
