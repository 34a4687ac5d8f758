"""The ingress parses hostile bodies in linear time, within bounds that are settings, and
answers 400 naming the bound past one; undecodable bytes never become a 500."""

import base64
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest
from multidict import CIMultiDict

from services.ingress import webhook as webhook_module
from services.ingress.form_body import text_charset, urlencoded_to_json
from services.ingress.normalise import (
    BodyLimits,
    clean_headers,
    parse_body,
    parse_input,
    webhook_request,
)
from services.ingress.settings import IngressSettings
from services.ingress.signing import SignatureChecks
from services.ingress.text import replace_undecodable
from services.ingress.webhook import WebhookHandler, body_limits
from services.ingress.xml_body import FEED_BYTES, XmlLimits, xml_to_json
from shared.errors import BadRequest

MULTIPART_TYPE = "multipart/form-data; boundary=XX"


def bad_request(content_type: str | None, body: bytes, limits: BodyLimits) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_body(content_type, body, limits)
    assert caught.value.status_code == 400
    assert caught.value.envelope()["error"] == "bad_request"
    return caught.value.message


def attributes_xml(count: int) -> bytes:
    return ("<r " + " ".join(f'a{i}="{i}"' for i in range(count)) + "/>").encode()


def parts(count: int, value: bytes = b"v") -> bytes:
    return (
        b"".join(
            b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n%s\r\n' % (i, value)
            for i in range(count)
        )
        + b"--XX--\r\n"
    )


def part(headers: bytes, value: bytes) -> bytes:
    return b"--XX\r\n" + headers + b"\r\n\r\n" + value + b"\r\n--XX--\r\n"


# --- defaults and settings ---------------------------------------------------------------


def test_every_bound_is_a_setting_with_the_same_default() -> None:
    settings = IngressSettings()
    assert body_limits(settings) == BodyLimits()
    assert BodyLimits() == BodyLimits(
        max_json_depth=64,
        max_xml_depth=64,
        max_xml_elements=50_000,
        max_xml_attributes=50_000,
        max_xml_text_chars=10 * 1024 * 1024,
        max_form_fields=1000,
        max_form_parts=1000,
    )
    assert settings.ingress_parse_inline_max_bytes == 64 * 1024
    assert settings.ingress_parse_threads == 2


def test_bounds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MAX_XML_ELEMENTS": "7",
        "MAX_XML_ATTRIBUTES": "8",
        "MAX_XML_TEXT_CHARS": "9",
        "MAX_FORM_FIELDS": "10",
        "MAX_FORM_PARTS": "11",
    }.items():
        monkeypatch.setenv(f"FLOWHOOKS_INGRESS_{name}", value)
    limits = body_limits(IngressSettings())
    assert (
        limits.max_xml_elements,
        limits.max_xml_attributes,
        limits.max_xml_text_chars,
        limits.max_form_fields,
        limits.max_form_parts,
    ) == (7, 8, 9, 10, 11)


# --- XML ---------------------------------------------------------------------------------


def test_xml_100000_attributes_refused_fast_with_the_bound() -> None:
    body = attributes_xml(100_000)
    started = time.perf_counter()
    message = bad_request("application/xml", body, BodyLimits())
    # Was 30-50 s (quadratic); now tens of milliseconds. Generous for a loaded CI box.
    assert time.perf_counter() - started < 2
    assert message == "the XML body has more than 50000 attributes"


def test_xml_many_attributes_on_one_element_linear_and_in_order() -> None:
    limits = XmlLimits(max_attributes=30_000)
    started = time.perf_counter()
    converted = xml_to_json(attributes_xml(30_000), limits)
    # The quadratic conversion took about 4 s for 30,000 attributes.
    assert time.perf_counter() - started < 2
    assert list(converted["r"].items()) == [(f"@a{i}", str(i)) for i in range(30_000)]


