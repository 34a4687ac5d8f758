"""The command line's pure parts: tables, apply's comparison, definition files, SSE
parsing and error envelopes."""

import argparse
import io
from pathlib import Path

import pytest

from cli.api_client import ClientSettings, error_from_answer, parse_sse
from cli.commands import (
    NO_TOKEN,
    OUTCOME_CHOICES,
    TOKEN_ON_COMMAND_LINE,
    UsageError,
    covers,
    flows_table,
    load_definition,
    request_line,
    request_text,
    resolve_token,
    short_time,
    table,
)
from cli.main import main
from shared.schemas.vocabulary import RECORDED_OUTCOMES, RunMode


def test_table_pads_columns_and_shows_missing_values_as_dashes() -> None:
    text = table(("ID", "NAME"), [("1", "short"), ("22", None), ("3", ["a", "b"])])
    assert text.splitlines() == ["ID  NAME", "1   short", "22  -", "3   a,b"]


def test_flows_table() -> None:
    flow = {
        "id": "f1",
        "name": "Sync",
        "status": "live",
        "version": 3,
        "updated_at": "2026-11-29T13:49:46.123456+00:00",
    }
    assert flows_table([flow]).splitlines() == [
        "ID  NAME  STATUS  VERSION  UPDATED",
        "f1  Sync  live    3        2026-11-29 13:49:46",
    ]


def test_short_time() -> None:
    assert short_time("2026-11-29T13:49:46.5+00:00") == "2026-11-29 13:49:46"
    assert short_time(None) == "-"


def test_request_line() -> None:
    item = {
        "id": "r1",
        "received_at": "2026-11-29T13:49:46+00:00",
        "method": "POST",
        "mode": "sync",
        "outcome": "succeeded",
        "status_code": 200,
        "duration_ms": 12.5,
    }
    assert request_line(item) == "r1  2026-11-29 13:49:46  POST  sync  succeeded  200  12.5"


STORED = {
    "id": "f1",
    "name": "n",
    "status": "live",
    "webhook": {"ref_id": "web1", "async": False, "timeout_s": 30.0, "response": {"x": 1}},
    "steps": [{"ref_id": "a", "type": "template", "template": "{{ 1 }}"}],
    "version": 2,
}


def test_covers_ignores_what_the_file_leaves_to_defaults() -> None:
    wanted = {
        "name": "n",
        "status": "live",
        "webhook": {"ref_id": "web1", "timeout_s": 30},
        "steps": [{"ref_id": "a", "type": "template", "template": "{{ 1 }}"}],
    }
    assert covers(STORED, wanted)


@pytest.mark.parametrize(
    "wanted",
    [
        {"status": "paused"},
        {"webhook": {"async": True}},
        {"webhook": {"async": 0}},
        {"steps": []},
        {"steps": [{"ref_id": "a", "template": "{{ 2 }}"}]},
        {"webhook": {"auth": {"mode": "github"}}},
    ],
)
def test_covers_sees_a_difference(wanted: dict[str, object]) -> None:
    assert not covers(STORED, wanted)


def test_load_definition_yaml_and_json() -> None:
    assert load_definition("f.yaml", "name: a\nsteps: []\n") == {"name": "a", "steps": []}
    assert load_definition("f.json", '{"name": "a"}') == {"name": "a"}


@pytest.mark.parametrize(
    ("path", "text", "said"),
    [
        ("f.yaml", "name: [", "not valid YAML"),
        ("f.json", "{", "not valid JSON"),
        ("f.yaml", "- a\n", "must be a mapping"),
        ("f.yaml", "status: live\n", "needs a `name`"),
    ],
)
def test_load_definition_refuses(path: str, text: str, said: str) -> None:
    with pytest.raises(UsageError, match=said):
        load_definition(path, text)


def test_parse_sse() -> None:
    assert parse_sse(["event: request", 'data: {"a": 1}']) == ("request", '{"a": 1}')
    assert parse_sse([": ping"]) is None
    assert parse_sse(["data: x", "data: y"]) == ("message", "x\ny")


def test_error_from_answer() -> None:
    envelope = b'{"status": 404, "error": "not_found", "message": "no such flow", "data": null}'
    error = error_from_answer(404, envelope)
    assert (error.status, error.kind, error.message) == (404, "not_found", "no such flow")
    other = error_from_answer(502, b"<html>Bad Gateway</html>")
    assert (other.kind, other.message) == ("http_502", "<html>Bad Gateway</html>")


