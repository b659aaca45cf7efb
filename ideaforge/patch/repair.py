"""Repair the diffs (and SEARCH/REPLACE blocks) that LLMs write, so that ``git apply`` accepts them.

Strategy: parse the model's text leniently into file sections and hunks, locate every hunk in the real file
(exact, then ignoring trailing whitespace/CR, then ignoring all whitespace runs, then also ignoring blank lines),
apply it ourselves, and re-render a clean git-style diff from the old and new file contents. So wrong
``@@`` numbers, missing ``a/``/``b/`` prefixes, markdown fences, chatter, CRLF, tab/space drift, missing
``' '`` prefixes on context lines and missing final newlines stop mattering.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ideaforge.models import SearchReplace
from ideaforge.patch.apply import PatchError, apply_diff

_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})")
_HUNK_RE = re.compile(r"^@@+\s*(?:-(\d+)(?:,(\d+))?)?")
_GIT_RE = re.compile(r"^diff --git (\S+) (\S+)")
_SKIP_RE = re.compile(
    r"^(index [0-9a-f]|similarity index|rename (from|to)|old mode|new mode|(new|deleted) file mode|Binary files|Index: |={5,}$)"
)
_ELLIPSIS_RE = re.compile(r"^\s*(\.\.\.|…|# \.\.\.|// \.\.\.)\s*$")
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
MAX_TEXT_BYTES = 2_000_000  # larger files (data, weights) are never diff targets

# --------------------------------------------------------------------------- data


@dataclass
class Hunk:
    old_start: int | None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (' ' | '-' | '+', text without prefix/eol)
    soft: list[bool] = field(default_factory=list)  # line had no prefix (guessed context)

    @property
    def old(self) -> list[str]:
        return [t for tag, t in self.lines if tag != "+"]


@dataclass
class FilePatch:
    old_path: str | None  # None: new file (/dev/null)
    new_path: str | None  # None: deleted file
    hunks: list[Hunk] = field(default_factory=list)
    headerless: bool = False


# --------------------------------------------------------------------------- extraction and parsing


def extract_diff_text(text: str) -> str:
    """The diff part of an LLM reply: fenced blocks that hold a diff, else the text from the first header."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [b for b in _fenced_blocks(text) if _looks_like_diff(b)]
    body = "\n".join(blocks) if blocks else text
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(("diff --git", "--- ", "@@", "Index: ")):
            return "\n".join(lines[i:])
    raise PatchError(
        "no unified diff found in the reply (expected '--- a/FILE', '+++ b/FILE' and '@@' lines)"
    )


def _fenced_blocks(text: str) -> list[str]:
    blocks, cur, fence = [], None, ""
    for line in text.split("\n"):
        m = _FENCE_RE.match(line)
        if cur is None:
            if m:
                cur, fence = [], m.group(1)
        elif m and line.strip() == fence[0] * len(line.strip()) and len(line.strip()) >= len(fence):
            blocks.append("\n".join(cur))
            cur = None
        else:
            cur.append(line)
    if cur:  # unterminated fence: keep what we have
        blocks.append("\n".join(cur))
    return blocks


def _looks_like_diff(block: str) -> bool:
    return bool(re.search(r"^(@@|--- |\+\+\+ |diff --git)", block, re.M))


def _clean_path(raw: str) -> str | None:
    raw = raw.split("\t")[0].strip().strip('"').strip("'")
    raw = re.sub(r"\s+\d{4}-\d\d-\d\d.*$", "", raw)  # "file 2024-01-01 10:00:00" timestamps
    if raw in ("/dev/null", "dev/null", ""):
        return None
    return raw[2:] if raw.startswith("./") else raw


def resolve_path(raw: str, known: Mapping[str, str] | list[str]) -> str:
    """Map an LLM-written path (``a/x.py``, ``x.py``, ``./x.py``, ``baseline/x.py``) to a real relative path."""
    names = list(known)
    if raw in names:
        return raw
    for prefix in ("a/", "b/"):
        if raw.startswith(prefix) and raw[2:] in names:
            return raw[2:]
    tails = [n for n in names if raw.endswith("/" + n)] or [n for n in names if n.endswith("/" + raw)]
    if len(tails) == 1:
        return tails[0]
    return raw[2:] if raw.startswith(("a/", "b/")) else raw