def test_xml_attribute_names_drop_namespaces_in_both_read_paths() -> None:
    names = " ".join(f'x:a{i}="{i}"' for i in range(20))
    body = f'<r xmlns:x="urn:x" xml:lang="en" b="1" {names}/>'.encode()
    assert xml_to_json(body, XmlLimits()) == {
        "r": {"@lang": "en", "@b": "1", **{f"@a{i}": str(i) for i in range(20)}}
    }
    assert xml_to_json(b'<r xmlns:x="urn:x" x:a="1" b="2">t</r>', XmlLimits()) == {
        "r": {"@a": "1", "@b": "2", "#text": "t"}
    }


def test_xml_prefixes_as_written_even_for_one_namespace_under_two() -> None:
    body = b'<a:r xmlns:a="urn:u" xmlns:b="urn:u" xmlns="urn:d"><b:x>1</b:x><a:x>2</a:x><y/></a:r>'
    assert xml_to_json(body, XmlLimits()) == {"a:r": {"b:x": "1", "a:x": "2", "y": None}}


def test_xml_text_beside_children_comments_and_cdata() -> None:
    body = b"<a> t1 <b>1</b>t2<!-- c --><b>2</b><![CDATA[<t3>]]> &amp; </a>"
    assert xml_to_json(body, XmlLimits()) == {"a": {"b": ["1", "2"], "#text": "t1 t2<t3> &"}}
    assert xml_to_json(b"<a>x<!-- c -->y<?pi z?></a>", XmlLimits()) == {"a": "xy"}


def test_xml_repeated_elements_become_lists_in_order() -> None:
    body = b"<r><i>1</i><j/><i>2</i><i><k>3</k></i></r>"
    assert xml_to_json(body, XmlLimits()) == {"r": {"i": ["1", "2", {"k": "3"}], "j": None}}


