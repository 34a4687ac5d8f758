"""`flowhooks flows|requests|tokens ...` as real subprocesses (`python -m cli.main`)
against a running system: the same HTTP APIs a user reaches with curl, through the
command line's settings (FLOWHOOKS_*_URL, FLOWHOOKS_TOKEN)."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.client import Api, eventually
from harness.system import REPO, System

pytestmark = [pytest.mark.e2e, pytest.mark.shared_system]


@pytest.fixture(scope="module")
def cli_token(system: System) -> str:
    """Through `flowhooks token create` itself (other modules call the same code
    in-process): the command is part of what this module tests."""
    return system.create_token_with_cli("acme", "automation")


@pytest.fixture
async def api(system: System, cli_token: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(system, session, cli_token)


FLOW_YAML = """\
name: NAME
status: live
webhook:
  ref_id: web1
  response:
    status_code: 200
    # Folded: the line break is the space after the colon.
    body: >-
      {"valid":
      {% if res1.value == "myResult" %}"{{ res1.value }}"{% else %}false{% endif %}}
steps:
  - ref_id: res1
    type: template
    template: "{{ web1.FIELD }}"
"""


def flow_yaml(name: str, field: str) -> str:
    return FLOW_YAML.replace("NAME", name).replace("FIELD", field)


def cli(
    system: System, token: str | None, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOKS_")}
    env.update(
        FLOWHOOKS_RUNNER_URL=system.url("runner"),
        FLOWHOOKS_AUTH_URL=system.url("auth"),
        FLOWHOOKS_DEBUGGER_URL=system.url("debugger"),
        **extra_env,
    )
    if token is not None:
        env["FLOWHOOKS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done))


async def live_flow(api: Api, tmp_path: Path, name: str) -> tuple[str, str]:
    """A flow applied from YAML: its id and webhook token."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(flow_yaml(name, "kind"))
    flow = as_json(cli(api.system, api.token, "flows", "apply", "-f", str(path), "--json"))
    return flow["flow"]["id"], (await api.webhook_info(flow["flow"]["id"]))["token"]


def test_version(system: System) -> None:
    out = ok(cli(system, None, "--version"))
    assert out.strip() == f"flowhooks {importlib.metadata.version('flowhooks')}"


async def test_apply_is_idempotent_by_name_and_list_show(api: Api, tmp_path: Path) -> None:
    name = f"crm sync {uuid.uuid4().hex[:6]}"
    path = tmp_path / "flow.yaml"
    path.write_text(flow_yaml(name, "kind"))

    created = ok(cli(api.system, api.token, "flows", "apply", "-f", str(path)))
    assert created.startswith("created flow ")
    flow_id = created.split()[2]
    assert ok(cli(api.system, api.token, "flows", "apply", "-f", str(path))) == (
        f"unchanged flow {flow_id} ({name!r}, live)\n"
    )
    path.write_text(flow_yaml(name, "other"))
    assert ok(cli(api.system, api.token, "flows", "apply", "-f", str(path))) == (
        f"updated flow {flow_id} ({name!r}, live)\n"
    )
    again = as_json(cli(api.system, api.token, "flows", "apply", "-f", str(path), "--json"))
    assert again["action"] == "unchanged"
    assert again["flow"]["version"] == 2
    assert again["flow"]["steps"] == [
        {"ref_id": "res1", "type": "template", "template": "{{ web1.other }}"}
    ]

    # The same file as JSON is the same flow.
    json_path = tmp_path / "flow.json"
    json_path.write_text(json.dumps(again["flow"]))
    assert ok(cli(api.system, api.token, "flows", "apply", "-f", str(json_path))).startswith(
        "unchanged"
    )

    listed = as_json(cli(api.system, api.token, "flows", "list", "--json"))
    assert set(listed) == {"items", "next_cursor"}
    (mine,) = [flow for flow in listed["items"] if flow["id"] == flow_id]
    assert set(mine) == {
        "id",
        "workspace_id",
        "name",
        "status",
        "webhook",
        "steps",
        "version",
        "created_at",
        "updated_at",
    }
    assert (mine["name"], mine["status"], mine["version"]) == (name, "live", 2)
    human = ok(cli(api.system, api.token, "flows", "list"))
    assert human.splitlines()[0].split() == ["ID", "NAME", "STATUS", "VERSION", "UPDATED"]
    (line,) = [row for row in human.splitlines() if row.startswith(flow_id)]
    assert f"  {name}  " in line and "  live  " in line

    shown = as_json(cli(api.system, api.token, "flows", "show", flow_id, "--json"))
    assert shown == mine
    text = ok(cli(api.system, api.token, "flows", "show", flow_id))
    assert f"name:     {name}" in text.splitlines()
    assert "status:   live" in text.splitlines()
    assert "  res1  template" in text.splitlines()


