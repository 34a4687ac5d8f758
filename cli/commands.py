"""The API commands of `flowhooks` (flows, requests, tokens): each one calls the HTTP
APIs through `cli.api_client` with a personal access token (`--token-file`,
FLOWHOOKS_TOKEN_FILE, FLOWHOOKS_TOKEN, or `--token`, which warns: it shows in `ps`).
Human-readable tables by default; `--json` prints the API's JSON as it is.

Exit codes: 0 done, 1 the API (or the network) said no, 2 a usage error."""

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from cli.api_client import ApiClient, ApiError, ClientSettings
from shared.schemas.vocabulary import Outcome, Progress, RunMode

EXIT_API_ERROR = 1
EXIT_USAGE = 2
FLOW_PAGE = 200

Command = Callable[[ApiClient, argparse.Namespace], Awaitable[None]]

# What `requests list` filters on: the vocabulary's own values (the debugger refuses any
# other), in the order a request goes through them.
OUTCOME_CHOICES = tuple(str(value) for value in (*Progress, *Outcome))
MODE_CHOICES = tuple(str(mode) for mode in RunMode)
# The values behind `--outcome O --mode M` in the `flowhooks` help.
FILTER_VALUES_HELP = (
    f"  O (--outcome): {', '.join(OUTCOME_CHOICES)}\n  M (--mode): {', '.join(MODE_CHOICES)}\n"
)


class UsageError(Exception):
    """A mistake in what the user gave (no token, an unreadable file): exit 2."""


# --- output ----------------------------------------------------------------------------


def emit_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out or sys.stdout)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def short_time(value: str | None) -> str:
    """`2026-11-29T13:49:46.123456+00:00` as `2026-11-29 13:49:46` (the APIs answer in
    UTC): a table stays narrow and the JSON output keeps the full value."""
    if not value:
        return "-"
    return value[:19].replace("T", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    texts = [[cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in texts)]) for i, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))

    return "\n".join(line(values).rstrip() for values in [list(headers), *texts])


def flows_table(flows: list[dict[str, Any]]) -> str:
    return table(
        ("ID", "NAME", "STATUS", "VERSION", "UPDATED"),
        [
            (f["id"], f["name"], f["status"], f["version"], short_time(f.get("updated_at")))
            for f in flows
        ],
    )


def flow_text(flow: dict[str, Any]) -> str:
    webhook = flow.get("webhook") or {}
    response = webhook.get("response") or {}
    lines = [
        f"id:       {flow['id']}",
        f"name:     {flow['name']}",
        f"status:   {flow['status']}",
        f"version:  {flow['version']}",
        f"created:  {short_time(flow.get('created_at'))}",
        f"updated:  {short_time(flow.get('updated_at'))}",
        f"webhook:  ref_id={webhook.get('ref_id')} async={cell(webhook.get('async', False))}"
        f" timeout_s={cell(webhook.get('timeout_s'))}"
        f" auth={cell((webhook.get('auth') or {}).get('mode', 'bearer'))}",
        f"response: {cell(response.get('status_code'))} {cell(response.get('body'))}",
        "steps:",
    ]
    steps = flow.get("steps") or []
    lines += [f"  {step.get('ref_id')}  {step.get('type')}" for step in steps] or ["  (none)"]
    return "\n".join(lines)


def requests_table(items: list[dict[str, Any]]) -> str:
    return table(
        ("ID", "RECEIVED", "METHOD", "MODE", "OUTCOME", "STATUS", "MS"),
        [request_row(item) for item in items],
    )


def request_row(item: dict[str, Any]) -> list[Any]:
    return [
        item["id"],
        short_time(item.get("received_at")),
        item.get("method"),
        item.get("mode"),
        item.get("outcome"),
        item.get("status_code"),
        item.get("duration_ms"),
    ]


def request_line(item: dict[str, Any]) -> str:
    """One tailed request on one line."""
    return "  ".join(cell(value) for value in request_row(item))