def test_xml_across_feed_slices() -> None:
    # Elements, text and attributes straddling the slices the parser is fed.
    text = "é" * (FEED_BYTES // 2 + 7)
    items = "".join(f'<i n="{n}">{text}</i>' for n in range(5))
    converted = xml_to_json(f"<r>{items}</r>".encode(), XmlLimits())
    assert converted == {"r": {"i": [{"@n": str(n), "#text": text} for n in range(5)]}}


def test_xml_elements_bound() -> None:
    limits = BodyLimits(max_xml_elements=3)
    assert parse_body("application/xml", b"<r><a/><b/></r>", limits) == {
        "r": {"a": None, "b": None}
    }
    message = bad_request("application/xml", b"<r><a/><b/><c/></r>", limits)
    assert message == "the XML body has more than 3 elements"


def test_xml_elements_bound_stops_the_parse_early() -> None:
    # A bound is checked while the body streams in: the broken end is never reached.
    body = b"<r>" + b"<a/>" * 100_000 + b"<broken"
    message = bad_request("application/xml", body, BodyLimits(max_xml_elements=10))
    assert message == "the XML body has more than 10 elements"


def test_xml_attributes_bound_counts_the_whole_document() -> None:
    limits = BodyLimits(max_xml_attributes=3)
    body = b'<r a="1"><s b="2" c="3"/></r>'
    assert parse_body("text/xml", body, limits) == {"r": {"@a": "1", "s": {"@b": "2", "@c": "3"}}}
    message = bad_request("text/xml", b'<r a="1"><s b="2"/><s c="3" d="4"/></r>', limits)
    assert message == "the XML body has more than 3 attributes"


def test_xml_text_bound_counts_text_and_attribute_values() -> None:
    limits = BodyLimits(max_xml_text_chars=6)
    assert parse_body("application/xml", b'<r a="12"><b>3456</b></r>', limits) == {
        "r": {"@a": "12", "b": "3456"}
    }
    message = bad_request("application/xml", b'<r a="12"><b>34567</b></r>', limits)
    assert message == "the XML body has more than 6 characters of text"
    message = bad_request("application/xml", b"<r>1234<b/>567</r>", limits)
    assert message == "the XML body has more than 6 characters of text"


def test_xml_depth_bound_exact() -> None:
    limits = BodyLimits(max_xml_depth=3)
    assert parse_body("application/xml", b"<a><b><c>x</c></b></a>", limits) == {
        "a": {"b": {"c": "x"}}
    }
    message = bad_request("application/xml", b"<a><b><c><d/></c></b></a>", limits)
    assert message == "the XML body is nested deeper than 3 levels"


def test_xml_refusals_unchanged() -> None:
    limits = BodyLimits()
    body = b'<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>'
    assert (
        bad_request("application/xml", body, limits)
        == "XML with a DOCTYPE is not accepted (no DTDs or entities)"
    )
    message = bad_request("application/xml", b"<a>&undefined;</a>", limits)
    assert message.startswith("the body is not valid XML: Entity 'undefined' not defined")
    with pytest.raises(BadRequest) as caught:
        parse_body("application/xml", b"<a>\n<b></a>", limits)
    assert caught.value.data == {"line": 2, "column": 8}
    message = bad_request("application/xml", b'<?xml version="1.0"?>', limits)
    assert message.startswith("the body is not valid XML: ")


# --- multipart ---------------------------------------------------------------------------


def test_multipart_100000_parts_refused_fast_with_the_bound() -> None:
    body = parts(100_000, b"value")
    assert len(body) > 5_000_000
    started = time.perf_counter()
    message = bad_request(MULTIPART_TYPE, body, BodyLimits())
    assert time.perf_counter() - started < 2  # was 17 s
    assert message == "the multipart/form-data body has more than 1000 parts"


def test_multipart_parts_bound_exact() -> None:
    limits = BodyLimits(max_form_parts=3)
    assert parse_body(MULTIPART_TYPE, parts(3), limits) == {"f0": "v", "f1": "v", "f2": "v"}
    message = bad_request(MULTIPART_TYPE, parts(4), limits)
    assert message == "the multipart/form-data body has more than 3 parts"


@pytest.mark.parametrize(
    "charset", ["unicode_escape", "raw-unicode-escape", "utf-7", "idna", "punycode", "hex", "nope"]
)
def test_multipart_charset_that_is_no_text_charset_is_refused(charset: str) -> None:
    body = part(
        b'Content-Disposition: form-data; name="a"\r\n'
        b"Content-Type: text/plain; charset=" + charset.encode(),
        b"\\ud800 +2AA-",
    )
    message = bad_request(MULTIPART_TYPE, body, BodyLimits())
    assert message == f"form field 'a' has an unsupported charset {charset!r}"


@pytest.mark.parametrize(
    ("charset", "data", "text"),
    [
        ("utf-8", "é€".encode(), "é€"),
        ("UTF8", "é".encode(), "é"),
        ("latin-1", b"\xe9", "é"),
        ("iso-8859-15", b"\xa4", "€"),
        ("windows-1252", b"\x80", "€"),
        ("us-ascii", b"abc", "abc"),
        ("utf-16", "é€".encode("utf-16"), "é€"),
        ("shift_jis", "日本".encode("shift_jis"), "日本"),
    ],
)
def test_multipart_real_charsets_decode(charset: str, data: bytes, text: str) -> None:
    body = part(
        b'Content-Disposition: form-data; name="a"\r\n'
        b"Content-Type: text/plain; charset=" + charset.encode(),
        data,
    )
    assert parse_body(MULTIPART_TYPE, body, BodyLimits()) == {"a": text}


def test_text_charset() -> None:
    assert text_charset("UTF-8") == "utf-8"
    assert text_charset("latin1") == "iso8859-1"
    for name in ("unicode_escape", "base64", "rot13", "zlib", "utf_7", "x" * 200, "\x00"):
        assert text_charset(name) is None


def test_multipart_undecodable_text_and_lone_surrogates() -> None:
    body = part(b'Content-Disposition: form-data; name="a"', b"\xff\xfe")
    assert (
        bad_request(MULTIPART_TYPE, body, BodyLimits()) == "form field 'a' is not valid utf-8 text"
    )
    # UTF-16 with a lone surrogate: refused, never handed on to fail encoding later.
    body = part(
        b'Content-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=utf-16-le',
        b"\x00\xd8",
    )
    assert (
        bad_request(MULTIPART_TYPE, body, BodyLimits())
        == "form field 'a' is not valid utf-16-le text"
    )


def test_multipart_0xff_in_part_headers_kept_as_replacement() -> None:
    body = part(
        b'Content-Disposition: form-data; name="n\xff"; filename="f\xff.txt"\r\n'
        b"Content-Type: text/plain",
        b"\xff",
    )
    converted = parse_body(MULTIPART_TYPE, body, BodyLimits())
    assert converted == {
        "n\ufffd": {
            "filename": "f\ufffd.txt",
            "content_type": "text/plain",
            "size": 1,
            "data_base64": "/w==",
        }
    }
    orjson.dumps(converted)


def test_multipart_filename_star_with_unicode_escape_cannot_smuggle_surrogates() -> None:
    body = part(
        b"Content-Disposition: form-data; name=\"a\"; filename*=unicode_escape''%5Cud800",
        b"x",
    )
    converted = parse_body(MULTIPART_TYPE, body, BodyLimits())
    assert converted["a"]["filename"] == "\ufffd\ufffd\ufffd"
    orjson.dumps(converted)


def test_multipart_file_part_fields_and_defaults() -> None:
    data = bytes(range(256)) * 300  # binary, larger than the slices the reader is fed
    body = (
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="doc"; filename="x.bin"\r\n'
        b"Content-Type: Application/Octet-Stream; x=y\r\n\r\n" + data + b"\r\n"
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="doc"; filename="y"\r\n\r\nhi\r\n'
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="_charset_"\r\n\r\nutf-8\r\n'
        b"--XX--\r\n"
    )
    assert parse_body(MULTIPART_TYPE, body, BodyLimits()) == {
        "doc": [
            {
                "filename": "x.bin",
                "content_type": "application/octet-stream",
                "size": len(data),
                "data_base64": base64.b64encode(data).decode(),
            },
            {"filename": "y", "content_type": "text/plain", "size": 2, "data_base64": "aGk="},
        ],
        # An ordinary field, as it always was (aiohttp's own handling of it is broken).
        "_charset_": "utf-8",
    }


def test_multipart_transfer_encodings() -> None:
    body = (
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="b"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        b"aMOp\r\n"
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="q"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9\r\n"
        b"--XX\r\n"
        b'Content-Disposition: form-data; name="z"\r\nContent-Encoding: gzip\r\n\r\nraw\r\n'
        b"--XX--\r\n"
    )
    assert parse_body(MULTIPART_TYPE, body, BodyLimits()) == {"b": "hé", "q": "hé", "z": "raw"}
    bad = part(
        b'Content-Disposition: form-data; name="b"\r\nContent-Transfer-Encoding: base64', b"a"
    )
    assert bad_request(MULTIPART_TYPE, bad, BodyLimits()) == "form field 'b' is not valid base64"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            parts(2)[: -len(b"--XX--\r\n")],
            "the body is not valid multipart/form-data: it ends before its closing boundary",
        ),
        (
            b"no boundary here",
            "the body is not valid multipart/form-data: Could not find starting boundary b'--XX'",
        ),
        (part(b"Content-Disposition: form-data", b"x"), "a multipart/form-data part has no name"),
        (part(b"Content-Type: text/plain", b"x"), "a multipart/form-data part has no name"),
        (
            part(b"Content-Type: multipart/mixed; boundary=YY", b"--YY\r\n\r\nx\r\n--YY--"),
            "a multipart/form-data part is itself multipart; not accepted",
        ),
        (
            part(b"Bad Header", b"x"),
            "the body is not valid multipart/form-data: Invalid HTTP header: b'Bad Header'",
        ),
    ],
)
def test_multipart_malformed(body: bytes, message: str) -> None:
    assert bad_request(MULTIPART_TYPE, body, BodyLimits()) == message


