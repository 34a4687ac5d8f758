"""The debugger page's tracing UI link (FLOWHOOKS_DEBUGGER_TRACE_URL_TEMPLATE): only an
http(s) URL naming `{trace_id}` is taken, and it reaches the page as an escaped
attribute value (the page fills in the id; tests/e2e/test_debugger_pages.py)."""

from typing import Any

import pytest
from pydantic import ValidationError

from services.debugger.settings import DebuggerSettings
from services.debugger.ui import DebuggerUi

TEMPLATE = "https://jaeger.example/trace/{trace_id}?a=1&b=2"


def settings(**env: Any) -> DebuggerSettings:
    return DebuggerSettings(database_url="postgresql://x/y", **env)


def test_the_template_is_optional_and_checked() -> None:
    assert settings().debugger_trace_url_template is None
    assert settings(debugger_trace_url_template="").debugger_trace_url_template is None
    assert settings(debugger_trace_url_template=TEMPLATE).debugger_trace_url_template == TEMPLATE
    for refused in (
        "javascript:alert(1)//{trace_id}",
        "data:text/html,{trace_id}",
        "//jaeger.example/trace/{trace_id}",
        "https://jaeger.example/trace/",  # no place for the id
    ):
        with pytest.raises(ValidationError):
            settings(debugger_trace_url_template=refused)


def test_the_page_carries_it_escaped() -> None:
    shell = DebuggerUi(None, None, 'https://x.example/{trace_id}?q="><b>').index_html()  # type: ignore[arg-type]
    assert 'data-trace-url-template="https://x.example/{trace_id}?q=&#34;&gt;&lt;b&gt;"' in shell
    assert 'data-trace-url-template=""' in DebuggerUi(None, None).index_html()  # type: ignore[arg-type]
