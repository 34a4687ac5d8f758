"""Jinja2 templates for flows: one immutable sandbox per runner process, templates
compiled once and cached, and the contract's rule for templated fields:

- a field that is exactly one `{{ expression }}` keeps the expression's value and type
  (a list stays a list, `{{ web1.amount > 100 }}` is a boolean);
- any other template renders to text, and text that is valid JSON is parsed as JSON.

Undefined names are errors that name the field and the missing name.
"""

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPRESSION = re.compile(
    r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%|%\}|\{#).)*)\}\}\s*$", re.DOTALL
)


class FlowSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with one change for JSON data: `web1.items` is the key
    `items` of the webhook body when it has one, not the dict method."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


class TemplateFailure(Exception):
    """A template could not be compiled or rendered; the message names the field."""


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    text: Any  # jinja2.Template
    expression: Any | None  # jinja2 TemplateExpression for single-expression fields


class TemplateEngine:
    def __init__(self, cache_size: int = 10_000) -> None:
        self.env = FlowSandbox(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
        )
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CompiledTemplate] = OrderedDict()

    def check_syntax(self, source: str) -> nodes.Template:
        """Parse only (validation on save); raises `TemplateSyntaxError`."""
        return self.env.parse(source)

    def referenced_names(self, source: str) -> set[str]:
        return set(meta.find_undeclared_variables(self.check_syntax(source)))

    def compile(self, source: str) -> CompiledTemplate:
        """Compiled once per distinct source text and kept (bounded LRU)."""
        compiled = self._cache.get(source)
        if compiled is not None:
            self._cache.move_to_end(source)
            return compiled
        match = _SINGLE_EXPRESSION.match(source)
        try:
            expression = (
                self.env.compile_expression(match["expr"], undefined_to_none=False)
                if match
                else None
            )
            compiled = CompiledTemplate(source, self.env.from_string(source), expression)
        except TemplateSyntaxError as exc:
            raise TemplateFailure(
                f"template syntax error on line {exc.lineno}: {exc.message}"
            ) from None
        self._cache[source] = compiled
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return compiled

    def render_text(self, source: str, context: dict[str, Any], field: str) -> str:
        try:
            return str(self.compile(source).text.render(context))
        except TemplateFailure as exc:
            raise TemplateFailure(f"{field}: {exc}") from None
        except TemplateError as exc:
            raise TemplateFailure(f"{field}: {exc.message or type(exc).__name__}") from None
        except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
            raise TemplateFailure(f"{field}: {type(exc).__name__}: {exc}") from None

    def render_value(self, source: str, context: dict[str, Any], field: str) -> Any:
        """The contract's templated-field rule (see the module docstring)."""
        try:
            compiled = self.compile(source)
            if compiled.expression is not None:
                value = compiled.expression(**context)
                if isinstance(value, StrictUndefined):
                    str(value)  # raises the UndefinedError that names the missing name
                return value
        except TemplateFailure as exc:
            raise TemplateFailure(f"{field}: {exc}") from None
        except TemplateError as exc:
            raise TemplateFailure(f"{field}: {exc.message or type(exc).__name__}") from None
        except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
            raise TemplateFailure(f"{field}: {type(exc).__name__}: {exc}") from None
        return parse_if_json(self.render_text(source, context, field))


def parse_if_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
