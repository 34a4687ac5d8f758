"""`python -m bench.broker_work`: where RabbitMQ's CPU goes, by Erlang process kind,
flowhooks beside the architecture alone (bench/pattern.py), sync and async (about 90 s).

Under each 50-connection closed loop, `rabbitmqctl eval` counts every Erlang process's
reductions (the VM's unit of work) over a 5-second window and sums them by what the
process is: a channel, a classic queue, the quorum queues' write-ahead log
(`ra_log_wal`), a quorum queue (by its name), the connection's reader and writer, ...
Divided by the requests answered in the window: reductions a request. Reductions count
work done, not time waited, so they move less with the machine's load than CPU
seconds do; but the broker serves every vhost of the machine, so run it when nothing
else uses the broker. Needs `rabbitmqctl` of the local broker. `--pattern-pads 0 800
2000`: the pattern alone with its items padded, how the broker's work grows with the
bytes of its messages."""

import argparse
import asyncio
import json
import re
import subprocess
import threading
import time
from typing import Any

from bench import pattern
from bench.measure import SMALL_JSON, api_setup, run_load, system_bench, webhook_load
from harness.infra import fresh_vhost

WINDOW_S = 5
# Reductions of every process over WINDOW_S, summed by its registered name, else its
# initial call's module, else its process_name's first element; the sum of all first.
REDUCTIONS_BY_KIND = """
Snap = fun() -> maps:from_list([{P, R} || P <- erlang:processes(),
    {reductions, R} <- [erlang:process_info(P, reductions)]]) end,
Kind = fun(P) -> case erlang:process_info(P, [registered_name, dictionary]) of
    [{registered_name, N}, _] when is_atom(N), N =/= [] -> N;
    [_, {dictionary, D}] -> case lists:keyfind('$initial_call', 1, D) of
        {_, {M, _, _}} -> M;
        _ -> case lists:keyfind(process_name, 1, D) of {_, {T, _}} -> T; _ -> other end
        end;
    _ -> gone end end,
A = Snap(), timer:sleep(WINDOW_MS), B = Snap(),
Sums = maps:fold(fun(P, R, Acc) -> Diff = R - maps:get(P, A, 0),
    maps:update_with(Kind(P), fun(V) -> V + Diff end, Diff, Acc) end, #{}, B),
{lists:sum(maps:values(Sums)), lists:reverse(lists:keysort(2, maps:to_list(Sums)))}.
"""
ENTRY = re.compile(r"\{'?([^,{}']+?)'?,\s*(\d+)\}")
QUORUM_QUEUE = re.compile(r"^[^_]+_((?:flowhooks|pattern)\..+)$")


def reductions_by_kind() -> tuple[int, dict[str, int]]:
    expression = REDUCTIONS_BY_KIND.replace("WINDOW_MS", str(WINDOW_S * 1000))
    out = subprocess.run(
        ["rabbitmqctl", "eval", expression], capture_output=True, text=True, check=True
    ).stdout
    return parse(out)


def parse(out: str) -> tuple[int, dict[str, int]]:
    """`rabbitmqctl eval`'s answer: the total and the reductions by process kind."""
    total = re.search(r"\{(\d+),", out)
    if total is None:
        raise RuntimeError(f"rabbitmqctl eval answered: {out[:300]}")
    # A quorum queue's process is named `<vhost>_<queue>`: keep the queue's own name.
    kinds: dict[str, int] = {}
    for name, count in ENTRY.findall(out[total.end() :]):
        queue = QUORUM_QUEUE.match(name)
        kind = queue.group(1) if queue else name
        kinds[kind] = kinds.get(kind, 0) + int(count)
    return int(total.group(1)), kinds


def under_load(load: dict[str, Any], warmup: float) -> dict[str, Any]:
    """Reductions a request while `load` runs (the window starts once it is going)."""
    run_load({"concurrency": 50, **load, "seconds": warmup}, "wrk")
    answered: dict[str, Any] = {}
    loading = threading.Thread(
        target=lambda: answered.update(
            run_load({"concurrency": 50, **load, "seconds": WINDOW_S + 3}, "wrk")
        )
    )
    loading.start()
    time.sleep(1.5)
    total, kinds = reductions_by_kind()
    loading.join()
    requests = answered["rps"] * WINDOW_S
    return {
        "rps": answered["rps"],
        "per_request": round(total / requests),
        "by_kind": {kind: round(count / requests) for kind, count in kinds.items()},
    }


def measure(warmup: float) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    with fresh_vhost() as amqp_url, pattern.running(amqp_url) as (_, url):
        for kind in ("sync", "async"):
            load = {"url": f"{url}/v1/flow-webhook/{kind}", "body": SMALL_JSON}
            found[f"pattern {kind}"] = under_load(load, warmup)
    with system_bench(WINDOW_S, 50, "wrk") as (bench, _):
        system = bench.system
        flows = asyncio.run(api_setup(system, system.create_token("bench", "automation")))
        for kind in ("sync", "async"):
            load = webhook_load(system.url("ingress"), flows, kind)
            found[f"flowhooks {kind}"] = under_load(load, warmup)
    return found


def measure_item_bytes(pads: list[int], warmup: float) -> dict[str, dict[str, Any]]:
    """The pattern alone with its body padded by each of `pads` bytes (the body travels
    in every hop's items): how the broker's work grows with the bytes it is given."""
    found: dict[str, dict[str, Any]] = {}
    with fresh_vhost() as amqp_url, pattern.running(amqp_url) as (_, url):
        for pad in pads:
            body = json.dumps({**json.loads(SMALL_JSON), "pad": "x" * pad})
            for kind in ("sync", "async"):
                load = {"url": f"{url}/v1/flow-webhook/{kind}", "body": body}
                found[f"pattern {kind}, body padded by {pad} bytes"] = under_load(load, warmup)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=float, default=4.0, help="unmeasured seconds first")
    parser.add_argument("--top", type=int, default=10, help="process kinds listed")
    parser.add_argument(
        "--pattern-pads",
        type=int,
        nargs="+",
        metavar="BYTES",
        help="instead: the pattern alone, its body padded by each of these (e.g. 0 800 2000)",
    )
    args = parser.parse_args()
    found = (
        measure_item_bytes(args.pattern_pads, args.warmup)
        if args.pattern_pads
        else measure(args.warmup)
    )
    for name, result in found.items():
        print(f"{name}: {result['rps']} req/s, {result['per_request']} reductions a request")
        ranked = sorted(result["by_kind"].items(), key=lambda item: -item[1])
        for kind, count in ranked[: args.top]:
            print(f"    {kind:40} {count:6}")


if __name__ == "__main__":
    main()
