"""`python -m bench.compare [--base REV]`: what a change costs, before and after in one
run. The base revision (default: the commit before the worker pool, `HEAD` otherwise)
is checked out in a temporary git worktree; the ceiling, then the base system, then
this checkout's system are measured one after the other with the same load generator
(wrk when on PATH: bench/measure.py) and the same scenarios (a sequential sync round
trip, sync and async under load), each as a ratio to the ceiling of the same run, with
CPU per request per service (a service's CPU includes its child processes: the
runner's workers). Writes
`bench/results/compare-<date>.json` and `.md`. `--after REV` measures another revision
instead of this checkout (also from a worktree)."""

import argparse
import asyncio
import json
import subprocess
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.measure import (
    RESULTS,
    api_setup,
    default_generator,
    measure_ceiling,
    system_bench,
    webhook_load,
)
from harness.system import REPO

# The last commit whose runner ran flows in its own event loop.
BEFORE_WORKER_POOL = "793374c"


def measure_system(repo: Path, seconds: float, concurrency: int, warmup: float) -> dict[str, Any]:
    with system_bench(seconds, concurrency, repo=repo) as (bench, _):
        system = bench.system
        flows = asyncio.run(api_setup(system, system.create_token("bench", "automation")))
        target = partial(webhook_load, system.url("ingress"), flows)

        # bench/budget.py measured 1.4 against 0.55 ms a request without the warm-up.
        bench.warm_up(target("sync"), warmup)
        bench.measure(
            "sync_sequential_300", target("sync", concurrency=1, max_requests=300, seconds=60)
        )
        bench.measure("sync", target("sync"))
        bench.measure("async", target("async"))
    return bench.results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default=BEFORE_WORKER_POOL)
    parser.add_argument("--after", default=None, help="a revision instead of this checkout")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=8.0, help="unmeasured seconds first")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    after_label = args.after or "this checkout"
    results: dict[str, Any] = {"base": args.base, "after_revision": after_label}
    with tempfile.TemporaryDirectory(prefix="flowhooks-base-") as tmp:
        base, after = Path(tmp) / "base", Path(tmp) / "after"
        checkouts = [(base, args.base)] + ([(after, args.after)] if args.after else [])
        for path, revision in checkouts:
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(path), revision],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
        try:
            results["ceiling"] = measure_ceiling(
                args.seconds, args.concurrency, default_generator()
            )
            if set(results["ceiling"]["statuses"]) != {"200"}:
                raise SystemExit(
                    f"the ceiling did not answer 200: {results['ceiling']['statuses']}"
                )
            print(f"-- before ({args.base})", flush=True)
            results["before"] = measure_system(base, args.seconds, args.concurrency, args.warmup)
            print(f"-- after ({after_label})", flush=True)
            results["after"] = measure_system(
                after if args.after else REPO, args.seconds, args.concurrency, args.warmup
            )
        finally:
            for path, _ in checkouts:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False
                )
    ceiling_rps = results["ceiling"]["rps"]
    lines = [
        f"ceiling: {ceiling_rps} req/s; before = {args.base}, after = {after_label}",
        "",
        "| scenario | before req/s (ratio) | after req/s (ratio) | after/before "
        "| p50 ms before/after | p99 ms before/after | CPU ms/request before | after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in results["after"]:
        was, now = results["before"][name], results["after"][name]
        for result in (was, now):
            result["ratio_to_ceiling"] = round(result["rps"] / ceiling_rps, 3)
        lines.append(
            f"| {name} | {was['rps']} ({was['ratio_to_ceiling']}) "
            f"| {now['rps']} ({now['ratio_to_ceiling']}) "
            f"| {round(now['rps'] / max(was['rps'], 1e-9), 2)} "
            f"| {was['p50_ms']} / {now['p50_ms']} | {was['p99_ms']} / {now['p99_ms']} "
            f"| {was['cpu_ms_per_request']} | {now['cpu_ms_per_request']} |"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (RESULTS / f"compare-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"compare-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: bench/results/compare-{stamp}.json and .md")


if __name__ == "__main__":
    main()
