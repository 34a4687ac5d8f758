"""The development supervisor behind `flowhooks run`: the four services as child
processes, each given only its own variables, a crashed one started again with
exponential backoff, all of them stopped together on Ctrl-C or SIGTERM.

The services are those of `services/registry.py`. Each service's variables are
derived from its settings class, so a new setting needs
no list kept by hand: `FLOWHOOKS_<FIELD>` for each of its fields (the general ones such
as `FLOWHOOKS_AMQP_URL` are fields of every class), no other `FLOWHOOKS_*` variable, and
no libpq `PG*` variable for a service without a database. Variables that are not
flowhooks' (PATH, locale, PYTHON*) pass through.
"""

import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from pydantic_settings import BaseSettings

from services import registry
from shared.retry import RetryPolicy
from shared.settings import DatabaseSettings, env_names


def settings_class(service: str) -> type[BaseSettings]:
    return registry.spec(service).settings


def service_env(environ: Mapping[str, str], settings: type[BaseSettings]) -> dict[str, str]:
    """The part of `environ` a service with these settings may see."""
    prefix = str(settings.model_config.get("env_prefix", "")).upper()
    # pydantic-settings matches variable names case-insensitively by default.
    own = env_names(settings)
    has_database = issubclass(settings, DatabaseSettings)
    env = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith(prefix):
            if upper in own:
                env[name] = value
        elif upper.startswith("PG") and not has_database:
            continue  # libpq's and asyncpg's PGPASSWORD, PGUSER, ...: database credentials
        else:
            env[name] = value
    return env


@dataclass
class Backoff:
    """Delays before starting a crashed service again: doubling from `first_s` up to
    `max_s`; a service that ran `healthy_after_s` before it crashed starts from
    `first_s` again (one crash a day is not a crash loop)."""

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 30.0
    failures: int = 0

    def delay(self, ran_for_s: float) -> float:
        if ran_for_s >= self.healthy_after_s:
            self.failures = 0
        self.failures += 1
        return RetryPolicy.doubling(self.first_s, self.max_s).delay_s(self.failures)


@dataclass
class _Child:
    name: str
    env: dict[str, str]
    backoff: Backoff
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    envs: Mapping[str, dict[str, str]]
    shutdown_timeout_s: float
    out: TextIO = field(default_factory=lambda: sys.stdout)
    poll_s: float = 0.2
    stopping: bool = False
    _children: list[_Child] = field(default_factory=list)

    def stop(self, *_: object) -> None:
        """Signal handler: the loop stops everything at its next turn."""
        self.stopping = True

    def handle_signals(self) -> None:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", f"services.{child.name}"], env=child.env
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        verb = "restarted" if child.restarts else "started"
        self._say(f"{verb} {child.name} (pid {child.process.pid})")

    def _check(self, child: _Child, now: float) -> None:
        if self.stopping:
            return  # Ctrl-C reaches the children too: their exit is no crash
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return
            ran_for = now - child.started_at
            delay = child.backoff.delay(ran_for)
            child.process = None
            child.restart_at = now + delay
            child.restarts += 1
            self._say(
                f"{child.name} exited with code {code} after {ran_for:.1f} s;"
                f" restarting it in {delay:.1f} s (restart {child.restarts})"
            )
        elif child.restart_at is not None and now >= child.restart_at:
            self._start(child)

    def run(self) -> int:
        """Until `stop`; then SIGTERM to every service, SIGKILL to those still running
        after the shutdown timeout. Returns 0."""
        self._children = [_Child(name, env, Backoff()) for name, env in self.envs.items()]
        for child in self._children:
            self._start(child)
        while not self.stopping:
            now = time.monotonic()
            for child in self._children:
                self._check(child, now)
            time.sleep(self.poll_s)
        self._say("stopping every service")
        running = [c.process for c in self._children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s + 5
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0
