"""Jinja2 templates for flows: one immutable sandbox per runner process, templates
compiled once and cached, and the contract's rule for templated fields:

- a field that is exactly one `{{ expression }}` keeps the expression's value and type
  (a list stays a list, `{{ web1.amount > 100 }}` is a boolean);
- any other template renders to text, and text that is valid JSON is parsed as JSON.

Undefined names are errors that name the field and the missing name.

Bounds (the sandbox alone does not limit CPU or memory): every render runs under the
process's `RenderWatchdog` CPU-time budget, its own or one it shares with other renders
(`RenderBudget`: the webhook response's templates, an `http` step's fields); `*`, `**`
and `%` refuse results beyond the size limit (`'a' * 50000000`); rendered output beyond
the size limit fails the render; `range` is capped by the sandbox (100,000 items).
"""

import functools
import re
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.runner.bounds import RunBounds
from services.runner.render_budget import RenderBudget, RenderTimeout, RenderWatchdog

_SINGLE_EXPRESSION = re.compile(
    r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%|%\}|\{#).)*)\}\}\s*$", re.DOTALL
)


_WIDE_FORMAT = re.compile(r"\d{5,}")


class FlowSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with two changes: `web1.items` is the key `items` of the
    webhook body when it has one (not the dict method), and operators that can build
    huge values in one step are bounded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, max_value_size: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_value_size = max_value_size

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A compiled template's globals as a plain dict, not Jinja's `ChainMap` over
        the environment's: every render copies them (`dict(globals, **context)`) and
        takes their keys, which is C for a dict and a Python-level walk of both maps for
        a ChainMap (half of a short render's CPU, bench.worker_cpu). The only thing
        lost, a later change to the environment's globals reaching templates compiled
        before it, cannot happen: the sandbox's globals are set at its construction."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, (str, list, tuple))
                    and isinstance(times, int)
                    and len(sequence) * times > self.max_value_size
                ):
                    raise SecurityError(f"the result of * is over {self.max_value_size} items")
        elif operator == "**":
            if isinstance(right, int) and isinstance(left, int) and abs(right) > 10_000:
                raise SecurityError("exponent too large")
        elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise SecurityError("format widths over 9999 are not allowed")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        # "{:>999999999}".format(x) would allocate gigabytes.
        self_str = getattr(value, "__self__", None)
        if (
            getattr(value, "__name__", None) in ("format", "format_map")
            and isinstance(self_str, str)
            and _WIDE_FORMAT.search(self_str)
        ):
            raise SecurityError("format widths over 9999 are not allowed")
        return super().wrap_str_format(value)


def _bounded_filters(env: FlowSandbox) -> None:
    """Filters whose width argument can allocate without limit get a bound."""
    limit = 10_000

    def checked(name: str, width_arg: int) -> None:
        original = env.filters[name]

        @functools.wraps(original)  # keeps Jinja's pass_environment marker
        def bounded(*args: Any, **kwargs: Any) -> Any:
            width = kwargs.get("width", args[width_arg] if len(args) > width_arg else 0)
            if isinstance(width, int) and width > limit:
                raise SecurityError(f"{name}: widths over {limit} are not allowed")
            if name == "format" and isinstance(args[0], str) and _WIDE_FORMAT.search(args[0]):
                raise SecurityError("format widths over 9999 are not allowed")
            return original(*args, **kwargs)

        env.filters[name] = bounded

    for name, width_arg in (("center", 1), ("indent", 1), ("wordwrap", 2), ("format", 99)):
        checked(name, width_arg)


class TemplateFailure(Exception):
    """A template could not be compiled or rendered; the message names the field."""


class RenderBudgetFailure(TemplateFailure):
    """A render used up its CPU-time budget (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S)."""


@dataclass(frozen=True)
class CompiledTemplate:
    source: str
    text: Any  # jinja2.Template
    expression: Any | None  # jinja2 TemplateExpression for single-expression fields