def request_text(record: dict[str, Any]) -> str:
    response = record.get("response") or {}
    lines = [
        f"id:        {record['id']}",
        f"flow:      {record.get('flow_id')}",
        f"received:  {short_time(record.get('received_at'))}",
        f"request:   {record.get('method')} {record.get('path')}"
        f" ({cell(record.get('content_type'))})",
        f"mode:      {record.get('mode')}",
        f"outcome:   {record.get('outcome')}",
    ]
    if record.get("replay_of"):
        lines.append(f"replay of: {record['replay_of']}")
    if record.get("trace_id"):
        lines.append(f"trace:     {cell(record['trace_id'])}")
    if record.get("error"):
        lines.append(f"error:     {cell(record['error'])}")
    lines += ["input:", _indented(json.dumps(record.get("input"), indent=2, ensure_ascii=False))]
    steps = record.get("steps") or []
    if steps:
        lines.append("steps:")
        for step in steps:
            outcome = "error: " + cell(step["error"]) if step.get("error") else "ok"
            lines.append(
                f"  {step.get('ref_id')}  {cell(step.get('type'))}  {outcome}"
                f"  {cell(step.get('duration_ms'))} ms"
            )
    lines.append(
        f"response:  {cell(response.get('status_code'))} ({cell(response.get('content_type'))})"
    )
    if response.get("body") is not None:
        lines.append(_indented(str(response["body"])))
    return "\n".join(lines)


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def tokens_table(tokens: list[dict[str, Any]]) -> str:
    return table(
        ("ID", "NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "REVOKED"),
        [
            (
                t["id"],
                t["name"],
                t.get("prefix"),
                t.get("scopes"),
                short_time(t.get("created_at")),
                short_time(t.get("expires_at")),
                short_time(t.get("revoked_at")),
            )
            for t in tokens
        ],
    )


# --- apply -------------------------------------------------------------------------------


def load_definition(path: str, text: str) -> dict[str, Any]:
    """A flow definition from YAML or JSON text (`.json` files as JSON: YAML 1.1 reads
    some JSON differently, e.g. tabs)."""
    try:
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
        ) from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: a flow definition must be a mapping")
    if not isinstance(document.get("name"), str) or not document["name"]:
        raise UsageError(f"{path}: the flow needs a `name` (apply finds the flow by it)")
    return document


def covers(stored: Any, wanted: Any) -> bool:
    """Whether the stored flow already says everything the file says: every field the
    file gives is equal in the stored flow (the API adds defaults the file may leave
    out, so the stored flow may hold more)."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and covers(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(covers(s, w) for s, w in zip(stored, wanted, strict=True))
        )
    # 30 and 30.0 are the same timeout; True and 1 are not the same value.
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return stored is wanted
    return bool(stored == wanted)


async def all_flows(client: ApiClient) -> list[dict[str, Any]]:
    flows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(FLOW_PAGE), **({"cursor": cursor} if cursor else {})}
        page = await client.call("runner", "GET", "/v1/flows", params=params)
        flows += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return flows


async def apply(client: ApiClient, definition: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Create the flow of that name, or bring the one there is up to date (PUT only when
    the file says something the stored flow does not: no new version for nothing)."""
    name = definition["name"]
    same_name = [flow for flow in await all_flows(client) if flow["name"] == name]
    if len(same_name) > 1:
        ids = ", ".join(flow["id"] for flow in same_name)
        raise ApiError(409, "conflict", f"{len(same_name)} flows are named {name!r} ({ids})")
    if not same_name:
        return "created", await client.call("runner", "POST", "/v1/flows", body=definition)
    flow = same_name[0]
    if covers(flow, definition):
        return "unchanged", flow
    updated = await client.call("runner", "PUT", f"/v1/flows/{flow['id']}", body=definition)
    return "updated", updated


# --- commands ----------------------------------------------------------------------------


async def flows_list(client: ApiClient, args: argparse.Namespace) -> None:
    params = {"limit": str(args.limit), **({"cursor": args.cursor} if args.cursor else {})}
    page = await client.call("runner", "GET", "/v1/flows", params=params)
    if args.json:
        emit_json(page)
        return
    print(flows_table(page["items"]))
    _more(page)


async def flows_show(client: ApiClient, args: argparse.Namespace) -> None:
    flow = await client.call("runner", "GET", f"/v1/flows/{args.id}")
    emit_json(flow) if args.json else print(flow_text(flow))


async def flows_apply(client: ApiClient, args: argparse.Namespace) -> None:
    path: str = args.file
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    action, flow = await apply(client, load_definition(path, text))
    if args.json:
        # One answer carries both: what apply did, and the flow as the API shows it.
        emit_json({"action": action, "flow": flow})
    else:
        print(f"{action} flow {flow['id']} ({flow['name']!r}, {flow['status']})")


