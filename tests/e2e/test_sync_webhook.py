"""The sync webhook path end to end: four service processes, HTTP only."""

from typing import Any

import orjson
import pytest

from harness.client import Api, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

CONTRACT_RESPONSE = (
    '{"valid": {% if res1.value == "myResult" %}"{{ res1.value }}"{% else %}false{% endif %}}'
)
PAUSED = (
    b'{"status": 200, "error": "biz_logic", "message": "Flow status is `paused`. '
    b'Unpause to run this flow using a webhook", "data": null}'
)


def contract_flow(**webhook: Any) -> dict[str, Any]:
    return {
        "name": "Sync user to CRM",
        "status": "live",
        "webhook": {
            "ref_id": "web1",
            "response": {"status_code": 200, "body": CONTRACT_RESPONSE},
            **webhook,
        },
        "steps": [{"ref_id": "res1", "type": "template", "template": "{{ web1.kind }}"}],
    }


async def test_contract_response_template(api: Api) -> None:
    flow = await api.create_flow(contract_flow())
    hook = await api.webhook_info(flow["id"])
    assert hook["url"] == f"{api.system.url('ingress')}/v1/flow-webhook/{flow['id']}"
    assert len(hook["token"]) >= 50

    status, headers, body = await api.send(flow["id"], hook["token"], json={"kind": "myResult"})
    assert (status, body) == (200, b'{"valid": "myResult"}')
    assert headers["Content-Type"].startswith("application/json")
    assert len(headers["X-Request-Id"]) == 32

    status, _, body = await api.send(flow["id"], hook["token"], json={"kind": "other"})
    assert (status, body) == (200, b'{"valid": false}')


async def test_body_values_and_custom_status_code(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "company",
            "webhook": {
                "ref_id": "web1",
                "response": {"status_code": 202, "body": "company {{ web1.company_id }}"},
            },
            "steps": [],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, headers, body = await api.send(
        flow["id"], token, json={"company_id": 123456, "user_id": 789123}
    )
    assert (status, body) == (202, b"company 123456")
    assert headers["Content-Type"].startswith("text/plain")


async def test_default_response_without_configured_one(api: Api) -> None:
    flow = await api.create_flow(
        {
            "name": "default answer",
            "webhook": {"ref_id": "web1"},
            "steps": [{"ref_id": "total", "type": "template", "template": "{{ web1.a + web1.b }}"}],
        }
    )
    token = (await api.webhook_info(flow["id"]))["token"]
    status, _, body = await api.send(flow["id"], token, json={"a": 2, "b": 3})
    assert status == 200
    assert orjson.loads(body) == {
        "status": 200,
        "error": None,
        "message": "ok",
        "data": {"value": 5},
    }


async def test_personal_token_scopes_and_workspaces(api: Api) -> None:
    flow = await api.create_flow(contract_flow())
    runner_token = api.system.create_token("acme", "automation.webhook_run")
    status, _, body = await api.send(flow["id"], runner_token, json={"kind": "myResult"})
    assert (status, body) == (200, b'{"valid": "myResult"}')

    other = api.system.create_token("globex", "automation")
    status, headers, body = await api.send(flow["id"], other, json={})
    assert status == 404
    assert orjson.loads(body) == {
        "status": 404,
        "error": "not_found",
        "message": "no such flow",
        "data": None,
    }
    assert "X-Request-Id" in headers


async def test_unauthorized(api: Api) -> None:
    flow = await api.create_flow(contract_flow())
    for token in (None, "wrong-token", (await api.webhook_info(flow["id"]))["token"] + "x"):
        status, headers, body = await api.send(flow["id"], token, json={"kind": "myResult"})
        assert status == 401, token
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert headers["Content-Type"].startswith("application/json")
        envelope = orjson.loads(body)
        assert (envelope["status"], envelope["error"], envelope["data"]) == (
            401,
            "unauthorized",
            None,
        )
        assert "X-Request-Id" in headers
    # An unknown flow with a wrong token is 401 too: nothing is revealed about flows.
    status, _, _ = await api.send("00000000-0000-0000-0000-000000000000", "wrong", json={})
    assert status == 401


async def test_paused_flow_answers_biz_logic_and_is_not_stored(api: Api) -> None:
    flow = await api.create_flow(contract_flow())
    token = (await api.webhook_info(flow["id"]))["token"]
    await api.patch_flow(flow["id"], {"status": "paused"})

    async def paused_answer() -> bytes | None:
        status, headers, body = await api.send(flow["id"], token, json={"kind": "myResult"})
        if body != PAUSED:
            return None
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        return body

    await eventually(paused_answer, timeout_s=1.0)

    # Unpause; the next request is stored, the paused ones never were.
    await api.patch_flow(flow["id"], {"status": "live"})

    async def running_again() -> int | None:
        status, _, body = await api.send(flow["id"], token, json={"kind": "myResult"})
        return status if body == b'{"valid": "myResult"}' else None

    await eventually(running_again, timeout_s=1.0)

    async def stored() -> list[dict[str, Any]] | None:
        status, page = await api.debugger(f"/v1/flows/{flow['id']}/requests")
        assert status == 200
        return page["items"] or None

    items = await eventually(stored)
    assert len(items) == 1
    assert items[0]["outcome"] == "succeeded"


async def test_request_stored_in_debugger_without_authorization(api: Api) -> None:
    flow = await api.create_flow(contract_flow())
    token = (await api.webhook_info(flow["id"]))["token"]
    status, headers, _ = await api.send(
        flow["id"],
        token,
        json={"kind": "myResult"},
        headers={"X-Signature": "sig-1", "Cookie": "session=secret"},
    )
    assert status == 200
    request_id = headers["X-Request-Id"]

    async def detail() -> dict[str, Any] | None:
        status, record = await api.debugger(f"/v1/requests/{request_id}")
        return record if status == 200 else None

    record = await eventually(detail)
    assert record["id"] == request_id
    assert record["flow_id"] == flow["id"]
    assert record["method"] == "POST"
    assert record["outcome"] == "succeeded"
    assert record["input"] == {"kind": "myResult"}
    assert record["response"]["status_code"] == 200
    assert record["response"]["body"] == '{"valid": "myResult"}'
    assert record["headers"]["x-signature"] == "sig-1"
    assert record["headers"]["cookie"] == "[redacted]"
    assert "authorization" not in record["headers"]
    assert token not in orjson.dumps(record).decode()
    assert [step["ref_id"] for step in record["steps"]] == ["res1"]
    assert record["steps"][0]["output"] == {"value": "myResult"}

    # Another workspace sees nothing of it.
    other = api.system.create_token("initech", "automation")
    status, _ = await api.debugger(f"/v1/requests/{request_id}", token=other)
    assert status == 404
