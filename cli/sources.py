"""`flowhooks sources list|show|apply -f|route|unroute`: sources and their routes through
the runner's API (contract: "Sources: one URL, many flows")."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.api_client import ApiClient, ApiError
from cli.commands import (
    FLOW_PAGE,
    UsageError,
    _more,
    _with_common,
    all_flows,
    cell,
    covers,
    emit_json,
    load_definition,
    short_time,
    table,
)

SOURCE_FIELDS = ("name", "auth", "dedup")


def sources_table(sources: list[dict[str, Any]]) -> str:
    return table(
        ("ID", "NAME", "AUTH", "VERSION", "UPDATED"),
        [
            (
                s["id"],
                s["name"],
                (s.get("auth") or {}).get("mode", "bearer"),
                s["version"],
                short_time(s.get("updated_at")),
            )
            for s in sources
        ],
    )


def source_text(source: dict[str, Any], routes: list[dict[str, Any]]) -> str:
    lines = [
        f"id:       {source['id']}",
        f"name:     {source['name']}",
        f"url:      {source['url']}",
        f"auth:     {(source.get('auth') or {}).get('mode', 'bearer')}",
        f"dedup:    {cell(source.get('dedup'))}",
        f"version:  {source['version']}",
        "routes:",
    ]
    lines += [f"  {route['flow_id']}  {cell(route.get('filter'))}" for route in routes] or [
        "  (none)"
    ]
    return "\n".join(lines)


async def all_sources(client: ApiClient) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(FLOW_PAGE), **({"cursor": cursor} if cursor else {})}
        page = await client.call("runner", "GET", "/v1/sources", params=params)
        sources += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return sources


async def sources_list(client: ApiClient, args: argparse.Namespace) -> None:
    params = {"limit": str(args.limit), **({"cursor": args.cursor} if args.cursor else {})}
    page = await client.call("runner", "GET", "/v1/sources", params=params)
    if args.json:
        emit_json(page)
        return
    print(sources_table(page["items"]))
    _more(page)


async def sources_show(client: ApiClient, args: argparse.Namespace) -> None:
    source = await client.call("runner", "GET", f"/v1/sources/{args.id}")
    routes = await client.call("runner", "GET", f"/v1/sources/{args.id}/routes")
    if args.json:
        emit_json({**source, "routes": routes["items"]})
        return
    print(source_text(source, routes["items"]))


async def _flow_ids(client: ApiClient, references: list[str]) -> dict[str, str]:
    """Each route's flow, named by id or by name (one flow of that name)."""
    flows = await all_flows(client)
    by_id = {flow["id"]: flow["id"] for flow in flows}
    resolved: dict[str, str] = {}
    for reference in references:
        if reference in by_id:
            resolved[reference] = reference
            continue
        named = [flow["id"] for flow in flows if flow["name"] == reference]
        if len(named) != 1:
            raise UsageError(
                f"route to {reference!r}: {len(named)} flows have that id or name (need one)"
            )
        resolved[reference] = named[0]
    return resolved


async def apply_source(client: ApiClient, document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Creates the source of that name, or changes the one there is (PATCH only when the
    file says something it does not); then, if the file lists `routes`, makes the
    source's routes exactly those (`flow`: an id or a name; `filter`)."""
    fields = {key: document[key] for key in SOURCE_FIELDS if key in document}
    same_name = [s for s in await all_sources(client) if s["name"] == document["name"]]
    if len(same_name) > 1:
        raise ApiError(409, "conflict", f"{len(same_name)} sources are named {document['name']!r}")
    if not same_name:
        action, source = "created", await client.call("runner", "POST", "/v1/sources", body=fields)
    elif covers(same_name[0], fields):
        action, source = "unchanged", same_name[0]
    else:
        path = f"/v1/sources/{same_name[0]['id']}"
        action, source = "updated", await client.call("runner", "PATCH", path, body=fields)
    if "routes" not in document:
        return action, source
    wanted = document["routes"] or []
    if not isinstance(wanted, list) or not all(isinstance(r, dict) and "flow" in r for r in wanted):
        raise UsageError("routes: a list of {flow: <id or name>, filter: {...}}")
    ids = await _flow_ids(client, [str(route["flow"]) for route in wanted])
    base = f"/v1/sources/{source['id']}/routes"
    current = {r["flow_id"]: r for r in (await client.call("runner", "GET", base))["items"]}
    changed = False
    for route in wanted:
        flow_id = ids[str(route["flow"])]
        filter_ = route.get("filter")
        if flow_id in current and current[flow_id].get("filter") == filter_:
            continue
        await client.call("runner", "PUT", f"{base}/{flow_id}", body={"filter": filter_})
        changed = True
    for flow_id in set(current) - set(ids.values()):
        await client.call("runner", "DELETE", f"{base}/{flow_id}")
        changed = True
    if changed and action == "unchanged":
        action = "updated"
    return action, source


async def sources_apply(client: ApiClient, args: argparse.Namespace) -> None:
    path: str = args.file
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    action, source = await apply_source(client, load_definition(path, text))
    if args.json:
        emit_json({"action": action, "source": source})
    else:
        print(f"{action} source {source['id']} ({source['name']!r}) {source['url']}")


def _filter_of(args: argparse.Namespace) -> Any:
    text = args.filter
    if args.filter_file:
        try:
            text = Path(args.filter_file).read_text()
        except OSError as exc:
            raise UsageError(f"{args.filter_file}: {exc.strerror or exc}") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the filter is not valid JSON: {exc}") from None


async def sources_route(client: ApiClient, args: argparse.Namespace) -> None:
    path = f"/v1/sources/{args.source_id}/routes/{args.flow_id}"
    route = await client.call("runner", "PUT", path, body={"filter": _filter_of(args)})
    emit_json(route) if args.json else print(f"routed source {args.source_id} to {args.flow_id}")


async def sources_unroute(client: ApiClient, args: argparse.Namespace) -> None:
    await client.call("runner", "DELETE", f"/v1/sources/{args.source_id}/routes/{args.flow_id}")
    if not args.json:
        print(f"source {args.source_id} no longer routes to {args.flow_id}")


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sources = sub.add_parser("sources", help="sources: one URL, many flows").add_subparsers(
        dest="sources_command", required=True
    )
    listing = _with_common(sources.add_parser("list", help="the workspace's sources"), sources_list)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--cursor")
    _with_common(
        sources.add_parser("show", help="one source and its routes"), sources_show
    ).add_argument("id")
    applying = _with_common(
        sources.add_parser(
            "apply",
            help="create or update a source (and its routes) from a YAML or JSON file",
            description="Finds the source by name. `routes: [{flow: <id or name>, filter:"
            " {...}}]`, when given, become the source's routes exactly.",
        ),
        sources_apply,
    )
    applying.add_argument("-f", "--file", required=True, help="YAML or JSON (.json); - for stdin")
    route = _with_common(
        sources.add_parser("route", help="route the source's requests to a flow"), sources_route
    )
    route.add_argument("source_id")
    route.add_argument("flow_id")
    route.add_argument("--filter", metavar="JSON", help="the route's filter (default: none)")
    route.add_argument("--filter-file", metavar="FILE", help="the route's filter, from a file")
    unroute = _with_common(
        sources.add_parser("unroute", help="stop routing the source's requests to a flow"),
        sources_unroute,
    )
    unroute.add_argument("source_id")
    unroute.add_argument("flow_id")
