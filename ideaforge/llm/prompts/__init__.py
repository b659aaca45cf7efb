"""Prompt templates (``*.md`` beside this module), filled with ``string.Template`` (``$name`` placeholders)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template

_DIR = Path(__file__).resolve().parent


@cache
def _template(name: str) -> Template:
    path = _DIR / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {name!r} in {_DIR}")
    return Template(path.read_text())


def render(name: str, **values: object) -> str:
    """Fill template ``name``; a missing value raises KeyError naming it."""
    return _template(name).substitute({k: str(v) for k, v in values.items()}).strip() + "\n"


def render_files(files: dict[str, str]) -> str:
    """Files shown to a model as ``<file path="...">`` blocks (the format the fake server parses too)."""
    return "\n".join(
        f'<file path="{p}">\n{c}{"" if c.endswith(chr(10)) else chr(10)}</file>' for p, c in files.items()
    )