def _set_status(status: str) -> Command:
    async def command(client: ApiClient, args: argparse.Namespace) -> None:
        path = f"/v1/flows/{args.id}"
        flow = await client.call("runner", "PATCH", path, body={"status": status})
        emit_json(flow) if args.json else print(f"flow {flow['id']} is {flow['status']}")

    return command


async def flows_rotate_token(client: ApiClient, args: argparse.Namespace) -> None:
    path = f"/v1/flows/{args.id}/webhook/rotate-token"
    info = await client.call("runner", "POST", path)
    if args.json:
        emit_json(info)
        return
    print("the flow's previous webhook token is refused from now on", file=sys.stderr)
    print(f"url:   {info['url']}\ntoken: {info['token']}")


async def requests_list(client: ApiClient, args: argparse.Namespace) -> None:
    params: list[tuple[str, str]] = [("limit", str(args.limit))]
    for name in ("outcome", "mode", "match", "since", "until", "cursor"):
        value = getattr(args, name)
        if value is not None:
            params.append((name, value))
    params += [("header", header) for header in args.header or []]
    page = await client.call("debugger", "GET", f"/v1/flows/{args.flow_id}/requests", params=params)
    if args.json:
        emit_json(page)
        return
    print(requests_table(page["items"]))
    _more(page)


async def requests_show(client: ApiClient, args: argparse.Namespace) -> None:
    record = await client.call("debugger", "GET", f"/v1/requests/{args.id}")
    emit_json(record) if args.json else print(request_text(record))


async def requests_tail(client: ApiClient, args: argparse.Namespace) -> None:
    """Until the stream ends, or Ctrl-C (SIGINT), which stops it at once."""
    reading = asyncio.ensure_future(_print_tail(client, args))
    with _stopped_by_sigint(reading) as stopped:
        try:
            await reading
        except asyncio.CancelledError:
            if not stopped():
                raise  # cancelled from outside, not by a signal


async def _print_tail(client: ApiClient, args: argparse.Namespace) -> None:
    def opened() -> None:
        print("tailing; Ctrl-C stops", file=sys.stderr, flush=True)

    path = f"/v1/flows/{args.flow_id}/requests/stream"
    async for event, data in client.events("debugger", path, on_open=opened):
        if args.json:
            print(json.dumps({"event": event, "data": data}, ensure_ascii=False), flush=True)
        elif event == "request" and isinstance(data, dict):
            print(request_line(data), flush=True)


@contextlib.contextmanager
def _stopped_by_sigint(task: "asyncio.Future[None]") -> Iterator[Callable[[], bool]]:
    """SIGINT cancels `task` (yields whether it did). Set on the loop whatever the
    process inherited: started with SIGINT ignored (a background job of a script, a
    pytest-xdist worker's child), Python and asyncio.run leave Ctrl-C ignored, and the
    tail read on until the server ended the stream, which it never does."""
    loop = asyncio.get_running_loop()
    received: list[bool] = []

    def stop() -> None:
        received.append(True)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (NotImplementedError, RuntimeError):  # no signals on this loop: Ctrl-C as before
        yield lambda: False
        return
    try:
        yield lambda: bool(received)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


# The debugger's chart windows (services/debugger/stats.py WINDOWS; it refuses others).
SERIES_WINDOWS = ("1h", "24h", "7d")


def series_text(series: dict[str, Any]) -> str:
    """`requests stats`: the window's totals, then one line per non-empty bucket."""
    latency = series.get("latency_ms") or {}
    by_outcome = series.get("by_outcome") or {}
    lines = [
        f"window:   {series['window']} ({short_time(series['since'])} to"
        f" {short_time(series['until'])} UTC, buckets of {series['bucket_s']} s)",
        f"requests: {series['total']}"
        + "".join(f"  {name} {count}" for name, count in sorted(by_outcome.items())),
        "latency:  "
        + (
            "  ".join(f"{name} {latency[name]} ms" for name in ("p50", "p95", "p99"))
            if latency
            else "-"
        )
        + (
            f"  (over a sample of {series['latency_sample']:.1%} of the requests)"
            if series.get("latency_sample", 1) < 1
            else ""
        ),
    ]
    rows = [
        (
            short_time(bucket["start"]),
            bucket["total"],
            bucket["per_minute"],
            *((bucket.get("latency_ms") or {}).get(name) for name in ("p50", "p95", "p99")),
            ",".join(f"{k}={v}" for k, v in sorted(bucket["by_outcome"].items())),
        )
        for bucket in series["buckets"]
        if bucket["total"]
    ]
    if rows:
        lines += ["", table(("START", "N", "PER_MIN", "P50", "P95", "P99", "OUTCOMES"), rows)]
    return "\n".join(lines)


