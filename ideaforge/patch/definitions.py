"""Code blocks that hold only whole definitions: "replace make_norm with this" applied where it can only go.

A fragment (a code block that is neither a diff nor a whole file) is applied when it consists only of complete
function and class definitions (and, before them, import lines), and each definition names exactly one
definition of the same kind in the file: that definition is replaced whole, re-indented to where it stands. A
class given with only some of its methods replaces just those methods. Anything else is refused with the reason:
a name the file does not define, a name defined in several places, statements other than definitions, an
elision (``# ... rest unchanged``), or a fragment that does not parse.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from ideaforge.patch.apply import PatchError
from ideaforge.patch.repair import ELISION_RE

Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class Span:
    """Lines ``start``..``end`` (0-based, inclusive) of a definition, decorators included, and its indentation."""

    start: int
    end: int
    indent: int


def _span(node: Def) -> Span:
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return Span(first - 1, (node.end_lineno or node.lineno) - 1, node.col_offset)


def _defs(body: list[ast.stmt]) -> list[Def]:
    return [n for n in body if isinstance(n, Def)]


def _kind(node: Def) -> str:
    return "class" if isinstance(node, ast.ClassDef) else "function"


def _parse(text: str, what: str) -> ast.Module:
    try:
        return ast.parse(text)
    except SyntaxError as e:
        raise PatchError(f"{what} does not parse ({e.msg}, line {e.lineno}); nothing was applied") from e


def _fragment(lines: list[str]) -> tuple[list[str], ast.Module]:
    """The block dedented and parsed; PatchError unless it is import lines, then whole definitions only."""
    if any(ELISION_RE.match(ln) for ln in lines):
        raise PatchError(
            "the code block is a fragment with an elision (`# ... unchanged`): what it stands for cannot be "
            "checked; nothing was applied. Send a unified diff"
        )
    text = textwrap.dedent("\n".join(lines))
    tree = _parse(text, "the code block")
    seen_def = False
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom) and not seen_def:
            continue
        if not isinstance(stmt, Def):
            raise PatchError(
                f"the code block holds statements other than whole definitions (line {stmt.lineno}), so where it "
                "goes in the file cannot be told; nothing was applied. Send a unified diff"
            )
        seen_def = True
    if not seen_def:
        raise PatchError("the code block defines nothing to replace; nothing was applied. Send a unified diff")
    return text.split("\n"), tree


def _all_defs(tree: ast.Module) -> list[tuple[str, Def]]:
    """Every definition of a module with its dotted place (``MLP.forward``), nested ones included."""
    out: list[tuple[str, Def]] = []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in _defs(body):
            out.append((prefix + node.name, node))
            walk(node.body, prefix + node.name + ".")

    walk(tree.body, "")
    return out


def _the_one(name: str, kind: str, among: list[tuple[str, Def]], path: str) -> Def:
    hits = [(place, n) for place, n in among if n.name == name and _kind(n) == kind]
    if not hits:
        raise PatchError(
            f"the code block defines {kind} {name}, which {path} does not have: where it goes is a guess; nothing "
            "was applied. Send a unified diff"
        )
    if len(hits) > 1:
        places = ", ".join(place for place, _ in hits)
        raise PatchError(
            f"the code block defines {kind} {name}, which {path} defines {len(hits)} times ({places}): which one "
            "it replaces is a guess; nothing was applied. Send a unified diff"
        )
    return hits[0][1]


def _replacement(frag: list[str], node: Def, indent: int) -> list[str]:
    s = _span(node)
    return [(" " * indent + ln) if ln.strip() else "" for ln in textwrap.dedent("\n".join(frag[s.start : s.end + 1])).split("\n")]


def _edits(frag: list[str], new: Def, old: Def, path: str) -> list[tuple[Span, list[str]]]:
    """(span in the file, lines) for ``new`` replacing ``old``: whole, or method by method for a class given
    with only some of its methods (the others stay as they are)."""
    if isinstance(new, ast.ClassDef) and isinstance(old, ast.ClassDef):
        given = {n.name for n in _defs(new.body)}
        kept = {n.name for n in _defs(old.body)}
        if not kept <= given:
            if _header(new) != _header(old):
                raise PatchError(
                    f"the code block changes the header of class {new.name} but gives only some of its methods: "
                    "what becomes of the others is a guess; nothing was applied. Send a unified diff"
                )
            if any(not isinstance(n, Def) for n in new.body):
                raise PatchError(
                    f"the code block gives class {new.name} without its methods {sorted(kept - given)} but with "
                    "other statements: whether they were meant to go is a guess; nothing was applied. Send a "
                    "unified diff"
                )
            old_methods = [(m.name, m) for m in _defs(old.body)]
            return [
                e for m in _defs(new.body) for e in _edits(frag, m, _the_one(m.name, _kind(m), old_methods, path), path)
            ]
    return [(_span(old), _replacement(frag, new, _span(old).indent))]


def _header(node: ast.ClassDef) -> str:
    return ast.dump(ast.Module(body=[*node.bases, *node.keywords, *node.decorator_list], type_ignores=[]))


def _import_lines(frag: list[str], tree: ast.Module, old_lines: list[str]) -> list[str]:
    have = {ln.strip() for ln in old_lines}
    lines = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            for ln in frag[stmt.lineno - 1 : (stmt.end_lineno or stmt.lineno)]:
                if ln.strip() not in have:
                    lines.append(ln)
    return lines


def _import_position(tree: ast.Module) -> int:
    """The line after the file's last top-level import (after its docstring when it has none)."""
    at = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            at = stmt.end_lineno or stmt.lineno
        elif at == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            at = stmt.end_lineno or stmt.lineno
    return at


