"""Node-RED beside flowhooks in `make bench`, when installed (optional, like promtool):
the comparison a user would make, measured in the same run under the same load.

Found as FLOWHOOKS_BENCH_NODE_RED=/path/to/node-red or `node-red` on PATH (a local
install: `npm install --prefix /tmp/nodered node-red`, then
FLOWHOOKS_BENCH_NODE_RED=/tmp/nodered/node_modules/.bin/node-red). It runs with its
own user directory in a temporary folder, on a free loopback port, the editor and
admin API off, and one flow equivalent to the bench's sync flow: `http in` (POST) → a
function node that checks the bearer token and answers `{"valid": "<kind>"}` as the
flowhooks template does → `http response`."""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.measure import SMALL_JSON, measure_server
from harness.system import free_port

PATH = "/v1/flow-webhook/node-red"
ENV = "FLOWHOOKS_BENCH_NODE_RED"


def binary() -> str | None:
    configured = os.environ.get(ENV)
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("node-red")


def version(node_red: str) -> str:
    done = subprocess.run(
        [node_red, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return ", ".join(line.strip() for line in done.stdout.splitlines()[:2])  # Node-RED, Node.js


def function_code(token: str) -> str:
    """The function node's body: the sync flow's answer, behind the same bearer check."""
    expected = json.dumps(f"Bearer {token}")
    return (
        f"if (msg.req.headers.authorization !== {expected}) {{\n"
        "    msg.statusCode = 401;\n"
        '    msg.payload = {error: "unauthorized"};\n'
        "    return msg;\n"
        "}\n"
        "const kind = msg.payload && msg.payload.kind;\n"
        "msg.statusCode = 200;\n"
        'msg.payload = {valid: kind === "myResult" ? kind : false};\n'
        "return msg;\n"
    )


def flows(token: str) -> list[dict[str, Any]]:
    """The flow file: http in → function → http response, on one tab."""
    tab = "bench-tab"
    return [
        {"id": tab, "type": "tab", "label": "flowhooks bench"},
        {
            "id": "bench-in",
            "type": "http in",
            "z": tab,
            "name": "webhook",
            "url": PATH,
            "method": "post",
            "upload": False,
            "swaggerDoc": "",
            "wires": [["bench-answer"]],
        },
        {
            "id": "bench-answer",
            "type": "function",
            "z": tab,
            "name": "answer",
            "func": function_code(token),
            "outputs": 1,
            "wires": [["bench-out"]],
        },
        {
            "id": "bench-out",
            "type": "http response",
            "z": tab,
            "name": "",
            "statusCode": "",
            "headers": {},
            "wires": [],
        },
    ]


def settings(port: int) -> str:
    """settings.js: loopback only, no editor or admin API, quiet, nothing sent out."""
    return (
        "module.exports = {\n"
        '    uiHost: "127.0.0.1",\n'
        f"    uiPort: {port},\n"
        '    flowFile: "flows.json",\n'
        "    httpAdminRoot: false,\n"
        "    credentialSecret: false,\n"
        "    telemetry: { enabled: false },\n"
        "    diagnostics: { enabled: false },\n"
        '    logging: { console: { level: "warn", metrics: false, audit: false } },\n'
        "};\n"
    )


def answers(url: str, token: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
        url,
        data=b'{"kind": "myResult"}',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextmanager
def running(node_red: str, token: str, timeout_s: float = 60) -> Iterator[tuple[int, str]]:
    """Node-RED with the bench flow: its pid and webhook URL, until the block ends."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="flowhooks-node-red-") as user_dir:
        directory = Path(user_dir)
        (directory / "flows.json").write_text(json.dumps(flows(token)))
        (directory / "settings.js").write_text(settings(port))
        log = directory / "node-red.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [node_red, "--userDir", user_dir, "--settings", str(directory / "settings.js")],
                cwd=user_dir,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}{PATH}"
        try:
            deadline = time.monotonic() + timeout_s
            while not answers(url, token):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-500:]
                    raise RuntimeError(f"Node-RED did not answer on {url}: {tail}")
                time.sleep(0.2)
            yield process.pid, url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure(seconds: float, concurrency: int, generator: str, warmup: float) -> dict[str, Any]:
    """Node-RED under the closed loop, after `warmup` unmeasured seconds (its JIT);
    `{"installed": False}` where it is not, and the run goes on where it fails."""
    node_red = binary()
    if node_red is None:
        print(f"Node-RED: not installed (set {ENV} or put node-red on PATH)", flush=True)
        return {"installed": False}
    token = secrets.token_hex(16)
    load = {"url": "", "body": SMALL_JSON, "headers": {"Authorization": f"Bearer {token}"}}
    try:
        with running(node_red, token) as (pid, url):
            result = measure_server(
                "node_red", pid, {**load, "url": url}, seconds, concurrency, generator, warmup
            )
    except (RuntimeError, OSError) as error:
        print(f"Node-RED: not measured: {error}", flush=True)
        return {"installed": True, "binary": node_red, "error": str(error)}
    return {"installed": True, "binary": node_red, "version": version(node_red), **result}