def test_client_settings_defaults_match_the_default_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RUNNER_URL", "AUTH_URL", "DEBUGGER_URL", "TOKEN"):
        monkeypatch.delenv(f"FLOWHOOKS_{name}", raising=False)
    settings = ClientSettings()
    assert settings.url("auth") == "http://127.0.0.1:8081"
    assert settings.url("runner") == "http://127.0.0.1:8082"
    assert settings.url("debugger") == "http://127.0.0.1:8083"
    monkeypatch.setenv("FLOWHOOKS_RUNNER_URL", "http://runner.example:9000/")
    assert ClientSettings().url("runner") == "http://runner.example:9000"


def token_args(token: str | None = None, token_file: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(token=token, token_file=str(token_file) if token_file else None)


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWHOOKS_TOKEN", raising=False)
    monkeypatch.delenv("FLOWHOOKS_TOKEN_FILE", raising=False)


@pytest.mark.usefixtures("no_token_env")
def test_token_file_option_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    path.write_text("fhp_from_file\n")
    path.chmod(0o600)
    err = io.StringIO()
    assert resolve_token(token_args(token_file=path), ClientSettings(), err) == "fhp_from_file"
    monkeypatch.setenv("FLOWHOOKS_TOKEN_FILE", str(path))
    assert resolve_token(token_args(), ClientSettings(), err) == "fhp_from_file"
    assert err.getvalue() == ""  # a private file, not on the command line: nothing to say
    # The command line beats the environment.
    other = tmp_path / "other"
    other.write_text("  fhp_other  \nsecond line ignored\n")
    other.chmod(0o600)
    assert resolve_token(token_args(token_file=other), ClientSettings(), err) == "fhp_other"


@pytest.mark.usefixtures("no_token_env")
def test_token_on_the_command_line_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    assert resolve_token(token_args(token="fhp_visible"), ClientSettings(), err) == "fhp_visible"
    assert err.getvalue() == TOKEN_ON_COMMAND_LINE + "\n"
    assert "ps" in TOKEN_ON_COMMAND_LINE and "--token-file" in TOKEN_ON_COMMAND_LINE
    # From the environment: no warning.
    monkeypatch.setenv("FLOWHOOKS_TOKEN", "fhp_env")
    quiet = io.StringIO()
    assert resolve_token(token_args(), ClientSettings(), quiet) == "fhp_env"
    assert quiet.getvalue() == ""


@pytest.mark.usefixtures("no_token_env")
def test_token_sources_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(args: argparse.Namespace) -> str:
        with pytest.raises(UsageError) as caught:
            resolve_token(args, ClientSettings(), io.StringIO())
        return str(caught.value)

    path = tmp_path / "token"
    path.write_text("fhp_x")
    assert refused(token_args()) == NO_TOKEN
    assert refused(token_args(token="a", token_file=path)) == (
        "give --token or --token-file, not both"
    )
    assert refused(token_args(token_file=tmp_path / "missing")).startswith(
        f"cannot read the token file {tmp_path / 'missing'}: "
    )
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    assert refused(token_args(token_file=empty)) == f"the token file {empty} is empty"
    monkeypatch.setenv("FLOWHOOKS_TOKEN", "fhp_env")
    monkeypatch.setenv("FLOWHOOKS_TOKEN_FILE", str(path))
    assert refused(token_args()) == "set FLOWHOOKS_TOKEN or FLOWHOOKS_TOKEN_FILE, not both"


@pytest.mark.usefixtures("no_token_env")
def test_a_token_file_others_may_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("fhp_x")
    path.chmod(0o644)
    err = io.StringIO()
    assert resolve_token(token_args(token_file=path), ClientSettings(), err) == "fhp_x"
    assert err.getvalue() == (
        f"warning: the token file {path} may be read by other users (chmod 600 it)\n"
    )


def test_request_filters_name_the_vocabularys_values(capsys: pytest.CaptureFixture[str]) -> None:
    """`--outcome` and `--mode` take exactly the outcomes and modes the debugger knows,
    and both helps list them."""
    with pytest.raises(SystemExit):
        main(["--help"])
    overview = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["requests", "list", "--help"])
    listing = capsys.readouterr().out
    for value in (*RECORDED_OUTCOMES, *RunMode):
        assert value in overview and value in listing, value
    assert set(OUTCOME_CHOICES) == RECORDED_OUTCOMES
    with pytest.raises(SystemExit) as refused:
        main(["requests", "list", "f1", "--outcome", "timed_out"])
    assert refused.value.code == 2
    assert "invalid choice: 'timed_out'" in capsys.readouterr().err


def test_request_text_shows_the_trace_id_when_there_is_one() -> None:
    record = {"id": "r1", "flow_id": "f1", "outcome": "succeeded", "response": {}}
    assert "trace:" not in request_text(record)
    traced = request_text({**record, "trace_id": "0af7651916cd43dd8448eb211c80319c"})
    assert "trace:     0af7651916cd43dd8448eb211c80319c" in traced.splitlines()