async def test_pause_resume_and_rotate_token(api: Api, tmp_path: Path) -> None:
    flow_id, hook_token = await live_flow(api, tmp_path, f"pause {uuid.uuid4().hex[:6]}")
    body = {"json": {"kind": "myResult"}}

    assert ok(cli(api.system, api.token, "flows", "pause", flow_id)) == (
        f"flow {flow_id} is paused\n"
    )

    async def answered(expected: bytes) -> bool | None:
        status, _, answer = await api.send(flow_id, hook_token, **body)
        return True if (status, expected in answer) == (200, True) else None

    await eventually(lambda: answered(b'"biz_logic"'), timeout_s=3)
    resumed = as_json(cli(api.system, api.token, "flows", "resume", flow_id, "--json"))
    assert resumed["status"] == "live"
    await eventually(lambda: answered(b'{"valid": "myResult"}'), timeout_s=3)

    rotated = ok(cli(api.system, api.token, "flows", "rotate-token", flow_id))
    url_line, token_line = rotated.splitlines()
    assert url_line.startswith("url:") and url_line.endswith(f"/v1/flow-webhook/{flow_id}")
    new_token = token_line.split()[1]
    assert new_token != hook_token

    async def rotated_in() -> bool | None:
        old, _, _ = await api.send(flow_id, hook_token, **body)
        new, _, _ = await api.send(flow_id, new_token, **body)
        return True if (old, new) == (401, 200) else None

    await eventually(rotated_in, timeout_s=3)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_requests_list_show_replay_and_tail(api: Api, tmp_path: Path) -> None:
    flow_id, hook_token = await live_flow(api, tmp_path, f"requests {uuid.uuid4().hex[:6]}")
    status, headers, _ = await api.send(flow_id, hook_token, json={"kind": "myResult"})
    assert status == 200
    request_id = headers["X-Request-Id"]

    async def listed() -> dict[str, Any] | None:
        page = as_json(cli(api.system, api.token, "requests", "list", flow_id, "--json"))
        items = [item for item in page["items"] if item["outcome"] == "succeeded"]
        return page if items else None

    page = await eventually(listed, timeout_s=10)
    assert [item["id"] for item in page["items"]] == [request_id]
    assert set(page["items"][0]) == {
        "id",
        "flow_id",
        "received_at",
        "method",
        "mode",
        "outcome",
        "status_code",
        "duration_ms",
    }
    filtered = as_json(
        cli(
            api.system,
            api.token,
            *("requests", "list", flow_id, "--json", "--outcome", "failed", "--limit", "5"),
        )
    )
    assert filtered["items"] == []
    matched = as_json(
        cli(
            api.system,
            api.token,
            "requests",
            "list",
            flow_id,
            "--json",
            "--match",
            '{"kind": "myResult"}',
        )
    )
    assert [item["id"] for item in matched["items"]] == [request_id]
    human = ok(cli(api.system, api.token, "requests", "list", flow_id))
    (line,) = [row for row in human.splitlines() if row.startswith(request_id)]
    assert line.split()[3:7] == ["POST", "sync", "succeeded", "200"]

    record = as_json(cli(api.system, api.token, "requests", "show", request_id, "--json"))
    assert (record["id"], record["input"], record["outcome"]) == (
        request_id,
        {"kind": "myResult"},
        "succeeded",
    )
    assert record["response"]["status_code"] == 200
    text = ok(cli(api.system, api.token, "requests", "show", request_id)).splitlines()
    assert "outcome:   succeeded" in text
    assert '  {"valid": "myResult"}' in text

    replayed = ok(cli(api.system, api.token, "requests", "replay", request_id))
    first, body = replayed.splitlines()
    assert first.startswith(f"replayed {request_id} as ") and first.endswith(": succeeded, 200")
    assert body == '{"valid": "myResult"}'
    edited = tmp_path / "edited.json"
    edited.write_text('{"kind": "other"}')
    answer = as_json(
        cli(
            api.system,
            api.token,
            *("requests", "replay", request_id, "--body-file", str(edited), "--json"),
        )
    )
    assert answer["replay_of"] == request_id
    assert answer["response"]["body"] == '{"valid": false}'

    tail = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "requests", "tail", flow_id],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FLOWHOOKS_")},
            "FLOWHOOKS_DEBUGGER_URL": api.system.url("debugger"),
            "FLOWHOOKS_TOKEN": api.token,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Started with SIGINT ignored, as pytest-xdist's workers and a script's background
        # jobs start their children: Ctrl-C must still stop the tail at once.
        preexec_fn=ignore_sigint,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        # Said once the debugger answered: it subscribed before it did.
        assert tail.stderr.readline().startswith("tailing")
        status, headers, _ = await api.send(flow_id, hook_token, json={"kind": "x"})
        assert status == 200
        tailed = tail.stdout.readline().split()
        assert tailed[0] == headers["X-Request-Id"]
        assert tailed[3:5] == ["POST", "sync"]
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=10) == 0


