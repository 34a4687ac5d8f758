"""The bench's wrk driver and Node-RED flow (bench/wrk.py, bench/nodered.py): the
pure logic, without wrk or Node-RED installed."""

import json
from pathlib import Path

import pytest

from bench import nodered, wrk

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:40111/v1/flow-webhook/x
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.71ms    1.02ms  31.20ms   91.50%
    Req/Sec     9.25k   612.40    10.40k    71.25%
  147993 requests in 8.00s, 25.83MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  18493.11
Transfer/sec:      3.23MB
wrk-result {"requests": 147993, "duration_us": 8002519, "statuses": {"401": 3, "200": 147990}, \
"socket_errors": 2, "p50_us": 2432, "p90_us": 3512, "p99_us": 6104, "max_us": 31203}
"""


def test_wrk_result_is_read_from_the_done_line() -> None:
    assert wrk.parse(WRK_OUTPUT) == {
        "count": 147993,
        "errors": 2,
        "statuses": {"200": 147990, "401": 3},
        "seconds": 8.0,
        "rps": 18493.3,
        "p50_ms": 2.43,
        "p90_ms": 3.51,
        "p99_ms": 6.1,
        "max_ms": 31.2,
        "generator": "wrk",
    }


def test_wrk_output_without_the_done_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no wrk-result line"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_lua_strings_escape_whatever_could_end_them() -> None:
    assert wrk.lua_string('{"a": "b\\\\c"}\n<é>') == (
        '"{\\034a\\034: \\034b\\092\\092c\\034}\\010<\\195\\169>"'
    )


def test_the_script_sets_the_post_body_and_headers() -> None:
    spec = {"url": "http://127.0.0.1:1/x", "body": "{}", "headers": {"Authorization": "Bearer t"}}
    lines = wrk.script(spec).splitlines()
    assert lines[:4] == [
        'wrk.method = "POST"',
        'wrk.body = "{}"',
        'wrk.headers["Content-Type"] = "application/json"',
        'wrk.headers["Authorization"] = "Bearer t"',
    ]
    assert "function response(status, headers, body)" in lines
    assert any(line.lstrip().startswith("'wrk-result {") for line in lines)


def test_wrk_runs_closed_loops_only() -> None:
    closed = {"url": "http://127.0.0.1:1/x", "concurrency": 50}
    assert wrk.suits(closed)
    for python_only in ({"rate": 100}, {"max_requests": 500}, {"bodies": ["{}"]}):
        assert not wrk.suits({**closed, **python_only})
    assert wrk.command({**closed, "seconds": 8}, "/tmp/s.lua") == [
        "wrk",
        "--threads=2",
        "--connections=50",
        "--duration=8s",
        "--timeout=60s",
        "--script=/tmp/s.lua",
        "http://127.0.0.1:1/x",
    ]


def test_node_red_flow_is_http_in_then_function_then_http_response() -> None:
    flow = {node["id"]: node for node in nodered.flows('to"ken')}
    assert flow["bench-in"]["type"] == "http in"
    assert flow["bench-in"]["method"] == "post"
    assert flow["bench-in"]["url"] == "/v1/flow-webhook/node-red"
    assert flow["bench-in"]["wires"] == [["bench-answer"]]
    assert flow["bench-answer"]["type"] == "function"
    assert flow["bench-answer"]["wires"] == [["bench-out"]]
    assert flow["bench-out"]["type"] == "http response"
    code = flow["bench-answer"]["func"]
    # The token as a JavaScript string literal, quotes escaped.
    assert 'msg.req.headers.authorization !== "Bearer to\\"ken"' in code
    assert 'msg.payload = {valid: kind === "myResult" ? kind : false};' in code
    json.dumps(list(flow.values()))  # the flow file is plain JSON


def test_node_red_listens_on_loopback_without_its_editor() -> None:
    settings = nodered.settings(41234)
    assert '    uiHost: "127.0.0.1",\n' in settings
    assert "    uiPort: 41234,\n" in settings
    assert "    httpAdminRoot: false,\n" in settings


def test_node_red_is_found_where_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(nodered.ENV, str(tmp_path / "missing"))
    assert nodered.binary() is None
    found = tmp_path / "node-red"
    found.write_text("")
    monkeypatch.setenv(nodered.ENV, str(found))
    assert nodered.binary() == str(found)