async def requests_stats(client: ApiClient, args: argparse.Namespace) -> None:
    series = await client.call(
        "debugger",
        "GET",
        f"/v1/flows/{args.flow_id}/stats/series",
        params=[("window", args.window)],
    )
    emit_json(series) if args.json else print(series_text(series))


async def requests_replay(client: ApiClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {}
    if args.body_file:
        try:
            text = sys.stdin.read() if args.body_file == "-" else Path(args.body_file).read_text()
            body["body"] = json.loads(text)
        except OSError as exc:
            raise UsageError(f"{args.body_file}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{args.body_file}: not valid JSON: {exc}") from None
    if args.force:
        body["force"] = True
    answer = await client.call("debugger", "POST", f"/v1/requests/{args.id}/replay", body=body)
    if args.json:
        emit_json(answer)
        return
    response = answer.get("response") or {}
    print(
        f"replayed {answer['replay_of']} as {answer['request_id']}: {answer['outcome']},"
        f" {cell(response.get('status_code'))}"
    )
    if response.get("body") is not None:
        print(response["body"])


async def tokens_list(client: ApiClient, args: argparse.Namespace) -> None:
    page = await client.call("auth", "GET", "/v1/access-tokens")
    emit_json(page) if args.json else print(tokens_table(page["items"]))


async def tokens_create(client: ApiClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "scopes": args.scope}
    if args.expires_at:
        body["expires_at"] = args.expires_at
    token = await client.call("auth", "POST", "/v1/access-tokens", body=body)
    if args.json:
        emit_json(token)
        return
    print(
        f"created token {token['id']} ({', '.join(token['scopes'])});"
        " its secret is shown only this once:",
        file=sys.stderr,
    )
    # Alone on stdout: TOKEN=$(flowhooks tokens create ...) works.
    print(token["token"])


async def tokens_revoke(client: ApiClient, args: argparse.Namespace) -> None:
    await client.call("auth", "DELETE", f"/v1/access-tokens/{args.id}")
    # 204 has no JSON to print; with --json the exit code says it.
    if not args.json:
        print(f"revoked token {args.id}")


def _more(page: dict[str, Any]) -> None:
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)


# --- running -----------------------------------------------------------------------------


NO_TOKEN = "no token: give --token-file PATH, or set FLOWHOOKS_TOKEN_FILE or FLOWHOOKS_TOKEN"
TOKEN_ON_COMMAND_LINE = (
    "warning: a token given with --token shows in the process list (ps) and the shell's"
    " history; use --token-file PATH, FLOWHOOKS_TOKEN_FILE or FLOWHOOKS_TOKEN instead"
)


