"""Every exchange, queue and routing key used by flowhooks (an RPC's method name is in
its declaration, `contracts.py`).

Routing keys are `<entity>.<past-tense verb>`; RPC methods are `<service>.<verb>`.
"""

PREFIX = "flowhooks"

# The one topic exchange every event goes through.
EVENTS_EXCHANGE = f"{PREFIX}.events"

# Sync webhook runs: a queue of their own so that control RPCs are never stuck behind runs.
SYNC_RUNS_QUEUE = f"{PREFIX}.runner.sync-runs"
# Async webhook runs: durable work, apart from sync runs so a flood cannot starve them.
ASYNC_RUNS_QUEUE = f"{PREFIX}.runner.async-runs"
# Async runs parked while their workspace is at its share of the runner: a fixed TTL,
# then dead-lettered back into the async-runs queue (services/runner/runs.py).
ASYNC_RUNS_WAIT_QUEUE = f"{ASYNC_RUNS_QUEUE}.wait"

# Completion callbacks of async runs (services/runner/callbacks.py): the runner's work
# queue, and the wait ladder (fixed TTLs, dead-lettered back into it) between attempts.
CALLBACKS_QUEUE = f"{PREFIX}.runner.callbacks"

# Durable event queues, one per consuming service (replicas compete on it).
DEBUGGER_EVENTS_QUEUE = f"{PREFIX}.debugger.events"
AUTH_FLOW_CHANGES_QUEUE = f"{PREFIX}.auth.flow-changes"
# Callback attempts, apart from the request events (another table, another writer).
DEBUGGER_CALLBACKS_QUEUE = f"{PREFIX}.debugger.callbacks"

# Routing keys.
FLOW_CHANGED = "flow.changed"  # runner -> auth: a flow's access state (token hash, status)
FLOW_ACCESS_CHANGED = "flow_access.changed"  # auth -> every ingress: drop cached answers
ACCESS_TOKEN_REVOKED = "access_token.revoked"  # auth -> every ingress: drop cached answers
RUN_FINISHED = "run.finished"  # runner -> debugger: a request and its run's outcome
REQUEST_REJECTED = "request.rejected"  # ingress -> debugger: a body that could not be parsed
# ingress -> debugger: a request not run because its dedup key was seen (`duplicate`)
REQUEST_DEDUPLICATED = "request.deduplicated"
# ingress -> debugger: a provider's handshake the ingress answered itself (`handshake`)
REQUEST_HANDSHAKE = "request.handshake"
# ingress -> debugger: a request its filter (or every route of its source) left out
REQUEST_FILTERED = "request.filtered"
# ingress -> debugger: a source's request and the runs it was fanned out to (`routed`)
REQUEST_ROUTED = "request.routed"
# runner -> every ingress: a source, its routes or a routed flow changed (drop cached answers)
SOURCE_CHANGED = "source.changed"
REQUEST_QUEUED = "request.queued"  # ingress -> debugger: async requests queued (best effort)
RUN_STARTED = "run.started"  # runner -> debugger: async runs have started (best effort)
RUN_WAITING = "run.waiting"  # runner -> debugger: paced async runs wait for their turn
# Dead-lettered by the broker itself (body: the StartRun), for the debugger:
RUN_EXPIRED = "run.expired"  # a sync run nobody picked up before its caller gave up
RUN_DEAD_LETTERED = "run.dead_lettered"  # an async run that failed its delivery limit
CALLBACK_ATTEMPTED = "callback.attempted"  # runner -> debugger: one callback attempt
# runner -> one ingress (`runs.drained.<instance>`, `runs_drained_key`): its async runs
# that finished, so it stops counting them against their workspace's queued bound.
RUNS_DRAINED = "runs.drained"


def rpc_queue_name(service: str) -> str:
    """A service's RPC request queue (one per serving role; any number of replicas
    consume it): named after the service, so a new one adds no name here."""
    return f"{PREFIX}.rpc.{service}"


def reply_queue_name(service: str, instance: str) -> str:
    """A per-process reply queue: exclusive, deleted with its connection."""
    return f"{PREFIX}.reply.{service}.{instance}"


def cache_invalidation_queue_name(instance: str) -> str:
    """Each ingress replica's own queue of access changes."""
    return f"{PREFIX}.ingress.access-changes.{instance}"


def runs_drained_key(instance: str) -> str:
    """The routing key of `runs.drained` addressed to one ingress process (its own queue
    binds it)."""
    return f"{RUNS_DRAINED}.{instance}"


def tail_queue_name(instance: str) -> str:
    """Each debugger replica's own queue for its live tail (only once a tail is open)."""
    return f"{PREFIX}.debugger.tail.{instance}"


def callback_wait_queue_name(step_s: int) -> str:
    """The wait queue whose messages come back to the callbacks queue after `step_s`."""
    label = (
        f"{step_s // 3600}h"
        if step_s % 3600 == 0
        else (f"{step_s // 60}m" if step_s % 60 == 0 else f"{step_s}s")
    )
    return f"{CALLBACKS_QUEUE}.wait-{label}"