def parse_lenient(text: str, known: Mapping[str, str]) -> list[FilePatch]:
    """Parse a (possibly broken) unified diff into file sections and hunks. ``known``: path -> content."""
    lines = extract_diff_text(text).split("\n")
    patches: list[FilePatch] = []
    cur: FilePatch | None = None
    hunk: Hunk | None = None
    content_set: set[str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        m = _GIT_RE.match(line)
        if m:
            a, b = _clean_path(m.group(1)), _clean_path(m.group(2))
            cur = FilePatch(_res(a, known), _res(b, known))
            patches.append(cur)
            hunk, content_set = None, _norm_set(known, cur)
        elif line.startswith("--- ") and nxt.startswith("+++ "):
            a, b = _res(_clean_path(line[4:]), known), _res(_clean_path(nxt[4:]), known)
            if cur is not None and not cur.hunks and not cur.headerless:
                cur.old_path, cur.new_path = a, b
            else:
                cur = FilePatch(a, b)
                patches.append(cur)
            hunk, content_set = None, _norm_set(known, cur)
            i += 1
        elif _HUNK_RE.match(line) and line.startswith("@@"):
            if cur is None:
                cur = FilePatch(None, None, headerless=True)
                patches.append(cur)
                content_set = {_ws(t) for c in known.values() for t in c.splitlines()}
            start = _HUNK_RE.match(line).group(1)
            hunk = Hunk(int(start) if start else None)
            cur.hunks.append(hunk)
        elif hunk is not None:
            if line.startswith("\\"):
                pass  # "\ No newline at end of file"
            elif _ELLIPSIS_RE.match(line):
                pass
            elif line.startswith((" ", "-", "+")) and not (
                line.startswith("--- ") and nxt.startswith("+++ ")
            ):
                tag = line[0]
                hunk.lines.append((tag, line[1:]))
                hunk.soft.append(False)
            elif line == "":
                hunk.lines.append((" ", ""))
                hunk.soft.append(True)
            elif content_set is not None and _ws(line) in content_set:
                hunk.lines.append((" ", line))  # context line that lost its ' ' prefix
                hunk.soft.append(True)
            elif _SKIP_RE.match(line):
                pass
            else:
                hunk = None  # chatter ends the hunk
        elif _SKIP_RE.match(line):
            pass
        i += 1
    for p in patches:
        for h in p.hunks:
            while h.lines and h.soft[-1] and h.lines[-1] == (" ", ""):
                h.lines.pop()
                h.soft.pop()
        p.hunks = [h for h in p.hunks if any(tag != " " for tag, _ in h.lines)]
    patches = [p for p in patches if p.hunks or p.new_path is None]
    if not patches:
        raise PatchError("the diff has no hunks that change anything")
    return patches


def _res(path: str | None, known: Mapping[str, str]) -> str | None:
    return resolve_path(path, known) if path else None


def _norm_set(known: Mapping[str, str], p: FilePatch) -> set[str] | None:
    path = p.old_path or p.new_path
    if path and path in known:
        return {_ws(t) for t in known[path].splitlines()}
    return None


# --------------------------------------------------------------------------- fuzzy hunk application


def _ws(s: str) -> str:
    return " ".join(s.split())


_LEVELS: list[Callable[[str], str]] = [lambda s: s, lambda s: s.rstrip(), _ws, _ws]
_BLANK_TOLERANT = 3


@dataclass
class _Lines:
    """A file as line bodies plus per-line endings (CRLF and missing final newline survive a round trip)."""

    body: list[str]
    eol: list[str]

    @classmethod
    def of(cls, text: str) -> _Lines:
        parts = text.splitlines(keepends=True)
        body = [p.rstrip("\r\n") for p in parts]
        eol = [p[len(b) :] for p, b in zip(parts, body, strict=True)]
        return cls(body, eol)

    @property
    def main_eol(self) -> str:
        crlf = sum(e == "\r\n" for e in self.eol)
        return "\r\n" if crlf > len(self.eol) / 2 else "\n"

    def text(self, final_newline: bool) -> str:
        eol = list(self.eol)
        for k in range(len(eol) - 1):
            eol[k] = eol[k] or self.main_eol
        if eol:
            eol[-1] = (eol[-1] or self.main_eol) if final_newline else ""
        return "".join(b + e for b, e in zip(self.body, eol, strict=True))


def _walk(
    f: _Lines, s: int, hunk: Hunk, level: int
) -> tuple[list[tuple[str, str]], int, list[tuple[str, str]]] | None:
    """Try to match the hunk's old lines at file line ``s``; return (new lines, end, pairs) or None."""
    norm = _LEVELS[level]
    tolerant = level >= _BLANK_TOLERANT
    out: list[tuple[str, str]] = []
    pairs: list[tuple[str, str]] = []  # (file line, hunk line) matched, for indentation mapping
    j = s
    for tag, text in hunk.lines:
        if tag == "+":
            out.append(("+", text))
            continue
        want = norm(text)
        if tolerant and want == "":
            if j < len(f.body) and f.body[j].strip() == "":
                if tag == " ":
                    out.append(("=", f.body[j] + "\0" + f.eol[j]))
                j += 1
            continue  # a blank line the model invented: ignore it
        while tolerant and j < len(f.body) and f.body[j].strip() == "":
            out.append(("=", f.body[j] + "\0" + f.eol[j]))
            j += 1
        if j >= len(f.body) or norm(f.body[j]) != want:
            return None
        if tag == " ":
            out.append(("=", f.body[j] + "\0" + f.eol[j]))
        pairs.append((f.body[j], text))
        j += 1
    return out, j, pairs


def _indent(s: str) -> str:
    return s[: len(s) - len(s.lstrip())]


def _reindent(added: str, pairs: list[tuple[str, str]]) -> str:
    """Map the model's indentation onto the file's (tabs vs spaces, uniform shift) using matched pairs."""
    mapping: dict[str, str] = {}
    shifts = set()
    for file_line, hunk_line in pairs:
        if not hunk_line.strip():
            continue
        fi, hi = _indent(file_line), _indent(hunk_line)
        mapping.setdefault(hi, fi)
        shifts.add(len(fi.expandtabs(4)) - len(hi.expandtabs(4)))
    if not mapping or all(k == v for k, v in mapping.items()):
        return added
    ind = _indent(added)
    if ind in mapping:
        return mapping[ind] + added[len(ind) :]
    if len(shifts) == 1:
        d = shifts.pop()
        width = len(ind.expandtabs(4)) + d
        tab = any("\t" in v for v in mapping.values())
        new = "\t" * (width // 4) + " " * (width % 4) if tab else " " * max(0, width)
        return new + added[len(ind) :]
    return added


def apply_hunks(content: str, hunks: list[Hunk], path: str, unique: bool = False) -> str:
    """Apply hunks in order to ``content`` with fuzzy location. ``unique``: refuse ambiguous matches."""
    f = _Lines.of(content)
    final_nl = content.endswith(("\n", "\r")) or content == ""
    cursor, offset = 0, 0
    for n, h in enumerate(hunks, 1):
        hint = (h.old_start - 1 + offset) if h.old_start else None
        placed = _place(f, h, cursor, hint, unique, path, n)
        if placed is None:
            first = next((t for t in h.old if t.strip()), "")
            raise PatchError(
                f"{path}: hunk {n} does not match the file (its old lines, e.g. {first.strip()[:80]!r}, "
                "were not found; copy context lines exactly from the file)"
            )
        s, (out, end, pairs) = placed
        eol = f.main_eol
        new_body, new_eol = [], []
        for tag, text in out:
            if tag == "=":
                b, e = text.split("\0", 1)
            else:
                b, e = _reindent(text, pairs), eol
            new_body.append(b)
            new_eol.append(e)
        f.body[s:end] = new_body
        f.eol[s:end] = new_eol
        cursor = s + len(new_body)
        offset += len(new_body) - (end - s)
    return f.text(final_nl)


def _place(f: _Lines, h: Hunk, cursor: int, hint: int | None, unique: bool, path: str, n: int):
    variants = [h, *_trimmed(h)]
    for variant in variants:
        if not variant.old and variant is not h:
            continue  # never turn a misplaced edit into a blind insertion
        if not variant.old:  # pure insertion
            pos = len(f.body) if hint is None else min(max(hint + 1, 0), len(f.body))
            if h.old_start == 0:
                pos = 0
            return pos, ([("+", t) for _, t in variant.lines], pos, [])
        for level in range(len(_LEVELS)):
            found = [(s, r) for s in range(len(f.body)) if (r := _walk(f, s, variant, level)) is not None]
            if not found:
                continue
            if unique and len(found) > 1:
                raise PatchError(
                    f"{path}: edit {n} matches {len(found)} places; include more surrounding lines"
                )
            after = [x for x in found if x[0] >= cursor] or found
            ref = hint if hint is not None else cursor
            return min(after, key=lambda x: abs(x[0] - ref))
    return None


def _trimmed(h: Hunk) -> Iterator[Hunk]:
    """Variants of ``h`` with leading/trailing context dropped (models invent or misquote edge context)."""
    lines = h.lines
    lead = next((k for k, (t, _) in enumerate(lines) if t != " "), len(lines))
    trail = next((k for k, (t, _) in enumerate(reversed(lines)) if t != " "), len(lines))
    for drop in range(1, max(lead, trail) + 1):
        a, b = min(drop, lead), min(drop, trail)
        yield Hunk(None if h.old_start is None else h.old_start + a, lines[a : len(lines) - b])


# --------------------------------------------------------------------------- repair entry points


def render_diff(base_files: Mapping[str, str], new_files: Mapping[str, str | None]) -> str:
    """Git-style diff from old contents (``base_files``; missing = new file) to ``new_files`` (None = deleted)."""
    chunks = []
    for rel in sorted(new_files):
        old = base_files.get(rel) if rel in base_files else None
        new = new_files[rel]
        if old == new:
            continue
        a = f"a/{rel}" if old is not None else "/dev/null"
        b = f"b/{rel}" if new is not None else "/dev/null"
        body = difflib.unified_diff(
            (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True), a, b, n=3
        )
        text = "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n" for x in body)
        mode = (
            "new file mode 100644\n" if old is None else ("deleted file mode 100644\n" if new is None else "")
        )
        chunks.append(f"diff --git a/{rel} b/{rel}\n{mode}{text}")
    return "".join(chunks)


def repaired_files(diff: str, base_files: Mapping[str, str]) -> dict[str, str | None]:
    """New contents of every file the (possibly broken) diff touches; raises PatchError if a hunk can't be placed."""
    out: dict[str, str | None] = {}
    for p in parse_lenient(diff, base_files):
        if p.headerless:
            path = _guess_file(p, base_files)
            out[path] = apply_hunks(out.get(path, base_files[path]), p.hunks, path)
            continue
        else:
            path = p.new_path or p.old_path
        if path is None:
            raise PatchError("a file section names no file ('--- /dev/null' and '+++ /dev/null')")
        if path.startswith("/") or ".." in Path(path).parts:
            raise PatchError(f"diff path escapes the codebase: {path}")
        if p.new_path is None:
            out[path] = None
            continue
        old = out[path] if path in out else base_files.get(path)
        only_adds = all(tag == "+" for h in p.hunks for tag, _ in h.lines)
        if only_adds and (old is None or p.old_path is None):
            out[path] = "\n".join(t for h in p.hunks for _, t in h.lines) + "\n"  # a new (or rewritten) file
        elif old is None:
            raise PatchError(f"{path}: no such file (a new file needs '--- /dev/null' and only '+' lines)")
        else:
            out[path] = apply_hunks(old, p.hunks, path)
    return out


def _guess_file(p: FilePatch, base_files: Mapping[str, str]) -> str:
    fits = []
    for name in base_files:
        try:
            apply_hunks(base_files[name], p.hunks, name)
            fits.append(name)
        except (PatchError, UnicodeDecodeError):
            continue
    if len(fits) != 1:
        raise PatchError(
            "the diff has no '--- a/FILE' / '+++ b/FILE' header and its hunks fit "
            + (f"{len(fits)} files {fits[:5]}" if fits else "no file")
        )
    return fits[0]


def repair_diff(diff: str, base_files: Mapping[str, str]) -> str:
    """A clean git-style diff with the effect the model meant, against ``base_files`` (path -> content)."""
    new = repaired_files(diff, base_files)
    clean = render_diff(base_files, new)
    if not clean:
        raise PatchError("the diff changes nothing (its result equals the current files)")
    return clean


class DirFiles(Mapping[str, str]):
    """Lazy read-only mapping of a directory's files up to MAX_TEXT_BYTES (relative path -> text)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._names = sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file()
            and not _SKIP_DIRS & set(p.relative_to(self.root).parts)
            and p.stat().st_size <= MAX_TEXT_BYTES
        )
        self._cache: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        if key not in self._cache:
            if key not in self._names:
                raise KeyError(key)
            self._cache[key] = (self.root / key).read_bytes().decode("utf-8", errors="replace")
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key: object) -> bool:
        return key in self._names


def apply_with_repair(diff: str, base_dir: Path) -> str:
    """Apply ``diff`` to ``base_dir`` IN PLACE: as given if ``git apply`` takes it, else repaired.

    Returns the diff that was applied (``git apply --check`` accepts it against the original tree).
    Raises PatchError (with the repair's reason) when neither works. Use a scratch copy as ``base_dir``.
    """
    base_dir = Path(base_dir)
    try:
        apply_diff(diff, base_dir, check_only=True)
        apply_diff(diff, base_dir)
        return diff
    except PatchError as plain:
        plain_err = str(plain)
    try:
        fixed = repair_diff(diff, DirFiles(base_dir))
        apply_diff(fixed, base_dir, check_only=True)
    except PatchError as e:
        raise PatchError(
            f"{e} (plain git apply: {plain_err[:300]})", getattr(e, "category", "patch_failed")
        ) from e
    apply_diff(fixed, base_dir)
    return fixed


# --------------------------------------------------------------------------- SEARCH/REPLACE blocks

_SR_START = re.compile(r"^\s*<{5,9}\s*SEARCH\s*(.*)$")
_SR_MID = re.compile(r"^\s*={5,9}\s*$")
_SR_END = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")


def has_search_replace(text: str) -> bool:
    return any(_SR_START.match(line) for line in text.splitlines())


def parse_search_replace(text: str) -> list[SearchReplace]:
    """SEARCH/REPLACE blocks, each preceded by a line naming the file (plain, `backticked` or **bold**)."""
    lines = text.replace("\r\n", "\n").split("\n")
    edits: list[SearchReplace] = []
    path: str | None = None
    i = 0
    while i < len(lines):
        m = _SR_START.match(lines[i])
        if not m:
            i += 1
            continue
        path = _path_before(lines, i, m.group(1)) or path
        if path is None:
            raise PatchError(f"SEARCH block at line {i + 1} has no file path line before it")
        search, replace, j, part = [], [], i + 1, "search"
        while j < len(lines) and not _SR_END.match(lines[j]):
            if part == "search" and _SR_MID.match(lines[j]):
                part = "replace"
            else:
                (search if part == "search" else replace).append(lines[j])
            j += 1
        if part == "search" or j >= len(lines):
            raise PatchError(
                f"SEARCH block at line {i + 1} ({path}) is not closed by '=======' and '>>>>>>> REPLACE'"
            )
        edits.append(SearchReplace(file=path, search=_join(search), replace=_join(replace)))
        i = j + 1
    return edits


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _path_before(lines: list[str], i: int, inline: str) -> str | None:
    cands = [inline] if inline.strip() else []
    k = i - 1
    while k >= 0 and (not lines[k].strip() or _FENCE_RE.match(lines[k])):
        if _FENCE_RE.match(lines[k]):  # "```python path/to/x.py"
            rest = lines[k].strip().lstrip("`~").split()
            if len(rest) > 1:
                cands.append(rest[-1])
        k -= 1
    if k >= 0:
        cands.append(lines[k])
    for c in cands:
        c = re.sub(r"^(#+\s*|file(name)?\s*:\s*|path\s*:\s*)", "", c.strip(), flags=re.I).strip("*`'\": ")
        if c and " " not in c and ("." in c or "/" in c) and not c.startswith((">>>", "<<<", "===")):
            return c
    return None


def apply_search_replace_fuzzy(
    edits: list[SearchReplace], read: Callable[[str], str | None]
) -> dict[str, str]:
    """Apply edits in order: exact unique substring first, else whitespace-tolerant line matching.

    ``read(path)`` gives the current content or None for a missing file. An empty SEARCH creates a missing
    file or appends to an existing one. Returns new contents of the edited files; raises PatchError.
    """
    out: dict[str, str] = {}
    for n, e in enumerate(edits, 1):
        cur = out[e.file] if e.file in out else read(e.file)
        if not e.search.strip():
            out[e.file] = (
                e.replace
                if cur is None
                else cur + ("" if cur.endswith("\n") or not cur else "\n") + e.replace
            )
            continue
        if cur is None:
            raise PatchError(f"edit {n}: file {e.file!r} does not exist (use an empty SEARCH to create it)")
        count = cur.count(e.search)
        if count == 1:
            out[e.file] = cur.replace(e.search, e.replace, 1)
            continue
        if count > 1:
            raise PatchError(
                f"edit {n}: SEARCH text occurs {count} times in {e.file}; include more lines to make it unique"
            )
        hunk = Hunk(
            None,
            [("-", t) for t in e.search.rstrip("\n").split("\n")]
            + [("+", t) for t in e.replace.rstrip("\n").split("\n")] * bool(e.replace),
        )
        try:
            out[e.file] = apply_hunks(cur, [hunk], e.file, unique=True)
        except PatchError as err:
            raise PatchError(
                f"edit {n}: SEARCH text not found in {e.file} ({err}); copy it exactly from the file"
            ) from err
    return out
