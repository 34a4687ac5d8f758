"""Filters, sources and routes (issue 23) against the real services: `webhook.filter`
answers what it leaves out 200 `filtered` and records it without a run; a source fans
one request out to every matching route, each its own async run."""

from typing import Any

import orjson
import pytest

from harness.client import Api, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

TAGS_ONLY = {
    "headers": {"x-github-event": {"$in": ["push", "release"]}},
    "body": {"ref": {"$startsWith": "refs/tags/"}},
}


async def record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        return dict(found) if status == 200 and found["outcome"] != "queued" else None

    return await eventually(stored, timeout_s=20)


async def test_webhook_filter_answers_filtered_and_records_without_a_run(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "tags only",
            "status": "live",
            "webhook": {"filter": TAGS_ONLY, "response": {"status_code": 201, "body": "ran"}},
            "steps": [],
        }
    )
    assert flow["webhook"]["filter"] == TAGS_ONLY
    token = (await api.webhook_info(flow["id"]))["token"]
    tag = {"ref": "refs/tags/v1"}
    status, headers, body = await api.send(
        flow["id"], token, json=tag, headers={"X-GitHub-Event": "push"}
    )
    assert (status, body) == (201, b"ran")

    status, headers, body = await api.send(
        flow["id"], token, json={"ref": "refs/heads/main"}, headers={"X-GitHub-Event": "push"}
    )
    request_id = headers["X-Request-Id"]
    assert status == 200
    assert orjson.loads(body) == {
        "status": 200,
        "error": None,
        "message": "filtered",
        "data": {"request_id": request_id},
    }
    stored = await record(api, request_id)
    assert (stored["outcome"], stored["response"]["status_code"]) == ("filtered", 200)
    assert stored["steps"] == []
    assert stored["input"] == {"ref": "refs/heads/main"}
    # Searchable by its outcome.
    status, found = await api.debugger(f"/v1/flows/{flow['id']}/requests?outcome=filtered")
    assert status == 200
    assert [item["id"] for item in found["items"]] == [request_id]


async def test_a_filter_is_checked_on_save(api: Api) -> None:
    async with api.session.post(
        f"{api.system.url('runner')}/v1/flows",
        json={"name": "bad", "webhook": {"filter": {"body": {"ref": {"$regex": "x"}}}}},
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        assert answer.status == 400
        body = await answer.json()
    assert body["error"] == "invalid_input"
    assert body["data"] == {"field": "webhook.filter.body.ref.$regex"}
