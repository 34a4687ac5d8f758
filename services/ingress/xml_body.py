"""XML webhook bodies to JSON, safely, in time linear in the body and with bounds.

Safety: lxml with entity resolution, DTD loading and network access off, and any
document with a DOCTYPE refused outright (no entity tricks such as billion laughs or
external entities can apply); nesting deeper than the configured bound is refused.

Bounds (`XmlLimits`, from the ingress settings): nesting depth, elements, attributes
(in the whole document) and characters of text (text and attribute values, in the whole
document). Past one: 400 `bad_request` naming it.

Linear time and bounded memory: the document is parsed as a stream of start/end events
(lxml's pull parser, fed in slices), each element is converted once when it ends and then
cleared, so the tree never holds more than the open elements and the cleared
placeholders of their children; a bound stops the parse as soon as it is passed.
Attribute values are read in one pass (`@*`): lxml's `attrib.items()` looks each value
up by name again, which is quadratic in the attributes of one element.

Conversion (contract): the root element is the single top-level key; child elements
become keys; repeated elements become lists; attributes become `@name` keys; text
beside children or attributes is `#text`; values stay strings; an empty element is
null. Namespaced names keep their prefix (`soap:Body`).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequest

if TYPE_CHECKING:
    from lxml import etree

# lxml is imported by the functions that parse, not here: every ingress imports this
# module but few sources receive XML, and lxml costs ~15 ms of CPU at each start.

# The parser is fed this much at a time, so a bound stops it early.
FEED_BYTES = 64 * 1024
# Up to this many attributes on an element are read by name (cheap); more in one pass.
FEW_ATTRIBUTES = 8


@dataclass(frozen=True)
class XmlLimits:
    max_depth: int = 64
    max_elements: int = 50_000
    max_attributes: int = 50_000
    max_text_chars: int = 10 * 1024 * 1024


def _parser() -> "etree.XMLPullParser":
    from lxml import etree  # lazily: see the imports

    return etree.XMLPullParser(
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _syntax_error(body: bytes, exc: "etree.XMLSyntaxError") -> BadRequest:
    from lxml import etree  # lazily: see the imports

    line, column = exc.position
    message = exc.msg
    if (line, column) == (0, 0):
        # The pull parser lost what and where (an undefined entity, for one); lxml's
        # one-shot parser says it. Every bound held while the stream was read, so the
        # tree it builds up to the error is small.
        try:
            etree.fromstring(
                body,
                etree.XMLParser(
                    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
                ),
            )
        except etree.XMLSyntaxError as precise:
            (line, column), message = precise.position, precise.msg
    return BadRequest(
        f"the body is not valid XML: {message} (line {line}, column {column})",
        data={"line": line, "column": column},
    )


def _name(element: Any) -> str:
    tag: str = element.tag
    local = tag.rpartition("}")[2] if tag[:1] == "{" else tag
    prefix = element.prefix
    return f"{prefix}:{local}" if prefix else local


def _attributes(element: Any) -> list[tuple[str, str]]:
    """(name, value) of an element's attributes, in order, in time linear in them."""
    keys = element.keys()
    if len(keys) <= FEW_ATTRIBUTES:
        return list(zip(keys, element.values(), strict=True))
    return [(str(value.attrname), str(value)) for value in element.xpath("@*")]


class _Open:
    """An element whose end has not been seen yet: its name and what it holds so far."""

    __slots__ = ("name", "repeated", "value")

    def __init__(self, name: str, value: dict[str, Any]) -> None:
        self.name = name
        self.value = value
        self.repeated: set[str] = set()

    def add(self, key: str, converted: Any) -> None:
        value = self.value
        if key not in value:
            value[key] = converted
        elif key in self.repeated:
            value[key].append(converted)
        else:
            value[key] = [value[key], converted]
            self.repeated.add(key)


class _Converter:
    def __init__(self, limits: XmlLimits) -> None:
        self.limits = limits
        self.open: list[_Open] = []
        self.elements = 0
        self.attributes = 0
        self.text_chars = 0
        self.result: dict[str, Any] | None = None

    def start(self, element: Any) -> None:
        limits = self.limits
        if not self.open and element.getroottree().docinfo.doctype:
            raise BadRequest("XML with a DOCTYPE is not accepted (no DTDs or entities)")
        if len(self.open) >= limits.max_depth:
            raise BadRequest(f"the XML body is nested deeper than {limits.max_depth} levels")
        self.elements += 1
        if self.elements > limits.max_elements:
            raise BadRequest(f"the XML body has more than {limits.max_elements} elements")
        value: dict[str, Any] = {}
        attrib = element.attrib
        if attrib:
            # Counted (a walk in C) before any is read.
            self.attributes += len(attrib)
            if self.attributes > limits.max_attributes:
                raise BadRequest(f"the XML body has more than {limits.max_attributes} attributes")
            for name, attribute_value in _attributes(element):
                self._count_text(attribute_value)
                value["@" + name.rpartition("}")[2]] = attribute_value
        self.open.append(_Open(_name(element), value))

    def end(self, element: Any) -> None:
        current = self.open.pop()
        texts = [element.text or ""]
        texts.extend(child.tail or "" for child in element)
        # Its children are converted already: keep only this element's own tail.
        element.clear(keep_tail=True)
        raw = "".join(texts)
        self._count_text(raw)
        text = raw.strip()
        converted: Any
        if not current.value:
            converted = text if text else None
        else:
            converted = current.value
            if text:
                converted["#text"] = text
        if self.open:
            self.open[-1].add(current.name, converted)
        else:
            self.result = {current.name: converted}

    def _count_text(self, text: str) -> None:
        self.text_chars += len(text)
        if self.text_chars > self.limits.max_text_chars:
            raise BadRequest(
                f"the XML body has more than {self.limits.max_text_chars} characters of text"
            )

    def take(self, events: Any) -> None:
        for event, element in events:
            if event == "start":
                self.start(element)
            else:
                self.end(element)


def xml_to_json(body: bytes, limits: XmlLimits) -> dict[str, Any]:
    from lxml import etree  # lazily: see the imports

    parser = _parser()
    converter = _Converter(limits)
    try:
        for offset in range(0, len(body), FEED_BYTES):
            parser.feed(body[offset : offset + FEED_BYTES])
            converter.take(parser.read_events())
        parser.close()
        converter.take(parser.read_events())
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(body, exc) from None
    if converter.result is None:
        raise BadRequest("the body is not valid XML: no root element")
    return converter.result
