"""`python -m bench.chaos --suite` as a test: broker nodes, the whole cluster and the
PostgreSQL primary are killed under async and sync load; nothing accepted may be lost or
stored twice (bench/chaos.py boots its own cluster, database pair and services). The
suite's run is `make chaos CHAOS_ARGS=--quick`'s faults with the shortest waits around
them, at half its rate (bench/chaos.py `SUITE`)."""

import re
import subprocess
import sys

import pytest

from harness.system import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

LEDGER = re.compile(
    r"accepted=(\d+) stored=\1 lost=0 duplicated=0 refused_503=\d+ recovery_s=[\d.]+"
)


def test_quick_chaos_loses_and_duplicates_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--suite"],
        cwd=REPO,
        capture_output=True,
        text=True,
        # Past the suite run's own bounds: deadline 200 + verification 45 + watchdog 95.
        timeout=360,
        check=False,
    )
    output = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, output
    assert lines, output
    match = LEDGER.fullmatch(lines[-1])
    assert match is not None, output
    assert int(match.group(1)) > 0, output