def replace_definitions(block: list[str], old: str, path: str) -> list[str]:
    """The lines of ``old`` with each definition of the fragment ``block`` in place of the file's one definition
    of that name (PatchError when that is not unambiguous)."""
    frag, tree = _fragment(block)
    old_lines = old.splitlines()
    old_tree = _parse(old, path)
    everywhere = _all_defs(old_tree)
    edits = [e for d in _defs(tree.body) for e in _edits(frag, d, _the_one(d.name, _kind(d), everywhere, path), path)]
    edits.sort(key=lambda e: e[0].start)
    for (a, _), (b, _) in zip(edits, edits[1:], strict=False):
        if b.start <= a.end:
            raise PatchError(f"the code block replaces overlapping definitions of {path}; nothing was applied")
    out = list(old_lines)
    for span, lines in reversed(edits):
        out[span.start : span.end + 1] = lines
    imports = _import_lines(frag, tree, old_lines)
    if imports:
        at = _import_position(old_tree)
        at += sum(len(lines) - (span.end - span.start + 1) for span, lines in edits if span.end < at)
        out[at:at] = imports
    return out


def file_defining(block: list[str], candidates: list[str], base: Mapping[str, str]) -> str | None:
    """The one candidate file that defines every definition of the fragment ``block`` exactly once. None when
    the block is not a fragment of whole definitions; PatchError, saying where each name is, when no single
    file defines them all once."""
    try:
        _, tree = _fragment(block)
    except PatchError:
        return None
    wanted = [(d.name, _kind(d)) for d in _defs(tree.body)]
    places: dict[str, dict[tuple[str, str], list[str]]] = {}
    for path in candidates:
        try:
            defs = _all_defs(ast.parse(base[path]))
        except SyntaxError:
            continue
        places[path] = {w: [place for place, n in defs if (n.name, _kind(n)) == w] for w in wanted}
    found = [path for path, where in places.items() if all(len(v) == 1 for v in where.values())]
    if len(found) == 1:
        return found[0]
    seen = "; ".join(
        f"{kind} {name}: " + ", ".join(f"{path} {len(where[(name, kind)])}x" for path, where in places.items())
        for name, kind in wanted
    )
    raise PatchError(
        f"the code block holds only definitions, but no single editable file defines each of them exactly once "
        f"({seen}): where it goes is a guess; nothing was applied. Send a unified diff"
    )
