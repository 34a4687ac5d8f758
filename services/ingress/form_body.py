"""Form bodies to JSON: `application/x-www-form-urlencoded` and `multipart/form-data`.
Repeated fields become lists; a file part becomes
`{"filename", "content_type", "size", "data_base64"}` (contract).

Bounds: a urlencoded body holds at most `max_fields` fields, a multipart body at most
`max_parts` parts (400 naming the bound; a multipart body stops being read at the first
part past it). Multipart is read with aiohttp's streaming `MultipartReader`, over the
body that the ingress has already read (bounded in size and time), in time linear in the
body. A text field is decoded only with a real text charset (UTF-8, Latin-1, ...);
Python's own codecs (`unicode_escape`, `idna`, `utf-7`...) are refused.
"""

import asyncio
import base64
import binascii
import codecs
from collections.abc import Coroutine, Iterable
from typing import Any, NoReturn, TypeVar, cast
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, MultipartReader, StreamReader, hdrs
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from multidict import CIMultiDict

from services.ingress.text import replace_undecodable
from shared.errors import BadRequest

DEFAULT_MAX_FIELDS = 1000
DEFAULT_MAX_PARTS = 1000

# The body is handed to the reader in slices of this size, as if from the network:
# aiohttp copies the rest of the current slice whenever it pushes a boundary back, so
# one slice holding the whole body would make that quadratic.
FEED_BYTES = 16 * 1024

# Text codecs that Python has but that are no charset of text on the wire: they turn
# escapes into arbitrary code points (lone surrogates too) or are Windows-only aliases.
NOT_CHARSETS = frozenset(
    {
        "unicode-escape",
        "raw-unicode-escape",
        "utf-7",
        "idna",
        "punycode",
        "undefined",
        "mbcs",
        "oem",
    }
)

T = TypeVar("T")


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


def urlencoded_to_json(
    body: bytes, *, strict: bool = False, max_fields: int = DEFAULT_MAX_FIELDS
) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid form data: {exc}") from None
    # Counted as parse_qsl counts them (each `&` starts one), before any is parsed.
    if text.count("&") + 1 > max_fields:
        raise BadRequest(f"the form body has more than {max_fields} fields")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=strict)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid form data: {exc}") from None
    return multi_dict(pairs)


def text_charset(charset: str) -> str | None:
    """The codec name of `charset` if it is a real text charset, else None."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in NOT_CHARSETS:
        return None
    return info.name


def _field_text(name: str, data: bytes, charset: str) -> str:
    codec = text_charset(charset)
    if codec is None:
        raise BadRequest(f"form field {name!r} has an unsupported charset {charset!r}")
    try:
        text = data.decode(codec)
        # Any codec that could still yield a lone surrogate is refused too.
        text.encode("utf-8")
    except UnicodeError:
        raise BadRequest(f"form field {name!r} is not valid {charset} text") from None
    return text


def _transfer_decoded(name: str, part: BodyPartReader, data: bytes) -> bytes:
    """The part's bytes after its Content-Transfer-Encoding (RFC 7578 deprecates it, but
    senders still use base64 and quoted-printable). Content-Encoding is not applied:
    a compressed part stays as sent (no decompression bombs)."""
    encoding = part.headers.get("Content-Transfer-Encoding", "").strip().lower()
    try:
        if encoding == "base64":
            return binascii.a2b_base64(data)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
    except binascii.Error:
        raise BadRequest(f"form field {name!r} is not valid {encoding}") from None
    return data


def _content_type(part: BodyPartReader) -> str:
    mimetype = parse_mimetype(part.headers.get("Content-Type", ""))
    if not mimetype.type or not mimetype.subtype:
        return "text/plain"
    return replace_undecodable(f"{mimetype.type}/{mimetype.subtype}".lower())


async def _parts(reader: MultipartReader, max_parts: int) -> list[tuple[str, Any]]:
    fields: list[tuple[str, Any]] = []
    while (part := await reader.next()) is not None:
        if len(fields) >= max_parts:
            raise BadRequest(f"the multipart/form-data body has more than {max_parts} parts")
        if not isinstance(part, BodyPartReader):
            raise BadRequest("a multipart/form-data part is itself multipart; not accepted")
        # Parsed once here (`part.name` and `part.filename` would parse it twice).
        _, params = parse_content_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
        raw_name = content_disposition_filename(params, "name")
        if raw_name is None:
            raise BadRequest("a multipart/form-data part has no name")
        name = replace_undecodable(raw_name)
        data = _transfer_decoded(name, part, bytes(await part.read()))
        filename = content_disposition_filename(params, "filename")
        if filename is not None:
            fields.append(
                (
                    name,
                    {
                        "filename": replace_undecodable(filename),
                        "content_type": _content_type(part),
                        "size": len(data),
                        "data_base64": base64.b64encode(data).decode(),
                    },
                )
            )
        else:
            fields.append((name, _field_text(name, data, part.get_charset("utf-8"))))
    return fields


class _FormDataReader(MultipartReader):
    """aiohttp's reader without its RFC 7578 `_charset_` special case: that case leaves
    the `_charset_` part's closing delimiter unread and then fails on the next part
    (aio-libs/aiohttp#13640, open). Here `_charset_` is an ordinary field, as it always
    was for flowhooks; every part names its own charset or is UTF-8."""

    async def next(self) -> MultipartReader | BodyPartReader | None:
        if self._at_eof:
            return None
        await self._maybe_release_last_part()
        if self._at_bof:
            await self._read_until_first_boundary()
            self._at_bof = False
        else:
            await self._read_boundary()
        if self._at_eof:
            return None
        self._last_part = await self.fetch_next_part()
        return self._last_part


class _InMemory:
    """What a `StreamReader` asks of its protocol and loop. The body is all in memory and
    fed before reading starts, so reading never waits and reading is never paused."""

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def create_future(self) -> NoReturn:
        raise _WouldWait


class _WouldWait(Exception):
    pass


def _run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (it only reads a body already in memory) to its
    end, here, without an event loop: usable on the loop and in a worker thread alike."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise _WouldWait


def _stream(body: bytes) -> StreamReader:
    in_memory = _InMemory()
    stream = StreamReader(
        cast(BaseProtocol, in_memory),
        2**16,
        loop=cast(asyncio.AbstractEventLoop, in_memory),
    )
    for offset in range(0, len(body), FEED_BYTES):
        stream.feed_data(body[offset : offset + FEED_BYTES])
    stream.feed_eof()
    return stream


def multipart_to_json(
    content_type: str, body: bytes, *, max_parts: int = DEFAULT_MAX_PARTS
) -> dict[str, Any]:
    if "boundary" not in parse_mimetype(content_type).parameters:
        raise BadRequest("multipart/form-data needs a boundary parameter in its Content-Type")
    try:
        reader = _FormDataReader(CIMultiDict({"Content-Type": content_type}), _stream(body))
        fields = _run_to_end(_parts(reader, max_parts))
    except BadRequest:
        raise
    except _WouldWait:
        # The body ended where a part was still expected.
        raise BadRequest("the body is not valid multipart/form-data: it ends early") from None
    except (ValueError, RuntimeError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest(f"the body is not valid multipart/form-data: {_reason(exc)}") from None
    return multi_dict(fields)


def _reason(exc: Exception) -> str:
    if str(exc) == "Reading after EOF":
        return "it ends before its closing boundary"
    if isinstance(exc, HttpProcessingError):
        return replace_undecodable(exc.message.splitlines()[0] if exc.message else "bad headers")
    return replace_undecodable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
