"""Body parsing by content type: XML and form data to JSON, refusals with clear errors."""

import pytest

from services.ingress.normalise import BodyLimits, parse_body
from shared.errors import BadRequest

LIMITS = BodyLimits(max_json_depth=64, max_xml_depth=64)

MULTIPART = (
    b"--XX\r\n"
    b'Content-Disposition: form-data; name="a"\r\n\r\n1\r\n'
    b"--XX\r\n"
    b'Content-Disposition: form-data; name="doc"; filename="x.txt"\r\n'
    b"Content-Type: text/plain\r\n\r\nhello\r\n"
    b"--XX\r\n"
    b'Content-Disposition: form-data; name="a"\r\n\r\n2\r\n'
    b"--XX--\r\n"
)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "text/xml",
        "text/xml; charset=utf-8",
        "application/soap+xml",
    ],
)
def test_xml_rules(content_type: str) -> None:
    body = (
        b'<order id="7"><item>a</item><item>b</item><note lang="en">hi</note>'
        b"<empty/><n>1</n><one><item>c</item></one></order>"
    )
    assert parse_body(content_type, body, LIMITS) == {
        "order": {
            "@id": "7",
            "item": ["a", "b"],
            "note": {"@lang": "en", "#text": "hi"},
            "empty": None,
            "n": "1",
            "one": {"item": "c"},
        }
    }


def test_xml_text_beside_children_and_namespaces() -> None:
    body = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<s:Body>x<v>1</v></s:Body></s:Envelope>"
    )
    assert parse_body("application/xml", body, LIMITS) == {
        "s:Envelope": {"s:Body": {"v": "1", "#text": "x"}}
    }


def test_xml_syntax_error_says_where() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_body("application/xml", b"<a>\n<b></a>", LIMITS)
    assert caught.value.data == {"line": 2, "column": 8}
    assert caught.value.message.startswith("the body is not valid XML: ")


def test_xml_external_entity_refused() -> None:
    body = b'<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>'
    with pytest.raises(BadRequest, match="DOCTYPE is not accepted"):
        parse_body("application/xml", body, LIMITS)


def test_billion_laughs_refused_fast() -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    body = f'<?xml version="1.0"?><!DOCTYPE z [<!ENTITY l0 "lol">{entities}]><z>&l9;</z>'.encode()
    # libxml2 refuses the amplification itself, or we refuse the DOCTYPE: either way a
    # clear 400, and nothing was expanded.
    with pytest.raises(BadRequest, match=r"(DOCTYPE|amplification)"):
        parse_body("text/xml", body, LIMITS)


def test_xml_depth_bound() -> None:
    deep = b"<a>" * 100 + b"x" + b"</a>" * 100
    with pytest.raises(BadRequest, match="nested deeper than 64"):
        parse_body("application/xml", deep, LIMITS)


def test_json_depth_bound_and_orjson_limit() -> None:
    with pytest.raises(BadRequest, match="nested deeper than 64"):
        parse_body("application/json", b"[" * 65 + b"]" * 65, LIMITS)
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_body("application/json", b"[" * 100_000 + b"]" * 100_000, LIMITS)


def test_urlencoded_form() -> None:
    assert parse_body("application/x-www-form-urlencoded", b"a=1&b=x+y&a=2&c=", LIMITS) == {
        "a": ["1", "2"],
        "b": "x y",
        "c": "",
    }


def test_multipart_form_with_file() -> None:
    assert parse_body("multipart/form-data; boundary=XX", MULTIPART, LIMITS) == {
        "a": ["1", "2"],
        "doc": {
            "filename": "x.txt",
            "content_type": "text/plain",
            "size": 5,
            "data_base64": "aGVsbG8=",
        },
    }


def test_multipart_without_boundary() -> None:
    with pytest.raises(BadRequest, match="boundary"):
        parse_body("multipart/form-data", MULTIPART, LIMITS)


def test_no_content_type_json_then_form() -> None:
    assert parse_body(None, b'{"a": 1}', LIMITS) == {"a": 1}
    assert parse_body("text/plain", b"a=1&b=2", LIMITS) == {"a": "1", "b": "2"}
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_body(None, b"just words", LIMITS)


def test_empty_body_is_empty_object() -> None:
    for content_type in (None, "application/json", "application/xml", "multipart/form-data"):
        assert parse_body(content_type, b"", LIMITS) == {}


def test_json_sent_as_form_data_is_json() -> None:
    # `curl -d '{"kind": "x"}'` labels its body application/x-www-form-urlencoded.
    form = "application/x-www-form-urlencoded"
    assert parse_body(form, b'{"kind": "x"}', LIMITS) == {"kind": "x"}
    assert parse_body(form, b"kind=x", LIMITS) == {"kind": "x"}


BIG = "18446744073709551616"
OUT_OF_RANGE = (
    "the JSON body holds the integer {}, outside the range of exact integers"
    " (-9223372036854775808 to 18446744073709551615); send larger numbers as strings"
)


@pytest.mark.parametrize("content_type", ["application/json", "", "text/plain"])
def test_integers_exact_within_64_bits(content_type: str) -> None:
    body = b'{"a": [18446744073709551615, -9223372036854775808], "f": 1e19, "s": "' + BIG.encode()
    body += b'"}'
    value = parse_body(content_type, body, LIMITS)
    assert value == {"a": [2**64 - 1, -(2**63)], "f": 1e19, "s": BIG}
    assert isinstance(value["a"][0], int) and isinstance(value["f"], float)


@pytest.mark.parametrize(
    ("literal", "shown"),
    [
        (BIG, BIG),
        ("-9223372036854775809", "-9223372036854775809"),
        ("1" * 100, "1" * 40 + "..."),
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", ""])
def test_integers_beyond_64_bits_are_refused(content_type: str, literal: str, shown: str) -> None:
    body = b'{"nested": {"list": [1, 2.5, ' + literal.encode() + b"]}}"
    with pytest.raises(BadRequest) as caught:
        parse_body(content_type, body, LIMITS)
    assert caught.value.message == OUT_OF_RANGE.format(shown)
    assert caught.value.data is None
