import pytest

from services.runner.templates import TemplateEngine, TemplateFailure

CONTEXT = {"web1": {"kind": "myResult", "amount": 150, "items": [1, 2], "nested": {"a": "b"}}}


@pytest.fixture
def engine() -> TemplateEngine:
    return TemplateEngine(cache_size=100, render_timeout_s=0.2, max_output_chars=1_000_000)


def test_single_expression_keeps_type(engine: TemplateEngine) -> None:
    assert engine.render_value("{{ web1.kind }}", CONTEXT, "f") == "myResult"
    assert engine.render_value("{{ web1.amount > 100 }}", CONTEXT, "f") is True
    assert engine.render_value("  {{ web1.items }} ", CONTEXT, "f") == [1, 2]
    assert engine.render_value("{{ web1.amount }}", CONTEXT, "f") == 150
    assert engine.render_value("{{ web1.nested }}", CONTEXT, "f") == {"a": "b"}


def test_other_templates_render_text_then_json(engine: TemplateEngine) -> None:
    assert engine.render_value("[{{ web1.amount }}, 2]", CONTEXT, "f") == [150, 2]
    assert engine.render_value("amount {{ web1.amount }}", CONTEXT, "f") == "amount 150"
    assert engine.render_value('{"k": "{{ web1.kind }}"}', CONTEXT, "f") == {"k": "myResult"}
    assert engine.render_value("{{ web1.amount }}{{ web1.amount }}", CONTEXT, "f") == 150150


def test_json_keys_win_over_dict_methods(engine: TemplateEngine) -> None:
    assert engine.render_value("{{ web1.items }}", CONTEXT, "f") == [1, 2]


def test_undefined_names_the_field_and_the_name(engine: TemplateEngine) -> None:
    with pytest.raises(TemplateFailure, match=r"^steps\[0\]\.template: 'nope' is undefined$"):
        engine.render_value("{{ nope }}", CONTEXT, "steps[0].template")
    with pytest.raises(TemplateFailure, match="has no attribute 'missing'"):
        engine.render_value("x {{ web1.missing }}", CONTEXT, "f")


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ web1.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''.format.__globals__ }}",
        "{{ web1.items.append(3) }}",
        "{{ range(10000000) | list | length }}",
        "{{ 'a' * 50000000 }}",
        "{{ [1] * 50000000 }}",
        "{{ 10 ** 10000000 }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '{:>999999999}'.format('a') }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ '%0999999999d' | format(1) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
        "{{ self.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ request.__class__.__base__.__subclasses__() }}",
    ],
)
def test_sandbox_refuses(engine: TemplateEngine, hostile: str) -> None:
    with pytest.raises(TemplateFailure):
        engine.render_value(hostile, {"web1": {"items": [1]}, "request": {"id": "r"}}, "f")


def test_time_budget_names_the_field(engine: TemplateEngine) -> None:
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateFailure, match=r"^steps\[0\]\.template: rendering took longer"):
        engine.render_text(loops, {}, "steps[0].template")
    # The engine keeps working afterwards.
    assert engine.render_value("{{ 1 + 1 }}", {}, "f") == 2


def test_compiled_once(engine: TemplateEngine) -> None:
    first = engine.compile("{{ web1.kind }}")
    assert engine.compile("{{ web1.kind }}") is first


def test_names_referenced(engine: TemplateEngine) -> None:
    names = engine.referenced_names("{{ web1.a }}{% for x in res1.value %}{{ x }}{% endfor %}")
    assert names == {"web1", "res1"}


def test_the_sandbox_globals_reach_every_template_and_a_run_cannot_change_them(
    engine: TemplateEngine,
) -> None:
    # A template's globals are a copy of the sandbox's (a dict, for speed): all of
    # Jinja's are there, in text templates and single expressions alike.
    assert engine.render_value("{{ range(3) | list }}", CONTEXT, "f") == [0, 1, 2]
    assert engine.render_value("{{ dict(a=1) }}", CONTEXT, "f") == {"a": 1}
    text = "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
    assert engine.render_value(text + "{% endfor %}{{ ns.n }}", CONTEXT, "f") == 3
    assert (
        engine.render_value(
            "{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}", CONTEXT, "f"
        )
        == "ab"
    )
    # A context value of a global's name shadows it for that render only.
    assert engine.render_value("{{ range }}", {"range": 7}, "f") == 7
    assert engine.render_value("{{ range(2) | list }}", CONTEXT, "f") == [0, 1]
    compiled = engine.compile("{{ range(1) | list }}")
    assert type(compiled.text.globals) is dict
    assert compiled.text.globals.keys() == engine.env.globals.keys()