def read_token_file(path: Path, err: TextIO | None = None) -> str:
    """The token in the file's first line. A file that others may read is warned about."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {exc}") from None
    token = text.strip().split("\n", 1)[0].strip()
    if not token:
        raise UsageError(f"the token file {path} is empty")
    if mode & 0o077:
        print(
            f"warning: the token file {path} may be read by other users (chmod 600 it)",
            file=err or sys.stderr,
        )
    return token


def resolve_token(
    args: argparse.Namespace, settings: ClientSettings, err: TextIO | None = None
) -> str:
    """The command line's choice first, then the environment's; one source on each."""
    given = getattr(args, "token", None)
    given_file = getattr(args, "token_file", None)
    if given and given_file:
        raise UsageError("give --token or --token-file, not both")
    if given:
        print(TOKEN_ON_COMMAND_LINE, file=err or sys.stderr)
        return str(given)
    if given_file:
        return read_token_file(Path(given_file), err)
    token = settings.token.get_secret_value() if settings.token is not None else ""
    if token and settings.token_file is not None:
        raise UsageError("set FLOWHOOKS_TOKEN or FLOWHOOKS_TOKEN_FILE, not both")
    if settings.token_file is not None:
        return read_token_file(settings.token_file, err)
    if not token:
        raise UsageError(NO_TOKEN)
    return token


async def _run(command: Command, args: argparse.Namespace, settings: ClientSettings) -> None:
    async with ApiClient(settings, resolve_token(args, settings)) as client:
        await command(client, args)


def run_command(command: Command, args: argparse.Namespace) -> int:
    try:
        asyncio.run(_run(command, args, ClientSettings()))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"error: {exc.kind}: {exc.message}", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        # Ctrl-C ends `requests tail`: the normal way out, not a failure.
        return 0
    return 0


def _with_common(parser: argparse.ArgumentParser, command: Command) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding the personal access token (default: FLOWHOOKS_TOKEN_FILE,"
        " else FLOWHOOKS_TOKEN)",
    )
    parser.add_argument("--token", help="a personal access token; shows in ps: prefer --token-file")
    parser.set_defaults(func=lambda args: run_command(command, args))
    return parser


def register(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
    flows: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    """Adds the API commands: `flows ...` to the existing `flows` group, `requests` and
    `tokens` as groups of their own."""
    listing = _with_common(flows.add_parser("list", help="the workspace's flows"), flows_list)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor")
    _with_common(flows.add_parser("show", help="one flow"), flows_show).add_argument("id")
    applying = _with_common(
        flows.add_parser(
            "apply",
            help="create or update a flow from a YAML or JSON file, by its name",
            description="Creates the flow if the workspace has none of that name, else"
            " replaces it (PUT) when the file differs; prints created, updated or unchanged.",
        ),
        flows_apply,
    )
    applying.add_argument("-f", "--file", required=True, help="YAML or JSON (.json); - for stdin")
    for name, status in (("pause", "paused"), ("resume", "live")):
        _with_common(
            flows.add_parser(name, help=f"set the flow's status to {status}"), _set_status(status)
        ).add_argument("id")
    _with_common(
        flows.add_parser("rotate-token", help="a new webhook token for one flow"),
        flows_rotate_token,
    ).add_argument("id")

    requests = sub.add_parser("requests", help="a flow's requests (the debugger)").add_subparsers(
        dest="requests_command", required=True
    )
    listing = _with_common(
        requests.add_parser("list", help="a flow's requests, newest first"), requests_list
    )
    listing.add_argument("flow_id")
    listing.add_argument(
        "--outcome", metavar="O", choices=OUTCOME_CHOICES, help=", ".join(OUTCOME_CHOICES)
    )
    listing.add_argument("--mode", metavar="M", choices=MODE_CHOICES, help=", ".join(MODE_CHOICES))
    listing.add_argument("--match", metavar="JSON", help='input containing it, e.g. {"id": 7}')
    listing.add_argument("--header", action="append", metavar="NAME:VALUE")
    listing.add_argument("--since", metavar="TIME", help="ISO 8601 with zone")
    listing.add_argument("--until", metavar="TIME", help="ISO 8601 with zone")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor")
    _with_common(
        requests.add_parser("show", help="one request in full"), requests_show
    ).add_argument("id")
    _with_common(
        requests.add_parser("tail", help="a flow's new requests as they arrive, until Ctrl-C"),
        requests_tail,
    ).add_argument("flow_id")
    stats = _with_common(
        requests.add_parser(
            "stats", help="a flow's requests by outcome and p50/p95/p99 latency over time"
        ),
        requests_stats,
    )
    stats.add_argument("flow_id")
    stats.add_argument("--window", choices=SERIES_WINDOWS, default="1h")
    replay = _with_common(
        requests.add_parser("replay", help="run a stored request again"), requests_replay
    )
    replay.add_argument("id")
    replay.add_argument("--body-file", metavar="FILE", help="JSON input to replay instead")
    replay.add_argument("--force", action="store_true", help="replay even if the flow is paused")

    tokens = sub.add_parser("tokens", help="personal access tokens (the API)").add_subparsers(
        dest="tokens_command", required=True
    )
    _with_common(tokens.add_parser("list", help="the workspace's tokens"), tokens_list)
    create = _with_common(
        tokens.add_parser("create", help="a new token; its secret is printed once"),
        tokens_create,
    )
    create.add_argument("--scope", action="append", required=True)
    create.add_argument("--name", default="created with the flowhooks CLI")
    create.add_argument("--expires-at", metavar="TIME", help="ISO 8601 with zone")
    _with_common(tokens.add_parser("revoke", help="revoke a token"), tokens_revoke).add_argument(
        "id"
    )
