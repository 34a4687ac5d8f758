"""bench/broker_work.py's reading of `rabbitmqctl eval`: the total, and the reductions
by process kind with a quorum queue named without its vhost."""

import pytest

from bench.broker_work import parse

ANSWER = """{700280,
 [{rabbit_channel,204263},
  {other,170570},
  {'flowhooks-test-f95ac2d368_flowhooks.debugger.events',7073},
  {'%2F_flowhooks.runner.async-runs',3260},
  {ra_log_wal,4595}]}
"""


def test_reductions_are_read_by_kind_with_quorum_queues_by_their_own_name() -> None:
    assert parse(ANSWER) == (
        700280,
        {
            "rabbit_channel": 204263,
            "other": 170570,
            "flowhooks.debugger.events": 7073,
            "flowhooks.runner.async-runs": 3260,
            "ra_log_wal": 4595,
        },
    )


def test_an_answer_without_a_total_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="rabbitmqctl eval answered: Error"):
        parse("Error: unable to perform an operation on node")
