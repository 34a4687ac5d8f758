"""What a runner tells one ingress about the async runs that ingress queued
(`runs.drained`, services/ingress/backlog.py): which of them finished, so that the
ingress stops counting them against their workspace's queued bounds."""

from pydantic import BaseModel


class RunsDrained(BaseModel):
    """runner -> the ingress process that queued these runs (`StartRun.origin`), batched
    every few hundred milliseconds and best effort: a lost report only leaves runs
    counted until they age out of the ingress's count."""

    request_ids: list[str]
