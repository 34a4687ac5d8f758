"""Turn an incoming webhook into a `WebhookRequest`: the body parsed to JSON by its
content type, the query, and the headers (names lower-cased; `authorization` never
passes on)."""

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from multidict import MultiMapping

from services.ingress.form_body import (
    DEFAULT_MAX_FIELDS,
    DEFAULT_MAX_PARTS,
    multipart_to_json,
    urlencoded_to_json,
)
from services.ingress.text import replace_undecodable
from services.ingress.xml_body import XmlLimits, xml_to_json
from shared.errors import BadRequest
from shared.schemas.runs import WebhookRequest
from shared.schemas.vocabulary import RunMode

# Never handed to flows, the runner or the debugger.
DROPPED_HEADERS = frozenset({"authorization"})
# Integers kept exact. orjson reads any other integer as the nearest float without a
# word (18446744073709551616 becomes 1.8446744073709552e19), and could not encode it as an
# integer again: a body holding one is refused (400) rather than silently changed.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class BodyLimits:
    """The bounds of body parsing, each the setting `FLOWHOOKS_INGRESS_<FIELD>` (read by
    name in `webhook.body_limits`; defaults as in `IngressSettings`)."""

    max_json_depth: int = 64
    max_xml_depth: int = 64
    max_xml_elements: int = XmlLimits.max_elements
    max_xml_attributes: int = XmlLimits.max_attributes
    max_xml_text_chars: int = XmlLimits.max_text_chars
    max_form_fields: int = DEFAULT_MAX_FIELDS
    max_form_parts: int = DEFAULT_MAX_PARTS

    @property
    def xml(self) -> XmlLimits:
        return XmlLimits(
            max_depth=self.max_xml_depth,
            max_elements=self.max_xml_elements,
            max_attributes=self.max_xml_attributes,
            max_text_chars=self.max_xml_text_chars,
        )


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_xml(media: str) -> bool:
    return media in ("application/xml", "text/xml") or media.endswith("+xml")


def json_shape(value: Any) -> tuple[int, bool]:
    """Nesting depth of parsed JSON, and whether it holds a float that may be an integer
    out of range (a whole number beyond 2^63: orjson's reading of one); no recursion."""
    deepest, suspect, stack = 0, False, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, float) and abs(node) >= 2**63 and node.is_integer():
            suspect = True
    return deepest, suspect


# Where a JSON number may be a float orjson made of an integer past 2^63: a digit before
# an exponent, or 19 digits in a row (in a string too: the check only has to be sure).
_MAY_BE_LARGE = re.compile(rb"[0-9][eE]|[0-9]{19}")


def may_exceed(body: bytes, max_depth: int) -> bool:
    """Whether the body's JSON may be nested past `max_depth` or hold an inexact
    integer; False lets `parse_json` skip the walk of what it parsed (`json_shape`), as
    for most bodies: nesting needs a bracket per level, and such a float a long number
    or an exponent."""
    if body.count(b"{") + body.count(b"[") > max_depth:
        return True
    return _MAY_BE_LARGE.search(body) is not None


def _exact_integer(literal: str) -> int:
    # No JSON integer has leading zeros: more than 20 digits is out of range, and int()
    # of a very long literal would cost seconds.
    if len(literal.lstrip("-")) <= 20 and INT_MIN <= (value := int(literal)) <= INT_MAX:
        return value
    shown = literal if len(literal) <= 40 else f"{literal[:40]}..."
    raise BadRequest(
        f"the JSON body holds the integer {shown}, outside the range of exact integers"
        f" ({INT_MIN} to {INT_MAX}); send larger numbers as strings"
    )


def refuse_inexact_integers(body: bytes) -> None:
    """`BadRequest` if the body holds an integer literal out of range. Only called when
    the parsed body has a suspect float: it may also be a float literal (1e19), which
    is fine; only the text tells them apart (the standard library hands every integer
    literal to `parse_int`)."""
    try:
        json.loads(body, parse_int=_exact_integer, object_pairs_hook=lambda _: None)
    except ValueError:
        return  # orjson read it; the standard library's quirks are not the sender's fault


