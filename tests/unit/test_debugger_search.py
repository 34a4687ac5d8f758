"""The debugger's search parameters (`match=`, `header=`), parsed; and who may grant the
debugger scopes."""

import orjson
import pytest

from services.debugger.search import parse_headers, parse_match
from shared.api_auth import scope_covers
from shared.errors import BadRequest


def test_match_absent_is_no_filter() -> None:
    assert parse_match(None) is None


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ('{"customer": {"id": 7}}', {"customer": {"id": 7}}),
        ('[{"sku": "a"}]', [{"sku": "a"}]),
        ('"plain"', "plain"),
        ("{}", {}),
        # Stored input has its NULs replaced by U+FFFD, and so has the match.
        ('{"a\\u0000": "b\\u0000"}', {"a\ufffd": "b\ufffd"}),
    ],
)
def test_match_is_json_text_for_jsonb(raw: str, parsed: object) -> None:
    text = parse_match(raw)
    assert text is not None
    assert orjson.loads(text) == parsed


@pytest.mark.parametrize("raw", ["", "{", "{'a': 1}", "customer.id=7", '{"a": 1} x', "NaN"])
def test_invalid_match_names_the_parameter(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_match(raw)
    assert caught.value.data == {"field": "match"}
    assert str(caught.value).startswith("match must be JSON")


def test_no_header_is_no_filter() -> None:
    assert parse_headers([]) is None


@pytest.mark.parametrize(
    ("values", "wanted"),
    [
        (["X-GitHub-Event:push"], {"x-github-event": "push"}),
        # Blanks around the name and the value are not part of them; the value keeps its
        # case and any further colon.
        ([" X-Trace : a:B:c "], {"x-trace": "a:B:c"}),
        (["x-a:1", "X-B:2", "X-A:1"], {"x-a": "1", "x-b": "2"}),
        (["X-Empty:"], {"x-empty": ""}),
    ],
)
def test_headers_become_one_lower_cased_object(values: list[str], wanted: dict[str, str]) -> None:
    text = parse_headers(values)
    assert text is not None
    assert orjson.loads(text) == wanted


@pytest.mark.parametrize(
    "values",
    [["X-GitHub-Event"], [":push"], ["X GitHub:push"], ["X-\u00e9:1"], ["x-a:1", "X-A:2"]],
)
def test_invalid_header_names_the_parameter(values: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_headers(values)
    assert caught.value.data == {"field": "header"}


@pytest.mark.parametrize(
    ("held", "wanted", "covered"),
    [
        ("automation", "debugger.read", True),
        ("automation.manage", "debugger.replay", True),
        ("debugger.replay", "debugger.read", True),
        ("debugger.read", "debugger.read", True),
        ("debugger.read", "debugger.replay", False),
        ("automation.webhook_run", "debugger.read", False),
        ("debugger.replay", "automation.manage", False),
        ("automation", "automation.webhook_run", True),
        ("automation.manage", "automation", False),
    ],
)
def test_who_may_grant_the_debugger_scopes(held: str, wanted: str, covered: bool) -> None:
    assert scope_covers(held, wanted) is covered
