"""The README of an embedded benchmark's build: a Markdown template in `emq/bench/templates/`, filled in.

Templates use `string.Template` placeholders (`${name}`); the builder computes and
formats every value, so a template holds only text and its layout can be edited
without touching code.
"""
from __future__ import annotations

from importlib.resources import files
from string import Template
from typing import Mapping


def render_readme(template: str, fields: Mapping[str, object]) -> str:
    """Return template `templates/<template>.md` with every `${name}` replaced by `fields[name]`."""
    text = files("emq.bench").joinpath("templates", f"{template}.md").read_text(encoding="utf-8")
    return Template(text).substitute(fields)
