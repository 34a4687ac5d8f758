"""Form bodies to JSON: `application/x-www-form-urlencoded` and `multipart/form-data`.
Repeated fields become lists; a file part becomes
`{"filename", "content_type", "size", "data_base64"}` (contract)."""

import base64
from collections.abc import Iterable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from shared.errors import BadRequest


def multi_dict(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Repeated keys become lists, in order."""
    result: dict[str, Any] = {}
    repeated: set[str] = set()
    for key, value in items:
        if key not in result:
            result[key] = value
        elif key in repeated:
            result[key].append(value)
        else:
            result[key] = [result[key], value]
            repeated.add(key)
    return result


def urlencoded_to_json(body: bytes, *, strict: bool = False) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=strict)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not valid form data: {exc}") from None
    return multi_dict(pairs)


def _part_value(part: Message) -> Any:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    filename = part.get_filename()
    if filename is not None:
        return {
            "filename": filename,
            "content_type": part.get_content_type(),
            "size": len(data),
            "data_base64": base64.b64encode(data).decode(),
        }
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise BadRequest(
            f"form field {part.get_param('name', header='content-disposition')!r}"
            f" is not valid {charset} text"
        ) from None


def multipart_to_json(content_type: str, body: bytes) -> dict[str, Any]:
    if "boundary=" not in content_type:
        raise BadRequest("multipart/form-data needs a boundary parameter in its Content-Type")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise BadRequest("the body is not valid multipart/form-data")
    fields: list[tuple[str, Any]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise BadRequest("a multipart/form-data part has no name")
        fields.append((name, _part_value(part)))
    return multi_dict(fields)
