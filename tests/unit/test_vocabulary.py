"""One vocabulary: a request's outcomes are spelled in shared/schemas/vocabulary.py only.
Every other Python file of services/ and shared/ names them from there, so that a new
outcome, or a renamed one, is one change that every service sees."""

import ast
from pathlib import Path

from shared.schemas import vocabulary
from shared.schemas.vocabulary import RECORDED_OUTCOMES

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
}


def literal_outcomes(path: Path) -> list[str]:
    """`line: word` for each string constant in the file that is exactly an outcome
    (SQL and messages that merely contain one are not a second definition)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = path.relative_to(ROOT).as_posix()
    return [
        f"{relative}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in RECORDED_OUTCOMES
        and (relative, node.value) not in OTHER_MEANINGS
    ]


def python_files() -> list[Path]:
    files = [path for top in ("services", "shared") for path in (ROOT / top).rglob("*.py")]
    return [path for path in files if path.relative_to(ROOT).as_posix() != VOCABULARY]


def test_no_outcome_is_spelled_outside_the_vocabulary() -> None:
    found = [hit for path in python_files() for hit in literal_outcomes(path)]
    assert found == [], (
        "outcomes spelled outside shared/schemas/vocabulary.py; use `Outcome`/`Progress` "
        f"(or add the place to OTHER_MEANINGS if the word means something else): {found}"
    )


def test_the_check_finds_a_literal_outcome(tmp_path: Path) -> None:
    """The scan sees a bare outcome string and ignores one inside other text."""
    module = ROOT / "services" / "_vocabulary_probe.py"
    module.write_text('OUTCOME = "failed"\nSQL = "WHERE outcome = \'failed\'"\n')
    try:
        assert literal_outcomes(module) == ["services/_vocabulary_probe.py:1: 'failed'"]
    finally:
        module.unlink()


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
