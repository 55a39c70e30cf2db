"""Jinja2 rendering of the bundled templates: strict (an undefined name is an error), every value
checked for the document's kind first (``core/render_safety.py``), XML escaped."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from apex_tools.core.render_safety import check_values, kind_of
from apex_tools.core.resources import data_path


@lru_cache(maxsize=None)
def _environment(tree: str, trim: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_path(tree))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=trim,
        lstrip_blocks=trim,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml", "xml.j2"), default=False),
    )


def render(tree: str, template: str, /, *, trim: bool = False, **values: Any) -> str:
    """Render data tree ``tree``'s ``template``; ``trim`` drops block tags' own lines.

    A value holding a control character (or, for a script, not a plain word) is refused before
    anything is rendered: ``RenderError`` names the template and the value."""
    check_values(kind_of(template), values, f"{tree}/{template}")
    return _environment(tree, trim).get_template(template).render(**values)