def test_multipart_boundary_checks() -> None:
    message = bad_request("multipart/form-data", parts(1), BodyLimits())
    assert message == "multipart/form-data needs a boundary parameter in its Content-Type"
    message = bad_request(f"multipart/form-data; boundary={'b' * 71}", parts(1), BodyLimits())
    assert message.startswith("the body is not valid multipart/form-data: boundary ")


# --- urlencoded --------------------------------------------------------------------------


def test_urlencoded_fields_bound_exact() -> None:
    limits = BodyLimits(max_form_fields=3)
    form = "application/x-www-form-urlencoded"
    assert parse_body(form, b"a=1&b=2&a=3", limits) == {"a": ["1", "3"], "b": "2"}
    assert bad_request(form, b"a=1&b=2&c=3&d=4", limits) == "the form body has more than 3 fields"
    assert urlencoded_to_json(b"a&" * 999 + b"b") == {"a": [""] * 999, "b": ""}
    with pytest.raises(BadRequest, match=r"^the form body has more than 1000 fields$"):
        urlencoded_to_json(b"a=1&" * 1000 + b"b=2")


def test_form_bound_without_a_content_type_falls_back_to_the_json_error() -> None:
    message = bad_request(None, b"a=1&b=2", BodyLimits(max_form_fields=1))
    assert message.startswith("the body is not valid JSON: ")


