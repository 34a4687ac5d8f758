"""XML webhook bodies to JSON, safely.

Safety: lxml with entity resolution, DTD loading and network access off, and any
document with a DOCTYPE refused outright (no entity tricks such as billion laughs or
external entities can apply); nesting deeper than the configured bound is refused.

Conversion (contract): the root element is the single top-level key; child elements
become keys; repeated elements become lists; attributes become `@name` keys; text
beside children or attributes is `#text`; values stay strings; an empty element is
null. Namespaced names keep their prefix (`soap:Body`).
"""

from typing import Any

from lxml import etree

from shared.errors import BadRequest


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _name(element: Any) -> str:
    qname = etree.QName(element)
    prefix = element.prefix
    return f"{prefix}:{qname.localname}" if prefix else str(qname.localname)


def _convert(element: Any, depth: int, max_depth: int) -> Any:
    if depth > max_depth:
        raise BadRequest(f"the XML body is nested deeper than {max_depth} levels")
    value: dict[str, Any] = {}
    for attribute, attribute_value in element.attrib.items():
        local = etree.QName(attribute).localname
        value[f"@{local}"] = str(attribute_value)
    texts = [element.text or ""]
    repeated: set[str] = set()
    for child in element:
        texts.append(child.tail or "")
        if not isinstance(child.tag, str):  # an unresolved entity or similar: not data
            continue
        key = _name(child)
        converted = _convert(child, depth + 1, max_depth)
        if key not in value:
            value[key] = converted
        elif key in repeated:
            value[key].append(converted)
        else:
            value[key] = [value[key], converted]
            repeated.add(key)
    text = "".join(texts).strip()
    if not value:
        return text if text else None
    if text:
        value["#text"] = text
    return value


def xml_to_json(body: bytes, max_depth: int) -> dict[str, Any]:
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise BadRequest(
            f"the body is not valid XML: {exc.msg} (line {line}, column {column})",
            data={"line": line, "column": column},
        ) from None
    if root is None:
        raise BadRequest("the body is not valid XML: no root element")
    if root.getroottree().docinfo.doctype:
        raise BadRequest("XML with a DOCTYPE is not accepted (no DTDs or entities)")
    return {_name(root): _convert(root, 1, max_depth)}
