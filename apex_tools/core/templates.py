"""Jinja2 rendering of the bundled templates: strict (an undefined name is an error), no escaping."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from apex_tools.core.resources import data_path


@lru_cache(maxsize=None)
def _environment(tree: str, trim: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_path(tree))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=trim,
        lstrip_blocks=trim,
        autoescape=False,
    )


def render(tree: str, name: str, *, trim: bool = False, **values: Any) -> str:
    """Render data tree ``tree``'s template ``name``; ``trim`` drops block tags' own lines."""
    return _environment(tree, trim).get_template(name).render(**values)
