"""Text that came in as bytes and may not be UTF-8.

aiohttp decodes header values (of the request and of multipart parts) as UTF-8 with
`surrogateescape`: a `0xFF` byte arrives as the lone surrogate `\\udcff`, which no JSON
encoder accepts downstream. Such text is kept, with U+FFFD in place of what could not be
decoded.
"""


def replace_undecodable(text: str) -> str:
    """`text` with every undecodable byte (a lone surrogate) as U+FFFD; ASCII and valid
    text come back as they are (the usual case costs one `isascii` or one encode)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        # The bytes that surrogateescape smuggled in, then U+FFFD for each bad one.
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A lone surrogate that is not an escaped byte (none should reach here).
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
