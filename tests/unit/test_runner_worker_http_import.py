"""A runner worker imports aiohttp only for flows with an `http` step, and does it before
the run is metered (services/runner/worker.py `_prepare_http`)."""

import subprocess
import sys

import pytest

from services.runner.worker import _has_http_step
from shared.outbound import AddressPolicy, OutboundHttp


def test_a_worker_starts_without_aiohttp() -> None:
    # A fresh interpreter: the test process has aiohttp loaded already.
    code = "import sys, services.runner.worker; print('aiohttp' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"steps": [{"type": "template", "ref_id": "a"}]}, False),
        ({"steps": [{"type": "http", "ref_id": "a"}]}, True),
        ({"steps": [{"type": "loop", "steps": [{"type": "http"}]}]}, True),
        ({"steps": [{"type": "condition", "then": [{"type": "fail"}]}]}, False),
        ({"on_error": [{"type": "http"}], "steps": []}, True),
    ],
)
def test_http_steps_are_found_at_any_depth(definition: dict[str, object], expected: bool) -> None:
    assert _has_http_step(definition) is expected


async def test_prepare_makes_the_session_and_close_ends_it() -> None:
    http = OutboundHttp(AddressPolicy([]))
    assert not http.prepared
    http.prepare()
    assert http.prepared
    await http.close()


async def test_no_session_is_made_after_close() -> None:
    http = OutboundHttp(AddressPolicy([]))
    await http.close()  # never used: nothing to close
    with pytest.raises(RuntimeError, match="Session is closed"):
        http.prepare()
