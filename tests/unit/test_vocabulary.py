"""One vocabulary: a request's outcomes are spelled in shared/schemas/vocabulary.py only.
Every other module the product ships (pyproject.toml's packages) names them from there,
so that a new outcome, or a renamed one, is one change that every service sees."""

import ast
import tomllib
from pathlib import Path
from typing import get_args

from services.ingress.signatures import READERS, URL_READERS
from services.ingress.signing import TOKEN_AND_KEY_MODES
from shared.schemas import vocabulary
from shared.schemas.vocabulary import RECORDED_OUTCOMES, SigningMode, WebhookAuthMode

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = Path(vocabulary.__file__).resolve().relative_to(ROOT).as_posix()
# The same spelling with another meaning, each said where it is: (file, word) -> why.
OTHER_MEANINGS = {
    ("shared/errors.py", "timeout"): "Timeout's error kind (the envelope's `error`)",
    ("services/debugger/metrics.py", "expired"): "RabbitMQ's x-death reason",
    ("services/debugger/metrics.py", "rejected"): "RabbitMQ's x-death reason",
    ("services/debugger/records.py", "expired"): "RabbitMQ's x-death reason",
    ("services/debugger/records.py", "rejected"): "RabbitMQ's x-death reason",
    ("services/debugger/replay_jobs.py", "running"): "a replay job's status",
    ("services/debugger/alerts.py", "failed"): "a field of the failure-rate notice",
    ("shared/schemas/sources.py", "routed"): "the source answer's `data.routed`, a count",
}


def literal_outcomes(source: str, relative: str) -> list[str]:
    """`file:line: word` for each string constant of a module that is exactly an outcome
    (SQL and messages that merely contain one are not a second definition)."""
    return [
        f"{relative}:{node.lineno}: {node.value!r}"
        for node in ast.walk(ast.parse(source, filename=relative))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in RECORDED_OUTCOMES
        and (relative, node.value) not in OTHER_MEANINGS
    ]


def python_files() -> list[Path]:
    """Every module of the packages the product ships (pyproject.toml's list)."""
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = [pattern.rstrip("*") for pattern in shipped["packages"]["find"]["include"]]
    files = [path for top in tops for path in (ROOT / top).rglob("*.py")]
    return [path for path in files if path.relative_to(ROOT).as_posix() != VOCABULARY]


def test_no_outcome_is_spelled_outside_the_vocabulary() -> None:
    found = [
        hit
        for path in python_files()
        for hit in literal_outcomes(path.read_text(), path.relative_to(ROOT).as_posix())
    ]
    assert found == [], (
        "outcomes spelled outside shared/schemas/vocabulary.py; use `Outcome`/`Progress` "
        f"(or add the place to OTHER_MEANINGS if the word means something else): {found}"
    )


def test_the_check_finds_a_literal_outcome() -> None:
    """The scan sees a bare outcome string, and not one inside other text or one of the
    places with another meaning."""
    source = 'OUTCOME = "failed"\nSQL = "WHERE outcome = \'failed\'"\n'
    assert literal_outcomes(source, "services/probe.py") == ["services/probe.py:1: 'failed'"]
    assert literal_outcomes('KIND = "timeout"\n', "shared/errors.py") == []


def test_every_place_with_another_meaning_still_has_it() -> None:
    """An entry whose file no longer spells the word is stale: it would hide a new one."""
    stale = [
        place
        for place in OTHER_MEANINGS
        if not any(
            isinstance(node, ast.Constant) and node.value == place[1]
            for node in ast.walk(ast.parse((ROOT / place[0]).read_text()))
        )
    ]
    assert stale == []


def test_the_ingress_verifies_every_signing_mode_and_no_other() -> None:
    """A signing mode added to the vocabulary must come with its verifier."""
    # HMAC over headers and body (READERS), HMAC over the public URL too (URL_READERS),
    # public keys and tokens (signing.py): each mode in exactly one.
    registries = [set(READERS), set(URL_READERS), set(TOKEN_AND_KEY_MODES)]
    assert set().union(*registries) == set(get_args(SigningMode))
    assert sum(len(registry) for registry in registries) == len(get_args(SigningMode))
    assert set(get_args(WebhookAuthMode)) == {"bearer", *get_args(SigningMode)}