# --- headers and other undecodable text --------------------------------------------------


def test_replace_undecodable() -> None:
    assert replace_undecodable("plain") == "plain"
    assert replace_undecodable("é€") == "é€"
    assert replace_undecodable("a\udcffb\udcc3\udca9") == "a\ufffdbé"
    assert replace_undecodable("\ud800x") == "\ufffd\ufffd\ufffdx"


def test_0xff_in_a_header_is_kept_with_replacement() -> None:
    raw = b"a\xffb\xc3\xa9".decode("utf-8", "surrogateescape")  # as aiohttp hands it over
    headers = CIMultiDict([("X-Sig", raw), ("X-Sig", "ok"), ("Authorization", "Bearer \udcff")])
    cleaned = clean_headers(headers)
    assert cleaned == {"x-sig": "a\ufffdbé, ok"}
    request = webhook_request(
        request_id="r1",
        flow_id="f1",
        workspace_id="w1",
        received_at=datetime.now(UTC),
        method="POST",
        path="/v1/flow-webhook/f1",
        query={},
        headers=headers,
        content_type="application/json",
        body=b"\xff",
        parsed_input={},
        mode="sync",
    )
    assert orjson.loads(request.model_dump_json())["headers"] == {"x-sig": "a\ufffdbé, ok"}


# --- off the event loop ------------------------------------------------------------------


async def test_large_bodies_are_parsed_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWHOOKS_INGRESS_PARSE_INLINE_MAX_BYTES", "10")
    nothing = cast(Any, None)
    handler = WebhookHandler(
        nothing, nothing, nothing, IngressSettings(), SignatureChecks(None, 1), nothing
    )
    seen: list[str] = []
    real = parse_input

    def recording(*args: Any) -> Any:
        seen.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(webhook_module, "parse_input", recording)
    try:
        assert await handler._parse("POST", {}, None, b'{"a": 1}') == {"a": 1}
        assert await handler._parse("POST", {}, None, b'{"a": 12345}') == {"a": 12345}
        assert await handler._parse("GET", {"q": "1"}, None, b"x" * 100) == {"q": "1"}
        with pytest.raises(BadRequest, match="has more than 50000 attributes"):
            await handler._parse("POST", {}, "application/xml", attributes_xml(50_001))
    finally:
        handler.close()
    main = threading.current_thread().name
    assert seen[0] == main
    assert seen[1].startswith("ingress-parse")
    assert seen[2] == main
    assert seen[3].startswith("ingress-parse")
