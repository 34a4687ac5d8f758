"""The filter language of routes and `webhook.filter` (contract: "Sources: one URL, many
flows"): JSON matched against a request seen as `{"body", "headers", "query", "path"}`.

- A plain value means equal; a plain object means "contains": each of its keys must be
  in the value and match (so `{"body": {"a": 1}}` matches `{"a": 1, "b": 2}`).
- Operators apply to the value where they stand: `$eq $neq $in $nin $gt $gte $lt $lte
  $exist $startsWith $endsWith $contains`; combinators `$and $or $not` take filters of
  the same value.

Two halves, both pure: `check_filter` (on save, in the runner: an unknown operator, a
wrong operand type or a filter over its bounds is `InvalidInput` naming the path) and
`matches` (at the ingress, per request). `matches` is bounded whatever it is given:
the depth, the operand count and the strings are bounded on save, and the work done on
the request's side (substrings searched, list elements compared) is metered against a
budget per evaluation; past it the filter does not match (`FilterTooCostly`), so one
pathological filter and a large body cannot stall the ingress."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidInput

# The parts of a request a filter may look at (the only keys of its top level, with the
# combinators).
REQUEST_PARTS = ("body", "headers", "query", "path")
COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
STRING_TESTS = ("$startsWith", "$endsWith")
COMBINATORS = ("$and", "$or", "$not")
OPERATORS = frozenset(
    {"$eq", "$neq", "$in", "$nin", *COMPARISONS, "$exist", *STRING_TESTS, "$contains"}
)

# Bounds of a saved filter: nesting, every value and key it holds counted, the length of
# each string in it (keys included).
MAX_DEPTH = 12
MAX_OPERANDS = 256
MAX_STRING_CHARS = 1024
# Bound of one evaluation: characters searched by `$contains` and list elements looked
# at, summed over the filter: about 5 ms of near-miss searching at worst on this machine
# (loaded), where the 60 searches the operand bound allows would take 280 ms.
DEFAULT_BUDGET = 1_000_000


class FilterTooCostly(Exception):
    """An evaluation that would pass its budget: the filter does not match."""


_MISSING: Any = object()  # a key the value does not have (`$exist: false` matches it)


@dataclass
class _Checked:
    operands: int = 0


def check_filter(raw: Any, field: str) -> dict[str, Any]:
    """`raw` as a filter, or `InvalidInput` naming the path of what is wrong
    (`<field>.body.ref.$startsWith`)."""
    if not isinstance(raw, dict):
        raise _invalid(field, "a filter is a JSON object")
    for key in raw:
        if key not in REQUEST_PARTS and key not in COMBINATORS:
            raise _invalid(
                f"{field}.{key}",
                f"a filter's top level names {', '.join(REQUEST_PARTS)} or a combinator",
            )
    _check_pattern(raw, field, 1, _Checked())
    return raw


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", data={"field": field})


def _count(field: str, checked: _Checked) -> None:
    checked.operands += 1
    if checked.operands > MAX_OPERANDS:
        raise _invalid(field, f"a filter holds at most {MAX_OPERANDS} keys and values")


def _check_value(value: Any, field: str, depth: int, checked: _Checked) -> None:
    """A plain JSON value (an operand or an equality): bounded like the rest."""
    _count(field, checked)
    if depth > MAX_DEPTH:
        raise _invalid(field, f"a filter is nested at most {MAX_DEPTH} levels")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise _invalid(field, f"strings in a filter are at most {MAX_STRING_CHARS} characters")
    if isinstance(value, float) and value != value:  # NaN equals nothing
        raise _invalid(field, "NaN is not a value")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, f"{field}[{index}]", depth + 1, checked)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_key(key, field, checked)
            _check_value(item, f"{field}.{key}", depth + 1, checked)


def _check_key(key: str, field: str, checked: _Checked) -> None:
    if len(key) > MAX_STRING_CHARS:
        raise _invalid(field, f"keys in a filter are at most {MAX_STRING_CHARS} characters")


def _check_pattern(pattern: Any, field: str, depth: int, checked: _Checked) -> None:
    if depth > MAX_DEPTH:
        raise _invalid(field, f"a filter is nested at most {MAX_DEPTH} levels")
    if not isinstance(pattern, dict):
        _check_value(pattern, field, depth, checked)
        return
    _count(field, checked)
    for key, operand in pattern.items():
        _check_key(key, field, checked)
        path = f"{field}.{key}"
        if not key.startswith("$"):
            _check_pattern(operand, path, depth + 1, checked)
        elif key in ("$and", "$or"):
            if not isinstance(operand, list) or not operand:
                raise _invalid(path, f"{key} takes a non-empty list of filters")
            for index, item in enumerate(operand):
                _check_pattern(item, f"{path}[{index}]", depth + 1, checked)
        elif key == "$not":
            _check_pattern(operand, path, depth + 1, checked)
        elif key in OPERATORS:
            _check_operand(key, operand, path, depth + 1, checked)
        else:
            raise _invalid(
                path,
                f"unknown operator {key}; known: {', '.join(sorted(OPERATORS | set(COMBINATORS)))}",
            )


def _check_operand(operator: str, operand: Any, path: str, depth: int, checked: _Checked) -> None:
    if operator in ("$in", "$nin") and not isinstance(operand, list):
        raise _invalid(path, f"{operator} takes a list")
    if operator in COMPARISONS and not _comparable(operand):
        raise _invalid(path, f"{operator} takes a number or a string")
    if operator == "$exist" and not isinstance(operand, bool):
        raise _invalid(path, "$exist takes true or false")
    if operator in STRING_TESTS and not isinstance(operand, str):
        raise _invalid(path, f"{operator} takes a string")
    if operator == "$contains" and isinstance(operand, (dict, list)):
        raise _invalid(path, "$contains takes a string, a number, a boolean or null")
    _check_value(operand, path, depth, checked)


def _comparable(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


class _Meter:
    """The evaluation's budget of request-side work."""

    __slots__ = ("left",)

    def __init__(self, budget: int) -> None:
        self.left = budget

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise FilterTooCostly