def parse_json(body: bytes, max_depth: int = 64) -> Any:
    """The body as JSON; `{}` for an empty body; `BadRequest` saying what and where."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's message names line and column: "... line 1 column 9 (char 8)".
        raise BadRequest(
            f"the body is not valid JSON: {exc}", data={"line": exc.lineno, "column": exc.colno}
        ) from None
    if not may_exceed(body, max_depth):
        return value
    depth, suspect = json_shape(value)
    if depth > max_depth:
        raise BadRequest(f"the JSON body is nested deeper than {max_depth} levels")
    if suspect:
        refuse_inexact_integers(body)
    return value


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


def parse_body(content_type: str | None, body: bytes, limits: BodyLimits) -> Any:
    media = media_type(content_type)
    if not body.strip():
        return {}
    if is_xml(media):
        return xml_to_json(body, limits.xml)
    if media == "multipart/form-data":
        return multipart_to_json(content_type or "", body, max_parts=limits.max_form_parts)
    if media == "application/json" or media.endswith("+json"):
        return parse_json(body, limits.max_json_depth)
    if media == "application/x-www-form-urlencoded" and not looks_like_json(body):
        return urlencoded_to_json(body, max_fields=limits.max_form_fields)
    # Any other or no content type, and JSON sent as form data (curl -d does that):
    # JSON, else form data (the original product's rule).
    try:
        return parse_json(body, limits.max_json_depth)
    except BadRequest as json_error:
        try:
            return urlencoded_to_json(body, strict=True, max_fields=limits.max_form_fields)
        except BadRequest:
            raise json_error from None


def clean_headers(headers: MultiMapping[str]) -> dict[str, str]:
    """Names lower-cased, repeated headers joined with `, `, `authorization` left out, and
    bytes that are not UTF-8 kept as U+FFFD (aiohttp hands them over as lone surrogates,
    which nothing downstream could encode)."""
    cleaned: dict[str, str] = {}
    for raw_name, value in headers.items():
        lower = raw_name.lower()
        if not (lower.isascii() and value.isascii()):  # what replace_undecodable keeps
            lower, value = replace_undecodable(lower), replace_undecodable(value)
        if lower in DROPPED_HEADERS:
            continue
        cleaned[lower] = f"{cleaned[lower]}, {value}" if lower in cleaned else value
    return cleaned


def parse_input(
    method: str,
    query: dict[str, Any],
    content_type: str | None,
    body: bytes,
    limits: BodyLimits,
) -> Any:
    """What the flow sees under the webhook's ref-id. GET has no body: its query is it."""
    return query if method == "GET" else parse_body(content_type, body, limits)


def parse_push_input(
    method: str,
    query: dict[str, Any],
    content_type: str | None,
    body: bytes,
    limits: BodyLimits,
) -> Any:
    """A `google-pubsub` flow's input: the push envelope with its `message.data` decoded
    (`decode_push_data`)."""
    return decode_push_data(parse_input(method, query, content_type, body, limits), limits)


def decode_push_data(envelope: Any, limits: BodyLimits) -> Any:
    """A Pub/Sub push envelope (`{"message": {"data": <base64>, "attributes": ...,
    "messageId": ...}, "subscription": ...}`) with `message.data` decoded: a JSON object
    or array parsed (within the JSON bounds), other UTF-8 text as text, and bytes that
    are not UTF-8 left in base64. Data that is not base64 is a 400."""
    message = envelope.get("message") if isinstance(envelope, dict) else None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(data, str):
        return envelope
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error is one
        raise BadRequest("the Pub/Sub message's data is not base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return envelope  # binary data: the flow gets it in base64, as sent
    decoded: Any = text
    if looks_like_json(raw):
        try:
            decoded = parse_json(raw, limits.max_json_depth)
        except BadRequest:
            decoded = text  # text that only looks like JSON
    return {**envelope, "message": {**message, "data": decoded}}


def webhook_request(
    *,
    request_id: str,
    flow_id: str,
    workspace_id: str,
    received_at: datetime,
    method: str,
    path: str,
    query: dict[str, Any],
    headers: MultiMapping[str],
    content_type: str | None,
    body: bytes,
    parsed_input: Any,
    mode: RunMode,
    trace: dict[str, str] | None = None,
) -> WebhookRequest:
    return WebhookRequest(
        request_id=request_id,
        flow_id=flow_id,
        workspace_id=workspace_id,
        received_at=received_at,
        method=method,
        path=path,
        query=query,
        headers=clean_headers(headers),
        content_type=content_type,
        **raw_body_fields(body),
        input=parsed_input,
        mode=mode,
        trace=trace or {},
    )


def raw_body_fields(body: bytes) -> dict[str, str]:
    """The body byte for byte: its text when it is UTF-8, else base64 (so that a
    signature can be checked again from the debugger's record)."""
    try:
        return {"raw_body": body.decode("utf-8"), "raw_body_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"raw_body": base64.b64encode(body).decode(), "raw_body_encoding": "base64"}
