"""A flow stored before a save rule existed (a 1xx status, a content type with a line
break) still runs through real worker processes: it fails with 500 `flow_error` naming
the field and the rule, never an answer that hangs the caller or splits the headers."""

import uuid

import orjson
import pytest

from harness.factories import webhook_request
from services.runner.worker_protocol import FlowSnapshot
from tests.integration.test_worker_pool import start_pool

pytestmark = pytest.mark.integration


def stored(response: dict[str, object]) -> FlowSnapshot:
    return FlowSnapshot(
        id=str(uuid.uuid4()),
        workspace_id="acme",
        version=1,
        definition={
            "name": "saved long ago",
            "status": "live",
            "webhook": {"ref_id": "web1", "response": response},
            "steps": [],
        },
    )


async def test_a_stored_flow_that_breaks_a_save_rule_fails_naming_it() -> None:
    pool = await start_pool()
    try:
        informational = await pool.run(
            webhook_request({}), stored({"status_code": 101, "body": "hi"}), 10
        )
        split = await pool.run(
            webhook_request({}),
            stored({"status_code": 200, "content_type": "text/plain\r\nX-Evil: 1"}),
            10,
        )
        fine = await pool.run(webhook_request({}), stored({"status_code": 202, "body": "ok"}), 10)
    finally:
        await pool.close()
    assert (informational.outcome, informational.status_code) == ("failed", 500)
    envelope = orjson.loads(informational.body)
    assert envelope["error"] == "flow_error"
    assert "webhook.response.status_code: must be a final status, 200 to 599" in envelope["message"]
    assert (split.outcome, split.status_code) == ("failed", 500)
    assert "webhook.response.content_type: no line breaks" in orjson.loads(split.body)["message"]
    assert (fine.outcome, fine.status_code, fine.body) == ("succeeded", 202, "ok")
