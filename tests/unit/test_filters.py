"""The filter language (shared/filters.py): checked on save, evaluated in bounded work."""

import time
from typing import Any

import pytest

from shared.errors import InvalidInput
from shared.filters import (
    MAX_DEPTH,
    MAX_OPERANDS,
    MAX_STRING_CHARS,
    FilterTooCostly,
    check_filter,
    matches,
    request_document,
)

PUSH = request_document(
    body={
        "ref": "refs/tags/v1.2",
        "action": "opened",
        "n": 5,
        "flag": True,
        "labels": ["bug", "p1"],
        "repo": {"name": "flowhooks", "private": False},
        "none": None,
    },
    headers={"x-github-event": "push", "content-type": "application/json"},
    query={"page": "2", "tag": ["a", "b"]},
    path="/v1/source-webhook/abc",
)


def match(filter_: dict[str, Any], document: dict[str, Any] = PUSH) -> bool:
    return matches(check_filter(filter_, "filter"), document)


@pytest.mark.parametrize(
    "filter_",
    [
        {},
        {
            "headers": {"x-github-event": {"$in": ["push", "release"]}},
            "body": {"ref": {"$startsWith": "refs/tags/"}},
        },
        {"body": {"action": "opened"}},
        {"body": {"repo": {"name": "flowhooks"}}},  # objects: contained
        {"body": {"repo": {"$eq": {"private": False}}}},
        {"body": {"n": {"$gt": 4, "$lte": 5}}},
        {"body": {"n": {"$gte": 5, "$lt": 6}}},
        {"body": {"ref": {"$endsWith": "v1.2", "$contains": "tags"}}},
        {"body": {"labels": {"$contains": "p1"}}},
        {"body": {"labels": ["bug", "p1"]}},
        {"body": {"missing": {"$exist": False}, "ref": {"$exist": True}}},
        {"body": {"none": None}},
        {"body": {"none": {"$exist": True}}},
        {"body": {"flag": True}},
        {"body": {"action": {"$neq": "closed"}, "missing": {"$neq": 1}}},
        {"body": {"action": {"$nin": ["closed"]}}},
        {"query": {"page": "2", "tag": {"$contains": "b"}}},
        {"path": {"$startsWith": "/v1/source-webhook/"}},
        {"$or": [{"body": {"action": "closed"}}, {"headers": {"x-github-event": "push"}}]},
        {"$and": [{"body": {"n": 5}}, {"$not": {"body": {"n": 6}}}]},
        {"body": {"n": {"$not": {"$in": [1, 2]}}}},
    ],
)
def test_matching_filters(filter_: dict[str, Any]) -> None:
    assert match(filter_)


@pytest.mark.parametrize(
    "filter_",
    [
        {"headers": {"x-github-event": {"$in": ["release"]}}},
        {"body": {"action": "closed"}},
        {"body": {"repo": {"name": "other"}}},
        {"body": {"labels": ["bug"]}},  # a plain list means equal, not contained
        {"body": {"n": {"$gt": 5}}},
        {"body": {"n": {"$gt": "4"}}},  # no order between a number and a string
        {"body": {"n": "5"}},
        {"body": {"flag": 1}},  # true is not 1
        {"body": {"n": True}},
        {"body": {"missing": None}},  # missing is not null
        {"body": {"missing": {"$exist": True}}},
        {"body": {"ref": {"$exist": False}}},
        {"body": {"missing": {"$in": [None]}}},
        {"body": {"ref": {"$startsWith": "refs/heads/"}}},
        {"body": {"n": {"$startsWith": "5"}}},
        {"body": {"repo": {"$contains": "flow"}}},
        {"$not": {"body": {"n": 5}}},
        {"$or": [{"body": {"n": 1}}, {"body": {"n": 2}}]},
        {"body": {"ref": {"x": 1}}},  # an object never contained in a string
    ],
)
def test_filters_that_do_not_match(filter_: dict[str, Any]) -> None:
    assert not match(filter_)


@pytest.mark.parametrize(
    ("filter_", "path"),
    [
        ({"body": {"n": {"$regex": "x"}}}, "webhook.filter.body.n.$regex"),
        ({"bodies": {}}, "webhook.filter.bodies"),
        ({"body": {"n": {"$in": "push"}}}, "webhook.filter.body.n.$in"),
        ({"body": {"n": {"$gt": [1]}}}, "webhook.filter.body.n.$gt"),
        ({"body": {"n": {"$gt": True}}}, "webhook.filter.body.n.$gt"),
        ({"body": {"n": {"$exist": 1}}}, "webhook.filter.body.n.$exist"),
        ({"body": {"n": {"$startsWith": 1}}}, "webhook.filter.body.n.$startsWith"),
        ({"body": {"n": {"$contains": {"a": 1}}}}, "webhook.filter.body.n.$contains"),
        ({"$or": []}, "webhook.filter.$or"),
        ({"$and": {"body": {}}}, "webhook.filter.$and"),
        ({"$or": [{"body": {"n": {"$nope": 1}}}]}, "webhook.filter.$or[0].body.n.$nope"),
        ({"body": {"s": "x" * (MAX_STRING_CHARS + 1)}}, "webhook.filter.body.s"),
        ({"body": {"s": {"$in": list(range(MAX_OPERANDS))}}}, None),
    ],
)
def test_invalid_filters_name_their_path(filter_: dict[str, Any], path: str | None) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_filter(filter_, "webhook.filter")
    assert refused.value.kind == "invalid_input"
    assert refused.value.status_code == 400
    if path is not None:
        assert refused.value.data == {"field": path}
        assert refused.value.message.startswith(f"{path}: ")


def test_not_an_object_and_too_deep() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_filter(["push"], "filter")
    assert refused.value.data == {"field": "filter"}
    deep: dict[str, Any] = {"x": 1}
    for _ in range(MAX_DEPTH):
        deep = {"x": deep}
    with pytest.raises(InvalidInput) as refused:
        check_filter({"body": deep}, "filter")
    assert "nested at most" in refused.value.message


def test_a_pathological_filter_is_stopped_by_its_budget() -> None:
    """The worst a saved filter can ask: every operand a `$contains` scanning a large
    string. Past the budget it does not match, quickly, whatever the body."""
    filter_ = {"body": {"$or": [{"s": {"$contains": f"needle{i}"}} for i in range(60)]}}
    check_filter(filter_, "filter")
    document = request_document({"s": "a" * 5_000_000}, {}, {}, "/")
    started = time.process_time()
    with pytest.raises(FilterTooCostly):
        matches(filter_, document)
    assert time.process_time() - started < 1.0  # a budget, not a deadline: a loose bound
    # A large list is metered too.
    listed = request_document({"s": list(range(5_000_000))}, {}, {}, "/")
    with pytest.raises(FilterTooCostly):
        matches({"body": {"s": {"$contains": -1}}}, listed)


def test_evaluation_refuses_an_unchecked_filter_deeper_than_the_bound() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(MAX_DEPTH + 2):
        deep = {"x": deep}
    with pytest.raises(FilterTooCostly):
        matches({"body": deep}, request_document({}, {}, {}, "/"))
    # An operator it does not know never matches (a newer runner's filter).
    assert not matches({"body": {"$someday": 1}}, request_document({}, {}, {}, "/"))