def test_tokens_create_list_revoke(api: Api) -> None:
    done = cli(
        api.system,
        api.token,
        *("tokens", "create", "--scope", "automation.webhook_run", "--name", "crm sender"),
    )
    secret = ok(done).strip()
    assert "shown only this once" in done.stderr
    token_id = done.stderr.split()[2]

    listed = as_json(cli(api.system, api.token, "tokens", "list", "--json"))
    (mine,) = [token for token in listed["items"] if token["id"] == token_id]
    assert (mine["name"], mine["scopes"], mine["revoked_at"]) == (
        "crm sender",
        ["automation.webhook_run"],
        None,
    )
    assert secret.startswith(mine["prefix"])
    human = ok(cli(api.system, api.token, "tokens", "list"))
    (line,) = [row for row in human.splitlines() if row.startswith(token_id)]
    assert "crm sender" in line and "automation.webhook_run" in line

    created = as_json(
        cli(api.system, api.token, "tokens", "create", "--scope", "automation", "--json")
    )
    assert set(created) >= {"id", "token", "scopes", "name"}

    assert ok(cli(api.system, api.token, "tokens", "revoke", token_id)) == (
        f"revoked token {token_id}\n"
    )
    listed = as_json(cli(api.system, api.token, "tokens", "list", "--json"))
    (mine,) = [token for token in listed["items"] if token["id"] == token_id]
    assert mine["revoked_at"] is not None


def test_errors(api: Api, tmp_path: Path) -> None:
    missing = cli(api.system, api.token, "flows", "show", str(uuid.uuid4()))
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "error: not_found: no such flow\n"

    denied = cli(api.system, "fh_not_a_real_token", "tokens", "list")
    assert denied.returncode == 1
    assert denied.stderr.startswith("error: unauthorized: ")

    invalid = tmp_path / "bad.yaml"
    invalid.write_text("name: bad\nstatus: live\nwebhook: {ref_id: web1}\nsteps: [{ref_id: 1}]\n")
    refused = cli(api.system, api.token, "flows", "apply", "-f", str(invalid))
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: bad_request: ")

    no_token = cli(api.system, None, "flows", "list")
    assert (no_token.returncode, no_token.stderr) == (
        2,
        "error: no token: give --token-file PATH, or set FLOWHOOKS_TOKEN_FILE or FLOWHOOKS_TOKEN\n",
    )
    assert cli(api.system, api.token, "flows", "frobnicate").returncode == 2
    assert cli(api.system, api.token, "flows", "apply", "-f", str(tmp_path / "no")).returncode == 2


async def test_token_file_keeps_the_token_out_of_ps(api: Api, tmp_path: Path) -> None:
    """`--token-file` and FLOWHOOKS_TOKEN_FILE authenticate without the token on the
    command line; `--token` still works, with a warning that it shows in `ps`."""
    path = tmp_path / "token"
    path.write_text(api.token + "\n")
    path.chmod(0o600)
    by_option = cli(api.system, None, "tokens", "list", "--json", "--token-file", str(path))
    assert isinstance(as_json(by_option)["items"], list)
    assert by_option.stderr == ""
    by_env = cli(api.system, None, "tokens", "list", "--json", FLOWHOOKS_TOKEN_FILE=str(path))
    assert as_json(by_env) == as_json(by_option)
    visible = cli(api.system, None, "tokens", "list", "--json", "--token", api.token)
    assert as_json(visible) == as_json(by_option)
    assert visible.stderr.startswith("warning: a token given with --token shows in the process")
    wrong = tmp_path / "wrong"
    wrong.write_text("fh_not_a_real_token")
    wrong.chmod(0o600)
    denied = cli(api.system, None, "tokens", "list", "--token-file", str(wrong))
    assert denied.returncode == 1 and denied.stderr.startswith("error: unauthorized: ")