def request_document(
    body: Any, headers: Mapping[str, str], query: Mapping[str, Any], path: str
) -> dict[str, Any]:
    """What a filter sees of a request (header names lower-case, as normalised)."""
    return {"body": body, "headers": headers, "query": query, "path": path}


def matches(
    filter_: Mapping[str, Any], document: Mapping[str, Any], budget: int = DEFAULT_BUDGET
) -> bool:
    """Whether the request (`request_document`) matches. Raises `FilterTooCostly` past
    the budget (the caller counts it as not matching)."""
    return _match(filter_, document, _Meter(budget), 0)


def _match(pattern: Any, value: Any, meter: _Meter, depth: int) -> bool:
    # Saved filters are bounded; a filter that is not (an older save, a bug) is not
    # walked deeper than the bound either.
    if depth > MAX_DEPTH:
        raise FilterTooCostly
    meter.spend(1)
    if not isinstance(pattern, dict):
        return value is not _MISSING and _equal(pattern, value)
    for key, operand in pattern.items():
        if not key.startswith("$"):
            child = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
            if not _match(operand, child, meter, depth + 1):
                return False
        elif not _operator(key, operand, value, meter, depth):
            return False
    return True


def _operator(key: str, operand: Any, value: Any, meter: _Meter, depth: int) -> bool:
    if key == "$and":
        return all(_match(item, value, meter, depth + 1) for item in operand)
    if key == "$or":
        return any(_match(item, value, meter, depth + 1) for item in operand)
    if key == "$not":
        return not _match(operand, value, meter, depth + 1)
    if key == "$exist":
        return (value is not _MISSING) == bool(operand)
    if value is _MISSING:
        return key in ("$neq", "$nin")  # a missing value differs from everything
    if key == "$eq":
        return _equal(operand, value)
    if key == "$neq":
        return not _equal(operand, value)
    if key == "$in":
        return any(_equal(item, value) for item in operand)
    if key == "$nin":
        return not any(_equal(item, value) for item in operand)
    if key in COMPARISONS:
        return _compare(key, operand, value)
    if key == "$startsWith":
        return isinstance(value, str) and value.startswith(operand)
    if key == "$endsWith":
        return isinstance(value, str) and value.endswith(operand)
    if key == "$contains":
        return _contains(operand, value, meter)
    return False  # an operator this ingress does not know: never a match


def _equal(pattern: Any, value: Any) -> bool:
    """JSON equality, objects by containment (a plain object is contained in the value).
    `True` is not `1` (Python says it is)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and _equal(item, value[key]) for key, item in pattern.items()
        )
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(pattern) == len(value)
            and all(_equal(a, b) for a, b in zip(pattern, value, strict=True))
        )
    if isinstance(pattern, bool) or isinstance(value, bool):
        return isinstance(pattern, bool) and isinstance(value, bool) and pattern == value
    if pattern is None or value is None:
        return pattern is value
    if _comparable(pattern) and _comparable(value):
        same_kind = isinstance(pattern, str) == isinstance(value, str)
        return same_kind and pattern == value
    return False


def _compare(operator: str, operand: Any, value: Any) -> bool:
    if not _comparable(value) or isinstance(value, str) != isinstance(operand, str):
        return False  # no order between a number and a string
    if operator == "$gt":
        return bool(value > operand)
    if operator == "$gte":
        return bool(value >= operand)
    if operator == "$lt":
        return bool(value < operand)
    return bool(value <= operand)


def _contains(operand: Any, value: Any, meter: _Meter) -> bool:
    """A string holds the substring; a list holds an equal element."""
    if isinstance(value, str):
        if not isinstance(operand, str):
            return False
        meter.spend(len(value))
        return operand in value
    if isinstance(value, list):
        meter.spend(len(value))
        return any(_equal(operand, item) for item in value)
    return False
