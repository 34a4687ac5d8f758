import pytest
from multidict import CIMultiDict

from services.ingress.form_body import multi_dict
from services.ingress.normalise import BodyLimits, clean_headers, parse_input, parse_json
from shared.errors import BadRequest


def test_json_body_and_empty_body() -> None:
    assert parse_json(b'{"company_id": 123456}') == {"company_id": 123456}
    assert parse_json(b"") == {}
    assert parse_json(b"  \n") == {}
    assert parse_json(b"[1, 2]") == [1, 2]


def test_bad_json_says_where() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_json(b'{"a": 1,\n "b": }')
    assert caught.value.message.startswith("the body is not valid JSON: ")
    assert "line 2 column 7" in caught.value.message


def test_repeated_query_keys_become_lists() -> None:
    assert multi_dict([("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")]) == {
        "a": ["1", "3", "4"],
        "b": "2",
    }


def test_headers_lower_cased_without_authorization() -> None:
    headers = CIMultiDict(
        [
            ("Authorization", "Bearer s3cret"),
            ("X-Signature", "abc"),
            ("Accept", "a"),
            ("accept", "b"),
        ]
    )
    assert clean_headers(headers) == {"x-signature": "abc", "accept": "a, b"}


def test_get_uses_query_as_input() -> None:
    query = {"page": "2"}
    assert parse_input("GET", query, None, b"ignored", BodyLimits()) == {"page": "2"}
    assert parse_input("POST", query, None, b'{"a": 1}', BodyLimits()) == {"a": 1}


def test_the_walk_of_parsed_json_is_skipped_only_where_it_cannot_refuse() -> None:
    """`may_exceed` False: no nesting past the bound, no float that may be an integer
    out of range; the refusals still come where it says True."""
    from services.ingress.normalise import may_exceed

    assert not may_exceed(b'{"kind": "myResult", "company_id": 123456}', 64)
    assert not may_exceed(b'{"a": [1.5, -2, 9223372036854775]}', 64)
    assert may_exceed(b"[[[1]]]", 2)
    assert may_exceed(b'{"a": 1e19}', 64)
    assert may_exceed(b'{"a": 18446744073709551616}', 64)
    assert may_exceed(b'{"a": "a string with 1E5 in it"}', 64)  # only has to be sure
    with pytest.raises(BadRequest):
        parse_json(b"[[[1]]]", max_depth=2)
    with pytest.raises(BadRequest):
        parse_json(b'{"a": 18446744073709551616}')
    assert parse_json(b'{"a": 1e19}') == {"a": 1e19}
    assert parse_json(b"[[1]]", max_depth=2) == [[1]]


def test_headers_not_utf8_are_kept_with_replacement_characters() -> None:
    headers = CIMultiDict([("X-Odd", "caf\udce9"), ("X-\udcffName", "v"), ("X-Fine", "é")])
    assert clean_headers(headers) == {"x-odd": "caf\ufffd", "x-\ufffdname": "v", "x-fine": "é"}