class TemplateEngine:
    def __init__(
        self,
        cache_size: int = 10_000,
        render_timeout_s: float = 0.5,
        max_output_chars: int = 1_000_000,
        watchdog: RenderWatchdog | None = None,
    ) -> None:
        self.env = FlowSandbox(
            max_output_chars,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        _bounded_filters(self.env)
        self.cache_size = cache_size
        self.render_timeout_s = render_timeout_s
        self.max_output_chars = max_output_chars
        self.watchdog = watchdog or RenderWatchdog()
        self._cache: OrderedDict[str, CompiledTemplate] = OrderedDict()

    @classmethod
    def bounded(cls, bounds: RunBounds) -> "TemplateEngine":
        """The engine of a runner's runs (its cache, render budget and output bound)."""
        return cls(bounds.template_cache_size, bounds.render_timeout_s, bounds.max_output_chars)

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

    def _generate(
        self, compiled: CompiledTemplate, context: dict[str, Any], budget: RenderBudget | None
    ) -> str:
        chunks: list[str] = []
        size = 0
        with self.watchdog.limit(self.render_timeout_s, budget):
            for chunk in compiled.text.generate(context):
                size += len(chunk)
                if size > self.max_output_chars:
                    raise TemplateFailure(
                        f"the output is larger than {self.max_output_chars} characters"
                        " (FLOWHOOKS_RUNNER_MAX_OUTPUT_CHARS)"
                    )
                chunks.append(chunk)
        return "".join(chunks)

    @contextmanager
    def _failures(self, field: str, budget: RenderBudget | None = None) -> Iterator[None]:
        """Every way a render can fail, as one `TemplateFailure` naming the field."""
        try:
            yield
        except RenderTimeout:
            if budget is not None:
                raise RenderBudgetFailure(
                    f"{field}: rendering {budget.what} took longer than {budget.seconds:g} s"
                    " of CPU time in all (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S)"
                ) from None
            raise RenderBudgetFailure(
                f"{field}: rendering took longer than {self.render_timeout_s:g} s of CPU"
                " time (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S)"
            ) from None
        except TemplateFailure as exc:
            raise TemplateFailure(f"{field}: {exc}") from None
        except TemplateError as exc:
            raise TemplateFailure(f"{field}: {exc.message or type(exc).__name__}") from None
        except RecursionError:
            raise TemplateFailure(f"{field}: recursion too deep") from None
        except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
            raise TemplateFailure(f"{field}: {type(exc).__name__}: {str(exc)[:500]}") from None

    def budget(self, what: str) -> RenderBudget:
        """One render budget (FLOWHOOKS_RUNNER_RENDER_TIMEOUT_S) for several templates
        rendered as one unit; `what` names them in the error."""
        return RenderBudget(self.render_timeout_s, what)

    def render_text(
        self,
        source: str,
        context: dict[str, Any],
        field: str,
        budget: RenderBudget | None = None,
    ) -> str:
        """`source` rendered to text, within its own render budget or `budget`."""
        with self._failures(field, budget):
            return self._generate(self.compile(source), context, budget)

    def render_value(
        self,
        source: str,
        context: dict[str, Any],
        field: str,
        budget: RenderBudget | None = None,
    ) -> Any:
        """The contract's templated-field rule (see the module docstring)."""
        with self._failures(field, budget):
            compiled = self.compile(source)
            if compiled.expression is not None:
                with self.watchdog.limit(self.render_timeout_s, budget):
                    value = compiled.expression(**context)
                if isinstance(value, StrictUndefined):
                    str(value)  # raises the UndefinedError that names the missing name
                if isinstance(value, (str, bytes)) and len(value) > self.max_output_chars:
                    # Containers are bounded where the value is used (bounds.json_value).
                    raise TemplateFailure(
                        f"the value is larger than {self.max_output_chars} characters"
                        " (FLOWHOOKS_RUNNER_MAX_OUTPUT_CHARS)"
                    )
                return value
        return parse_if_json(self.render_text(source, context, field, budget))


def parse_if_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
