"""shared/db.py with multi-host database URLs (failover): naming the database, one URL
per host, and `connect` trying the hosts one at a time, no database needed."""

from typing import Any

import asyncpg
import pytest

from shared import db

MULTI = "postgresql://app:p%40ss@db1:5441,db2:5442/flowhooks?target_session_attrs=read-write"


def test_database_of_single_and_multi_host() -> None:
    assert db.database_of("postgresql://postgres@127.0.0.1:5432/flowhooks") == "flowhooks"
    assert db.database_of(MULTI) == "flowhooks"
    assert db.database_of("postgresql://h1,h2/flow%20hooks") == "flow hooks"
    with pytest.raises(ValueError, match="names no database"):
        db.database_of("postgresql://h1:1,h2:2")


def test_with_database_keeps_hosts_user_and_options() -> None:
    assert db.with_database(MULTI, "postgres") == (
        "postgresql://app:p%40ss@db1:5441,db2:5442/postgres?target_session_attrs=read-write"
    )
    # Quoted, and read back as it was.
    assert db.with_database("postgresql://h/x", 'a b"c') == "postgresql://h/a%20b%22c"
    assert db.database_of(db.with_database("postgresql://h/x", 'a b"c')) == 'a b"c'


def test_host_dsns_one_url_per_host_in_order() -> None:
    assert db.host_dsns(MULTI) == [
        "postgresql://app:p%40ss@db1:5441/flowhooks?target_session_attrs=read-write",
        "postgresql://app:p%40ss@db2:5442/flowhooks?target_session_attrs=read-write",
    ]
    assert db.host_dsns("postgresql://[::1]:5441,127.0.0.1/db") == [
        "postgresql://[::1]:5441/db",
        "postgresql://127.0.0.1/db",
    ]
    single = "postgresql://postgres@127.0.0.1:5432/flowhooks"
    assert db.host_dsns(single) == [single]


class FakeConnect:
    """Stands in for `asyncpg.connect`: each host answers with its scripted outcome."""

    def __init__(self, outcomes: dict[str, BaseException | str]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, dsn: str, *, timeout: float, **kwargs: Any) -> Any:
        host = dsn.split("@")[1].split("/")[0]
        self.calls.append((host, timeout))
        outcome = self.outcomes[host]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _not_writable() -> BaseException:
    exc: BaseException = asyncpg.exceptions.TargetServerAttributeNotMatched("not read-write")
    return exc


async def test_connect_tries_each_host_with_its_own_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeConnect({"db1:5441": TimeoutError(), "db2:5442": "connection to db2"})
    monkeypatch.setattr(asyncpg, "connect", fake)
    assert await db.connect(MULTI) == "connection to db2"
    assert fake.calls == [("db1:5441", db.CONNECT_TIMEOUT_S), ("db2:5442", db.CONNECT_TIMEOUT_S)]


async def test_connect_raises_the_connection_error_over_not_writable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As asyncpg does with several hosts: a refused host says more than a standby.
    refused = ConnectionRefusedError(111, "refused")
    fake = FakeConnect({"db1:5441": refused, "db2:5442": _not_writable()})
    monkeypatch.setattr(asyncpg, "connect", fake)
    with pytest.raises(ConnectionRefusedError) as raised:
        await db.connect(MULTI)
    assert raised.value is refused
    (note,) = raised.value.__notes__
    assert "db1:5441: ConnectionRefusedError" in note
    assert "db2:5442: TargetServerAttributeNotMatched" in note


async def test_connect_every_host_up_none_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConnect({"db1:5441": _not_writable(), "db2:5442": _not_writable()})
    monkeypatch.setattr(asyncpg, "connect", fake)
    with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched) as raised:
        await db.connect(MULTI)
    assert isinstance(raised.value, db.UNAVAILABLE)


async def test_connect_stops_at_an_error_no_other_host_can_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = asyncpg.exceptions.InvalidPasswordError("password authentication failed")
    fake = FakeConnect({"db1:5441": wrong, "db2:5442": "unused"})
    monkeypatch.setattr(asyncpg, "connect", fake)
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await db.connect(MULTI)
    assert [host for host, _ in fake.calls] == ["db1:5441"]


def test_the_debugger_retries_every_database_outage() -> None:
    """What shared/db calls unavailable, the debugger's intake retries (never "unknown",
    which ends in dropped rows and acked messages)."""
    from services.debugger.ingest import classify

    for exc in (
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle of operation"),
        _not_writable(),
        # A pooled connection whose server died while it was idle, on its next query.
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
    ):
        assert isinstance(exc, db.UNAVAILABLE)
        assert classify(exc) == "unavailable", exc
