"""Filters, sources and routes (issue 23) against the real services: `webhook.filter`
answers what it leaves out 200 `filtered` and records it without a run; a source fans
one request out to every matching route, each its own async run."""

import asyncio
import time
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey
from yarl import URL

from harness.client import Api, eventually
from harness.infra import _rabbitmqctl
from shared.messaging import naming

PENDING = ("queued", "running")
pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]

TAGS_ONLY = {
    "headers": {"x-github-event": {"$in": ["push", "release"]}},
    "body": {"ref": {"$startsWith": "refs/tags/"}},
}


async def record(api: Api, request_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        status, found = await api.debugger(f"/v1/requests/{request_id}")
        return dict(found) if status == 200 and found["outcome"] not in PENDING else None

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


DISCORD_KEY = SigningKey(b"\x07" * 32)


def discord_signed(body: bytes, key: SigningKey = DISCORD_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body).signature.hex()
    return {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": timestamp}


def flow_of(name: str, **webhook: Any) -> dict[str, Any]:
    return {"name": name, "status": "live", "webhook": webhook, "steps": []}


async def runner(
    api: Api, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    async with api.session.request(
        method,
        f"{api.system.url('runner')}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token or api.token}"},
    ) as answer:
        return answer.status, (await answer.json() if answer.status != 204 else None)


async def to_source(
    api: Api, source_id: str, token: str | None, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with api.session.post(
        f"{api.system.url('ingress')}/v1/source-webhook/{source_id}",
        data=body if isinstance(body, bytes) else orjson.dumps(body),
        headers={"Content-Type": "application/json", **sent},
    ) as answer:
        return answer.status, answer.headers, orjson.loads(await answer.read())


async def test_a_source_fans_out_to_every_matching_route(api: Api) -> None:
    pushes = await api.create_flow(flow_of("pushes"))
    positive = await api.create_flow(flow_of("positive n"))
    releases = await api.create_flow(flow_of("releases"))
    paused = await api.create_flow({**flow_of("paused"), "status": "paused"})
    status, source = await runner(api, "POST", "/v1/sources", {"name": "github app"})
    assert status == 201, source
    assert source["url"].endswith(f"/v1/source-webhook/{source['id']}")
    routes = {
        pushes["id"]: {"headers": {"x-github-event": "push"}},
        positive["id"]: {"body": {"n": {"$gt": 0}}},
        releases["id"]: {"headers": {"x-github-event": "release"}},
        paused["id"]: None,
    }
    for flow_id, filter_ in routes.items():
        status, route = await runner(
            api, "PUT", f"/v1/sources/{source['id']}/routes/{flow_id}", {"filter": filter_}
        )
        assert (status, route["flow_id"], route["filter"]) == (200, flow_id, filter_)
    status, listed = await runner(api, "GET", f"/v1/sources/{source['id']}/routes")
    assert [item["flow_id"] for item in listed["items"]] == list(routes)

    status, headers, answer = await to_source(
        api, source["id"], source["token"], {"n": 1}, {"X-GitHub-Event": "push"}
    )
    request_id = headers["X-Request-Id"]
    assert (status, answer) == (
        200,
        {
            "status": 200,
            "error": None,
            "message": "accepted",
            "data": {"request_id": request_id, "routed": 2},
        },
    )
    # Each run its own request, recorded with its flow, linked to the source request.
    runs = [await record(api, f"{request_id}-{n}") for n in (1, 2)]
    assert [(run["flow_id"], run["outcome"]) for run in runs] == [
        (pushes["id"], "succeeded"),
        (positive["id"], "succeeded"),
    ]
    assert [run["input"] for run in runs] == [{"n": 1}, {"n": 1}]
    assert {run["source_request_id"] for run in runs} == {request_id}
    # The source's request, with its links to the runs.
    routed = await record(api, request_id)
    assert (routed["outcome"], routed["flow_id"], routed["runs"]) == (
        "routed",
        source["id"],
        [f"{request_id}-1", f"{request_id}-2"],
    )
    assert "source_request_id" not in routed

    # Nothing matches (the paused flow would, but is skipped): 200 filtered.
    status, headers, answer = await to_source(
        api, source["id"], source["token"], {"n": 0}, {"X-GitHub-Event": "ping"}
    )
    assert (status, answer["message"], answer["data"]) == (
        200,
        "filtered",
        {"request_id": headers["X-Request-Id"], "routed": 0, "paused": 1},
    )

    filtered = await record(api, headers["X-Request-Id"])
    assert (filtered["outcome"], filtered["input"], "runs" in filtered) == (
        "filtered",
        {"n": 0},
        False,
    )
    # The source's requests are searchable like a flow's.
    status, found = await api.debugger(f"/v1/flows/{source['id']}/requests?outcome=routed")
    assert (status, [item["id"] for item in found["items"]]) == (200, [request_id])

    # A route removed is gone from every ingress at once (source.changed).
    status, _ = await runner(api, "DELETE", f"/v1/sources/{source['id']}/routes/{pushes['id']}")
    assert status == 204

    async def routed_once() -> bool | None:
        _, _, again = await to_source(
            api, source["id"], source["token"], {"n": 1}, {"X-GitHub-Event": "push"}
        )
        return True if again["data"]["routed"] == 1 else None

    await eventually(routed_once, timeout_s=5)
    # Replaying the first request routes it with today's routes: the push route is gone.
    async with api.session.post(
        f"{api.system.url('debugger')}/v1/requests/{request_id}/replay",
        headers={"Authorization": f"Bearer {api.token}"},
    ) as answer:
        replayed = await answer.json()
        assert answer.status == 200, replayed
    new_id = replayed["request_id"]
    assert (replayed["replay_of"], replayed["outcome"]) == (request_id, "routed")
    assert orjson.loads(replayed["response"]["body"])["data"] == {"request_id": new_id, "routed": 1}
    rerun = await record(api, f"{new_id}-1")
    assert (rerun["flow_id"], rerun["outcome"], rerun["source_request_id"]) == (
        positive["id"],
        "succeeded",
        new_id,
    )
    again = await record(api, new_id)
    assert (again["outcome"], again["replay_of"], again["runs"]) == (
        "routed",
        request_id,
        [f"{new_id}-1"],
    )
    # A pause reaches the source's routes too (the flow changed).
    await api.patch_flow(positive["id"], {"status": "paused"})

    async def none_routed() -> bool | None:
        _, _, again = await to_source(
            api, source["id"], source["token"], {"n": 1}, {"X-GitHub-Event": "push"}
        )
        return True if again["message"] == "filtered" else None

    await eventually(none_routed, timeout_s=5)


async def test_source_tokens_workspaces_and_bad_filters(api: Api) -> None:
    status, source = await runner(api, "POST", "/v1/sources", {"name": "tokens"})
    assert status == 201
    status, _, answer = await to_source(api, source["id"], "fhw_not-the-token", {})
    assert (status, answer["error"]) == (401, "unauthorized")
    status, _, answer = await to_source(api, source["id"], None, {})
    assert status == 401
    status, _, answer = await to_source(api, "0" * 32, source["token"], {})
    assert status == 404
    # Another workspace's flow cannot be routed; its caller cannot see the source.
    other_token = api.system.create_token("globex", "automation")
    status, other_flow = await runner(api, "POST", "/v1/flows", flow_of("globex's"), other_token)
    assert status == 201
    status, answer = await runner(
        api, "PUT", f"/v1/sources/{source['id']}/routes/{other_flow['id']}", {}
    )
    assert (status, answer["error"]) == (404, "not_found")
    status, answer = await runner(api, "GET", f"/v1/sources/{source['id']}", token=other_token)
    assert status == 404
    own = await api.create_flow(flow_of("own"))
    status, answer = await runner(
        api,
        "PUT",
        f"/v1/sources/{source['id']}/routes/{own['id']}",
        {"filter": {"body": {"$or": [{"a": {"$like": 1}}]}}},
    )
    assert (status, answer["error"], answer["data"]) == (
        400,
        "invalid_input",
        {"field": "filter.body.$or[0].a.$like"},
    )


async def test_a_signed_source_answers_its_handshake_and_dedups(api: Api) -> None:
    """Discord (Ed25519, a public key: no secrets key needed): its PING answered once for
    the source, events verified once and routed, a redelivery (the source's dedup key)
    answered with the first's id and not run again."""
    flow = await api.create_flow(flow_of("signed target"))
    public_key = bytes(DISCORD_KEY.verify_key).hex()
    status, source = await runner(
        api,
        "POST",
        "/v1/sources",
        {
            "name": "signed",
            "auth": {"mode": "discord", "public_key": public_key},
            "dedup": {"key": "json:/id"},
        },
    )
    assert status == 201, source
    assert (source["auth"]["mode"], source["dedup"]) == (
        "discord",
        {"key": "json:/id", "window_s": 86400},
    )
    status, _ = await runner(api, "PUT", f"/v1/sources/{source['id']}/routes/{flow['id']}", {})
    assert status == 200
    ping = b'{"type": 1}'
    status, _, answer = await to_source(api, source["id"], None, ping, discord_signed(ping))
    assert (status, answer) == (200, {"type": 1})

    body = b'{"type": 2, "id": "interaction-1"}'
    status, first_headers, first = await to_source(
        api, source["id"], None, body, discord_signed(body)
    )
    assert (status, first["data"]["routed"]) == (200, 1), first
    first_id = first_headers["X-Request-Id"]
    status, headers_again, again = await to_source(
        api, source["id"], None, body, discord_signed(body)
    )
    assert (status, again["data"]["request_id"]) == (200, first_id)
    assert headers_again["Idempotent-Replayed"] == "true"
    # Forged: 401, nothing routed.
    status, _, _ = await to_source(
        api, source["id"], None, body, discord_signed(body, SigningKey(b"\x08" * 32))
    )
    assert status == 401
    run = await record(api, f"{first_id}-1")
    assert (run["flow_id"], run["outcome"]) == (flow["id"], "succeeded")


async def test_source_crud_and_a_deleted_source_is_gone_from_the_ingress(api: Api) -> None:
    status, source = await runner(api, "POST", "/v1/sources", {"name": "crud"})
    assert status == 201
    assert (source["auth"], source["dedup"], source["version"]) == (None, None, 1)
    assert source["token"].startswith("fhw_")
    status, listed = await runner(api, "GET", "/v1/sources")
    assert status == 200 and source["id"] in [item["id"] for item in listed["items"]]
    status, patched = await runner(
        api,
        "PATCH",
        f"/v1/sources/{source['id']}",
        {"name": "renamed", "dedup": {"key": "header:x-id"}},
    )
    assert (status, patched["name"], patched["dedup"], patched["version"]) == (
        200,
        "renamed",
        {"key": "header:x-id", "window_s": 86400},
        2,
    )
    assert patched["token"] == source["token"]
    status, answer = await runner(api, "PATCH", f"/v1/sources/{source['id']}", {"colour": "red"})
    assert (status, answer["data"]) == (400, {"field": "colour"})
    status, _, _ = await to_source(api, source["id"], source["token"], {})
    assert status == 200  # no routes: filtered
    status, _ = await runner(api, "DELETE", f"/v1/sources/{source['id']}")
    assert status == 204
    status, _ = await runner(api, "GET", f"/v1/sources/{source['id']}")
    assert status == 404

    async def gone() -> bool | None:
        status, _, _ = await to_source(api, source["id"], source["token"], {})
        return True if status == 404 else None

    await eventually(gone, timeout_s=5)


async def test_a_source_request_the_broker_cannot_take_is_503_and_no_route_runs(
    api: Api,
) -> None:
    """A source's runs go to the broker in one confirmed message (all of them or none):
    with the async-runs queue refusing (full: `reject-publish` at a bound of 0; the
    runners stopped, since a quorum queue takes one message while it is empty), the
    sender gets 503 and none of the routes' runs is queued."""
    flows = [await api.create_flow(flow_of(name)) for name in ("first", "second")]
    status, source = await runner(api, "POST", "/v1/sources", {"name": "refused"})
    assert status == 201, source
    for flow in flows:
        status, _ = await runner(
            api, "PUT", f"/v1/sources/{source['id']}/routes/{flow['id']}", {"filter": None}
        )
        assert status == 200
    vhost = URL(api.system.amqp_url).path.lstrip("/")
    # Above the queue bounds policy (priority 0): only this one applies to the queue.
    full = orjson.dumps({"max-length": 0, "overflow": "reject-publish"}).decode()
    queue = "^" + naming.ASYNC_RUNS_QUEUE.replace(".", r"\.") + "$"
    policy = ("-p", vhost, "--priority", "9", "--apply-to", "queues", "source-full", queue)
    system = api.system
    for running in list(system.processes["runner"]):
        system.stop(running)
    await asyncio.to_thread(_rabbitmqctl, "set_policy", *policy, full)
    try:
        # The policy reaches the queue a moment after rabbitmqctl returns: sent until
        # refused (those taken before run as usual).
        for _ in range(100):
            status, headers, answer = await to_source(api, source["id"], source["token"], {})
            if status != 200:
                break
            await asyncio.sleep(0.05)
        assert (status, answer["status"], answer["error"]) == (503, 503, "unavailable"), answer
        assert headers["Retry-After"] == "5"
        refused = headers["X-Request-Id"]
    finally:
        await asyncio.to_thread(_rabbitmqctl, "clear_policy", "-p", vhost, "source-full")
        system.start("runner")
    # Taken again once the queue is: a later request's runs run, and the refused one's,
    # which would have been queued ahead of them, were not.
    status, headers, answer = await to_source(api, source["id"], source["token"], {})
    assert (status, answer["data"]["routed"]) == (200, 2)
    later = headers["X-Request-Id"]
    assert [(await record(api, f"{later}-{n}"))["outcome"] for n in (1, 2)] == ["succeeded"] * 2
    for n in (1, 2):
        assert (await api.debugger(f"/v1/requests/{refused}-{n}"))[0] == 404
