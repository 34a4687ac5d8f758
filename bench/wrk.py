"""`wrk` (Debian's package, C) as the closed-loop load generator, as in issue 29's
figures: it costs the shared cores a fraction of what the Python client does, so the
ceiling and the system are measured with more of the machine.

A Lua script per scenario sets the POST body and headers, counts answers by status (a
`response` hook) and prints one machine-readable line from `done`: requests, duration,
statuses, socket errors and latency percentiles. Only closed loops at a fixed
concurrency run here; an open loop (`rate`), a bounded count (`max_requests`), several
bodies, keys or collected ids stay with bench/loadgen.py."""

import json
import shutil
import string
import subprocess
import tempfile
from typing import Any

RESULT_PREFIX = "wrk-result "
# What only bench/loadgen.py can do.
PYTHON_ONLY = ("rate", "max_requests", "bodies", "key_count", "collect_ids")
THREADS = 2  # the machine's cores
LUA_PLAIN = frozenset(
    (string.ascii_letters + string.digits + " !#$%&'()*+,-./:;<=>?@[]^_`{|}~").encode()
)

DONE = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT_PREFIX{"requests": %d, "duration_us": %d, "statuses": {%s}, "socket_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
""".replace("RESULT_PREFIX", RESULT_PREFIX)


def binary() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False, timeout=10)
    return (done.stdout or done.stderr).split(" Copyright")[0].strip()


def suits(spec: dict[str, Any]) -> bool:
    """Whether wrk can run this load as bench/loadgen.py would."""
    return not any(key in spec for key in PYTHON_ONLY) and int(spec.get("concurrency", 50)) >= 1


def lua_string(text: str) -> str:
    """A Lua string literal of `text`'s UTF-8 bytes: anything but plain printable ASCII
    as a decimal escape, so no body or header can end the literal early."""
    return '"' + "".join(chr(b) if b in LUA_PLAIN else f"\\{b:03d}" for b in text.encode()) + '"'


def script(spec: dict[str, Any]) -> str:
    content_type = spec.get("content_type", "application/json")
    headers = {"Content-Type": content_type, **spec.get("headers", {})}
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(spec.get('body', '{}'))}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + DONE


def command(spec: dict[str, Any], script_path: str) -> list[str]:
    connections = int(spec.get("concurrency", 50))
    seconds = max(1, round(float(spec.get("seconds", 5))))
    return [
        "wrk",
        f"--threads={min(THREADS, connections)}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        # The I/O-bound scenarios queue for seconds; an answer is never given up on.
        "--timeout=60s",
        f"--script={script_path}",
        spec["url"],
    ]


def parse(stdout: str) -> dict[str, Any]:
    """bench/loadgen.py's result (without ids) from wrk's output and the `done` line."""
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise ValueError(f"no {RESULT_PREFIX.strip()} line in wrk's output: {stdout[-500:]!r}")
    found = json.loads(line[len(RESULT_PREFIX) :])
    seconds = found["duration_us"] / 1e6
    count = int(found["requests"])
    return {
        "count": count,
        "errors": int(found["socket_errors"]),
        "statuses": dict(sorted(found["statuses"].items())),
        "seconds": round(seconds, 2),
        "rps": round(count / seconds, 1) if seconds else 0.0,
        **{f"{q}_ms": round(found[f"{q}_us"] / 1000, 2) for q in ("p50", "p90", "p99", "max")},
        "generator": "wrk",
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    url: str = spec["url"]
    assert url.startswith(("http://127.", "http://localhost")), "loopback only"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="flowhooks-wrk-") as lua:
        lua.write(script(spec))
        lua.flush()
        done = subprocess.run(
            command(spec, lua.name),
            capture_output=True,
            text=True,
            timeout=float(spec.get("seconds", 5)) + 90,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return {**parse(done.stdout), "ids": []}
