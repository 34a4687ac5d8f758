"""In-process cost of deflating a batched message (shared/messaging/encoding.py) and of
inflating it, with the sizes, for batches of flowhooks' own items (a StartRun, a
run.finished) at a few batch sizes and zlib levels.

    python -m bench.message_compression [--repeat 2000]
"""

import argparse
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from bench.debugger import finished, webhook_request
from shared.messaging import encoding
from shared.schemas.runs import StartRun


def per_call_us(work: Callable[[], object], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        work()
    return (time.perf_counter() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    flow_id = str(uuid.uuid4())
    at = datetime.now(UTC)
    requests = [webhook_request(flow_id, n, "async", at) for n in range(25)]
    kinds = {
        "StartRun": [
            StartRun(request=r, flow_version=1).model_dump_json().encode() for r in requests
        ],
        "run.finished": [finished(r).model_dump_json().encode() for r in requests],
    }
    print("kind          items  level  plain B  deflated B  ratio  deflate us  inflate us  us/item")
    for kind, encoded in kinds.items():
        for count in (1, 5, 12, 25):
            body = b'{"items":[' + b",".join(encoded[:count]) + b"]}"
            for level in (1, 6):
                deflated = zlib.compress(body, level)
                assert encoding.decode(deflated, encoding.DEFLATE) == body
                deflate_us = per_call_us(lambda b=body, lv=level: zlib.compress(b, lv), args.repeat)
                inflate_us = per_call_us(
                    lambda d=deflated: encoding.decode(d, encoding.DEFLATE), args.repeat
                )
                print(
                    f"{kind:13} {count:5} {level:6} {len(body):8} {len(deflated):11}"
                    f" {len(body) / len(deflated):6.1f} {deflate_us:11.1f} {inflate_us:11.1f}"
                    f" {(deflate_us + inflate_us) / count:8.2f}"
                )


if __name__ == "__main__":
    main()
