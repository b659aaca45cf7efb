"""Repair the diffs (and SEARCH/REPLACE blocks) that LLMs write, so that ``git apply`` accepts them, or refuse.

Strategy: parse the model's text leniently into file sections and hunks, locate every hunk in the real file
(exact, then ignoring trailing whitespace/CR, then ignoring whitespace runs, then also ignoring blank lines, then
also across line breaks: a call quoted as one joined line), apply it ourselves, and re-render a clean git-style
diff. So wrong ``@@`` numbers, missing ``a/``/``b/`` prefixes, fences, chatter, CRLF, tab/space drift, missing
``' '`` prefixes and elision comments standing for unchanged lines stop mattering.

Never wrong before recovering more: a hunk that fits several places equally well (and whose line number does
not point at one of them exactly) is refused, and so is a reply that stops inside its diff (an unclosed fence,
a last hunk shorter than its header announces, unbalanced brackets in the last added lines). Every refusal is a
:class:`PatchError` whose message says what failed and shows the file region, for the revision prompt.
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
_HUNK_RE = re.compile(r"^@@+\s*(?:-(\d+)(?:,(\d+))?)?(?:\s*\+(\d+)(?:,(\d+))?)?")
_GIT_RE = re.compile(r"^diff --git (\S+) (\S+)")
_SKIP_RE = re.compile(
    r"^(index [0-9a-f]|similarity index|rename (from|to)|old mode|new mode|(new|deleted) file mode|Binary files|Index: |={5,}$)"
)
# A line standing for unchanged code: "...", "# ...", "# ... rest of __init__ unchanged ...", "// existing code".
ELISION_RE = re.compile(
    r"^\s*(?:\.\.\.|…)\s*$"
    r"|^\s*(?:#|//)\s*(?:\.\.\.|…|\[\.\.\.\]|\(\.\.\.\))"
    r"|^\s*(?:#|//).*(?:\.\.\.|…)\s*$"
    r"|^\s*(?:#|//)\s*[\[(]?\s*(?:the\s+)?(?:rest|remainder)\s+of\b.*\b(?:unchanged|as before|same)\b"
    r"|^\s*(?:#|//)\s*[\[(]?\s*(?:existing|unchanged|other|remaining)\s+(?:code|lines|methods|layers|setup)\b",
    re.I,
)
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
MAX_TEXT_BYTES = 2_000_000  # larger files (data, weights) are never diff targets
GAP = "~"  # hunk tag of an elision line: any number of unchanged file lines

# --------------------------------------------------------------------------- data


@dataclass
class Hunk:
    old_start: int | None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (' ' | '-' | '+' | '~', text w/o prefix/eol)
    soft: list[bool] = field(default_factory=list)  # line had no prefix (guessed context)
    stated_old: int | None = None  # line counts announced by the @@ header, when it gives them
    stated_new: int | None = None
    open_at_end: bool = False  # the reply ended inside this hunk (no closing fence or prose after it)
    trimmed_blanks: int = 0  # trailing blank lines dropped by the parser

    @property
    def old(self) -> list[str]:
        return [t for tag, t in self.lines if tag in " -"]


@dataclass
class FilePatch:
    old_path: str | None  # None: new file (/dev/null)
    new_path: str | None  # None: deleted file
    hunks: list[Hunk] = field(default_factory=list)
    headerless: bool = False


# --------------------------------------------------------------------------- extraction and parsing


@dataclass
class _Fence:
    info: str
    lines: list[str]
    closed: bool
    start: int  # line index of the opening fence in the reply
    end: int  # line index of the closing fence (or the last line)


def fenced_blocks(text: str) -> list[_Fence]:
    """Fenced code blocks of a reply (``` or ~~~), with their info string and whether they were closed."""
    blocks: list[_Fence] = []
    cur: _Fence | None = None
    fence = ""
    lines = text.split("\n")
    for n, line in enumerate(lines):
        m = _FENCE_RE.match(line)
        if cur is None:
            if m:
                fence = m.group(1)
                cur = _Fence(line.strip()[len(fence) :].strip(), [], False, n, n)
        elif m and line.strip() == fence[0] * len(line.strip()) and len(line.strip()) >= len(fence):
            cur.closed, cur.end = True, n
            blocks.append(cur)
            cur = None
        else:
            cur.lines.append(line)
    if cur is not None:
        cur.end = len(lines) - 1
        blocks.append(cur)
    return blocks


def looks_like_diff(block: str) -> bool:
    return bool(re.search(r"^(@@|--- \S|\+\+\+ \S|diff --git)", block, re.M))


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def extract_diff_text(text: str) -> str:
    """The diff part of an LLM reply: fenced blocks that hold a diff, else the text from the first header."""
    return _extract(text)[0]


_V4A_FILE = re.compile(r"^\*\*\* (Update|Add|Delete) File: (.+?)\s*$")


def from_apply_patch(text: str) -> str:
    """Rewrite OpenAI's apply_patch format (``*** Begin Patch`` / ``*** Update File: P`` / ``@@ anchor``) as a
    unified diff. An ``@@ anchor`` (a line such as ``class Block``) becomes a context line followed by an elision,
    so it must match the file and only disambiguates; anything else passes through unchanged."""
    if "*** Begin Patch" not in text and not re.search(r"(?m)^\*\*\* (Update|Add) File: ", text):
        return text
    out: list[str] = []
    mode = None
    for line in _normalise(text).split("\n"):
        m = _V4A_FILE.match(line)
        if m:
            mode, path = m.group(1), m.group(2)
            if mode == "Update":
                out += [f"--- a/{path}", f"+++ b/{path}"]
            elif mode == "Add":
                out += ["--- /dev/null", f"+++ b/{path}", "@@ -0,0 +1 @@"]
            else:
                out += [f"--- a/{path}", "+++ /dev/null", "@@ -1 +0,0 @@"]
            continue
        if line.startswith(("*** Begin Patch", "*** End Patch", "*** End of File", "*** Move to:")):
            mode = None if line.startswith("*** End Patch") else mode
            continue
        if mode == "Update" and line.startswith("@@"):
            anchor = line[2:].strip().rstrip("@").strip()
            if not (out and out[-1] == " # ..."):  # consecutive anchors narrow the same hunk
                out.append("@@ @@")
            if anchor:
                out += [" " + anchor, " # ..."]
            continue
        out.append(line)
    return "\n".join(out)


def _extract(text: str) -> tuple[str, bool]:
    """(diff text, whether it came from closed fences). Raises on no diff or a diff in an unclosed fence."""
    text = from_apply_patch(_normalise(text))
    blocks = [b for b in fenced_blocks(text) if looks_like_diff("\n".join(b.lines))]
    if blocks and not blocks[-1].closed:
        raise PatchError(
            "the reply stops inside an unclosed ``` block: it looks cut off (output limit?). Nothing was "
            "applied; send the complete change, as short as possible"
        )
    body = "\n".join("\n".join(b.lines) for b in blocks) if blocks else text
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(("diff --git", "--- ", "@@", "Index: ")):
            return "\n".join(lines[i:]), bool(blocks)
    raise PatchError(
        "no unified diff found in the reply (expected '--- a/FILE', '+++ b/FILE' and '@@' lines)"
    )


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
    """Parse a (possibly broken) unified diff into file sections and hunks. ``known``: path -> content.

    Raises PatchError when the reply looks cut off (see :func:`check_complete`)."""
    diff_text, fenced = _extract(text)
    lines = diff_text.split("\n")
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
        elif line.startswith("@@") and (hm := _HUNK_RE.match(line)):
            if cur is None:
                cur = FilePatch(None, None, headerless=True)
                patches.append(cur)
                content_set = {_ws(t) for c in known.values() for t in c.splitlines()}
            start, so, sn = hm.group(1), hm.group(2), hm.group(4)
            hunk = Hunk(
                int(start) if start else None,
                stated_old=int(so) if so is not None else None,
                stated_new=int(sn) if sn is not None else None,
            )
            cur.hunks.append(hunk)
        elif hunk is not None:
            tag, body, soft = _hunk_line(line, nxt, content_set)
            if tag is None:
                if not _SKIP_RE.match(line):
                    hunk = None  # chatter ends the hunk
            elif tag != "":
                hunk.lines.append((tag, body))
                hunk.soft.append(soft)
        i += 1
    if hunk is not None and not fenced:
        hunk.open_at_end = True
    for p in patches:
        for h in p.hunks:
            while h.lines and h.soft[-1] and h.lines[-1] == (" ", ""):
                h.lines.pop()
                h.soft.pop()
                h.trimmed_blanks += 1
    check_complete(patches, ended_in_diff=not fenced and (hunk is not None or _ends_in_header(lines)))
    for p in patches:
        for h in p.hunks:
            _check_elisions(h, p.new_path or p.old_path or "?")
            while h.lines and h.lines[0][0] == GAP:  # a leading or trailing elision stands for nothing
                h.lines.pop(0)
                h.soft.pop(0)
            while h.lines and h.lines[-1][0] == GAP:
                h.lines.pop()
                h.soft.pop()
        p.hunks = [h for h in p.hunks if any(tag in "+-" for tag, _ in h.lines)]
    patches = [p for p in patches if p.hunks or p.new_path is None]
    if not patches:
        raise PatchError("the diff has no hunks that change anything")
    return patches


def _hunk_line(line: str, nxt: str, content_set: set[str] | None) -> tuple[str | None, str, bool]:
    """(tag, text, soft) of one line inside a hunk; tag "" = ignore it, None = not a hunk line."""
    if line.startswith("\\"):
        return "", "", False  # "\ No newline at end of file"
    if line.startswith((" ", "-", "+")) and not (line.startswith("--- ") and nxt.startswith("+++ ")):
        tag, body = line[0], line[1:]
        if ELISION_RE.match(body):
            return (GAP if tag == " " else "E" + tag), body, False
        return tag, body, False
    if line == "":
        return " ", "", True
    if ELISION_RE.match(line):
        return GAP, line, True
    if content_set is not None and _ws(line) in content_set:
        return " ", line, True  # context line that lost its ' ' prefix
    return None, "", False


MAX_GAPS = 4  # elision lines per hunk


def _check_elisions(h: Hunk, path: str) -> None:
    if sum(tag == GAP for tag, _ in h.lines) > MAX_GAPS:
        raise PatchError(
            f"{path}: a hunk has more than {MAX_GAPS} elision lines ('...'): quote the unchanged lines around each "
            "change instead, as separate hunks"
        )
    for tag, text in h.lines:
        if tag.startswith("E"):
            kind = "a removed" if tag == "E-" else "an added"
            raise PatchError(
                f"{path}: {kind} line is an elision comment ({text.strip()!r}): a diff must spell out every "
                "line it removes or adds. Write those lines in full (use a context line ' ...' only for "
                "unchanged lines)"
            )


def _ends_in_header(lines: list[str]) -> bool:
    tail = [ln for ln in lines if ln.strip()]
    return bool(tail) and tail[-1].startswith(("@@", "--- ", "+++ ", "diff --git"))


_OPEN, _CLOSE = "([{", ")]}"


def bracket_balance(lines: list[str]) -> int:
    """Open minus closed brackets in code lines, ignoring string literals and # comments (roughly)."""
    n = 0
    for line in lines:
        code = re.sub(r"'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", "", line)
        code = code.split("#", 1)[0]
        n += sum(code.count(c) for c in _OPEN) - sum(code.count(c) for c in _CLOSE)
    return n


def check_complete(patches: list[FilePatch], ended_in_diff: bool) -> None:
    """Refuse a reply that stops inside its diff: a trailing header with no hunk, or a last hunk whose added lines
    leave brackets open (its line counts are checked where it is placed: :func:`_check_counts`). Only when the
    reply ends in the diff: a closed fence or prose after it shows the model finished."""
    if not ended_in_diff or not patches:
        return
    last = patches[-1]
    where = last.new_path or last.old_path or "the diff"
    if not last.hunks or not last.hunks[-1].lines:
        raise PatchError(
            f"the reply ends right after a header of {where} with no hunk lines: it looks cut off. "
            "Nothing was applied; send the complete diff"
        )
    h = last.hunks[-1]
    if not any(tag in "+-" for tag, _ in h.lines):
        raise PatchError(
            f"the reply ends inside a hunk of {where} before any changed line: it looks cut off. Nothing was "
            "applied; send the complete diff"
        )
    added = [t for tag, t in h.lines if tag == "+"]
    removed = [t for tag, t in h.lines if tag == "-"]
    if added and bracket_balance(added) > bracket_balance(removed):
        raise PatchError(
            f"{where}: the reply stops inside the diff and its last added lines leave a bracket open "
            f"({added[-1].strip()[:80]!r}): it looks cut off mid-line. Nothing was applied; send the complete diff"
        )


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


def _nows(s: str) -> str:
    return "".join(s.split())


_LEVELS: list[Callable[[str], str]] = [lambda s: s, lambda s: s.rstrip(), _ws, _ws, _nows]
_BLANK_TOLERANT = 3
_JOINED = 4  # from this level on, one quoted line may stand for several file lines (and vice versa)
_MAX_JOIN = 12


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

    def keep(self, j: int) -> tuple[str, str]:
        return ("=", self.body[j] + "\0" + self.eol[j])

    def text(self, final_newline: bool) -> str:
        eol = list(self.eol)
        for k in range(len(eol) - 1):
            eol[k] = eol[k] or self.main_eol
        if eol:
            eol[-1] = (eol[-1] or self.main_eol) if final_newline else ""
        return "".join(b + e for b, e in zip(self.body, eol, strict=True))


_Match = tuple[list[tuple[str, str]], int, list[tuple[str, str, str]]]  # (new lines, end, (file, hunk, tag))


def _walk(
    f: _Lines, s: int, lines: list[tuple[str, str]], level: int, memo: dict | None = None, i0: int = 0
) -> _Match | None:
    """Match hunk ``lines[i0:]`` at file line ``s``; return (new lines, end, matched pairs) or None.

    ``memo`` caches the matches of the part after an elision gap by (hunk line, file line): they do not depend
    on where the hunk started, so a hunk with gaps costs O(file x hunk) per placement, not exponential."""
    norm = _LEVELS[level]
    tolerant = level >= _BLANK_TOLERANT
    out: list[tuple[str, str]] = []
    pairs: list[tuple[str, str, str]] = []
    j, i, body = s, i0, f.body
    while i < len(lines):
        tag, text = lines[i]
        if tag == "+":
            out.append(("+", text))
            i += 1
            continue
        if tag == GAP:  # elision: the run of file lines after which the rest matches, at one place only
            memo = {} if memo is None else memo
            hits = []
            for j2 in range(j, len(body) + 1):
                key = (i + 1, j2)
                if key not in memo:
                    memo[key] = _walk(f, j2, lines, level, memo, i + 1)
                if memo[key] is not None:
                    hits.append(j2)
            if len(hits) > 1:
                raise PatchError(
                    f"the lines after an elision ('# ...') or anchor fit {len(hits)} places (lines "
                    f"{', '.join(str(h + 1) for h in hits[:6])}); nothing was applied. Quote the unchanged lines "
                    "right around the change instead"
                )
            if hits:
                r = memo[(i + 1, hits[0])]
                return out + [f.keep(k) for k in range(j, hits[0])] + r[0], r[1], pairs + r[2]
            return None
        want = norm(text)
        if tolerant and want == "":
            if j < len(body) and body[j].strip() == "":
                if tag == " ":
                    out.append(f.keep(j))
                j += 1
            i += 1
            continue  # a blank line the model invented: ignore it
        while tolerant and j > s and j < len(body) and body[j].strip() == "":
            out.append(f.keep(j))
            j += 1
        if j < len(body) and norm(body[j]) == want:
            if tag == " ":
                out.append(f.keep(j))
            pairs.append((body[j], text, tag))
            i, j = i + 1, j + 1
            continue
        if level >= _JOINED and j < len(body):
            k = _joined_file_lines(body, j, want)
            if k:  # one quoted line stands for k file lines (a call quoted joined)
                out.extend(f.keep(x) for x in range(j, j + k) if tag == " ")
                i, j = i + 1, j + k
                continue
            k = _joined_hunk_lines(lines, i, tag, _nows(body[j]))
            if k:  # k quoted lines stand for one file line (a line quoted reflowed)
                if tag == " ":
                    out.append(f.keep(j))
                i, j = i + k, j + 1
                continue
        return None
    return out, j, pairs


def _canon(s: str) -> str:
    """Code without whitespace and without the trailing comma a multi-line call may carry before ``)``."""
    return re.sub(r",(?=[)\]}])", "", s)


def _joined_file_lines(body: list[str], j: int, want: str) -> int:
    acc, want = "", _canon(want)
    for k in range(j, min(j + _MAX_JOIN, len(body))):
        acc = _canon(acc + _nows(body[k]))
        if acc == want and k > j:
            return k - j + 1
        if not want.startswith(acc.rstrip(",")):
            return 0
    return 0


def _joined_hunk_lines(lines: list[tuple[str, str]], i: int, tag: str, want: str) -> int:
    acc, want = "", _canon(want)
    for k in range(i, min(i + _MAX_JOIN, len(lines))):
        t, text = lines[k]
        if t != tag:
            return 0
        acc = _canon(acc + _nows(text))
        if acc == want and k > i:
            return k - i + 1
        if not want.startswith(acc.rstrip(",")):
            return 0
    return 0


def _indent(s: str) -> str:
    return s[: len(s) - len(s.lstrip())]


def _literal_indent(out: list[tuple[str, str]], pairs: list[tuple[str, str, str]]) -> bool:
    """Whether the added lines already sit at the file's indentation: at the removed lines' depth, or (for a pure
    insertion) at the depth of the file line just before or after them. Then they are taken as written."""
    added = _min_indent([t for tag, t in out if tag == "+"])
    if added is None:
        return True
    removed = [fl for fl, _, tag in pairs if tag == "-"]
    if removed:
        return added == _min_indent(removed)
    k = next(i for i, (tag, _) in enumerate(out) if tag == "+")
    k2 = max(i for i, (tag, _) in enumerate(out) if tag == "+")
    near = [out[i][1].split("\0", 1)[0] for i in (k - 1, k2 + 1) if 0 <= i < len(out) and out[i][0] == "="]
    return any(_indent(x) == added for x in near if x.strip())


def _min_indent(lines: list[str]) -> str | None:
    """The shortest indentation among non-blank ``lines`` (None when all are blank)."""
    ind = [_indent(x) for x in lines if x.strip()]
    return min(ind, key=lambda i: len(i.expandtabs(4))) if ind else None


def _reindent(added: str, pairs: list[tuple[str, str, str]]) -> str:
    """Map the model's indentation onto the file's (tabs vs spaces, uniform shift) using matched pairs."""
    mapping: dict[str, str] = {}
    shifts = set()
    for file_line, hunk_line, _ in pairs:
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


def file_region(text: str, center: int, radius: int = 5) -> str:
    """Lines ``center ± radius`` (0-based centre) of ``text``, numbered from 1, for error messages."""
    lines = text.splitlines()
    lo, hi = max(0, center - radius), min(len(lines), center + radius + 1)
    return "\n".join(f"{k + 1:5d} | {lines[k]}" for k in range(lo, hi))


def _closest_line(f: _Lines, h: Hunk) -> int:
    first = next((t for t in h.old if t.strip()), "")
    scores = [difflib.SequenceMatcher(None, _ws(first), _ws(b)).ratio() for b in f.body]
    return max(range(len(scores)), key=scores.__getitem__) if scores else 0


def apply_hunks(content: str, hunks: list[Hunk], path: str, unique: bool = False) -> str:
    """Apply hunks in order to ``content`` with fuzzy location.

    A hunk that fits several places is placed only where its ``@@`` line number (corrected by the shift of the
    hunks before it) points exactly; otherwise, or with ``unique``, it is refused."""
    f = _Lines.of(content)
    final_nl = content.endswith(("\n", "\r")) or content == ""
    offset, drift = 0, 0
    for n, h in enumerate(hunks, 1):
        hint = (h.old_start - 1 + offset + drift) if h.old_start else None
        placed = _place(f, h, hint, unique, path, n)
        if placed is None:
            first = next((t for t in h.old if t.strip()), "")
            near = _closest_line(f, h)
            raise PatchError(
                f"{path}: hunk {n} does not match the file: its old lines (e.g. {first.strip()[:80]!r}) were not "
                f"found. Copy context and removed lines exactly from the file. The closest region of {path} "
                f"now:\n{file_region(f.text(final_nl), near)}"
            )
        s, (out, end, pairs) = placed
        if h.open_at_end:
            _check_counts(f, h, s, end, len(out), path)
        if hint is not None:
            drift += s - hint
        eol = f.main_eol
        literal = _literal_indent(out, pairs)
        new_body, new_eol = [], []
        for tag, text in out:
            if tag == "=":
                b, e = text.split("\0", 1)
            else:
                b, e = (text if literal else _reindent(text, pairs)), eol
            new_body.append(b)
            new_eol.append(e)
        f.body[s:end] = new_body
        f.eol[s:end] = new_eol
        offset += len(new_body) - (end - s)
    return f.text(final_nl)


def _check_counts(f: _Lines, h: Hunk, s: int, end: int, new_len: int, path: str) -> None:
    """The last hunk of a reply that ends inside it must span as many file lines as its header announces (blank
    lines the model dropped are counted where they are in the file); fewer on either side, and more on neither,
    means the reply was cut off inside the hunk."""
    blanks = 0  # blank lines around the hunk in the file: a dropped blank context line is no cut
    while end + blanks < len(f.body) and not f.body[end + blanks].strip():
        blanks += 1
    lead = 0
    while s - lead - 1 >= 0 and not f.body[s - lead - 1].strip():
        lead += 1
    blanks += lead
    old = max(end - s, len(h.old))  # the file span, or the hunk's own lines where it quoted lines not in the file
    new = max(new_len, sum(t in " +" for t, _ in h.lines))
    short_old = h.stated_old is not None and old + blanks < h.stated_old
    short_new = h.stated_new is not None and new + blanks < h.stated_new
    over = (h.stated_old is not None and old > h.stated_old) or (h.stated_new is not None and new > h.stated_new)
    if (short_old or short_new) and not over:
        raise PatchError(
            f"{path}: the last hunk announces {h.stated_old} old / {h.stated_new} new lines but the reply stops "
            f"after {old} / {new}: it looks cut off. Nothing was applied; send the complete diff"
        )


def _place(f: _Lines, h: Hunk, hint: int | None, unique: bool, path: str, n: int):
    if not h.old:
        return _insertion(f, h, path, n)
    for variant in [h, *_trimmed(h)]:
        if not variant.old:
            continue  # never turn a misplaced edit into a blind insertion
        vhint = None if hint is None or h.old_start is None else hint + (variant.old_start or 0) - h.old_start
        for level in range(len(_LEVELS)):
            memo: dict = {}
            found = [
                (s, r)
                for s in _starts(f, variant, level)
                if (r := _walk(f, s, variant.lines, level, memo)) is not None
            ]
            if len(found) == 1:
                return found[0]
            if not found:
                continue
            exact = [x for x in found if x[0] == vhint]
            if len(exact) == 1 and not unique:
                return exact[0]
            text = f.text(True)
            where = "\n".join(f"at line {s + 1}:\n{file_region(text, s, 2)}" for s, _ in found[:3])
            raise PatchError(
                f"{path}: hunk {n} fits {len(found)} places equally well (lines "
                f"{', '.join(str(s + 1) for s, _ in found[:6])}) and nothing says which one is meant; nothing "
                f"was applied. Include unchanged lines around the change that occur only once:\n{where}"
            )
    return None


def _starts(f: _Lines, h: Hunk, level: int) -> list[int]:
    """File lines where ``h`` can start: where its first old line matches (cheap filter before the walk)."""
    first = next(t for tag, t in h.lines if tag in " -")
    norm = _LEVELS[level]
    want = norm(first)
    if want == "" and level >= _BLANK_TOLERANT:
        return list(range(len(f.body) + 1))
    if level < _JOINED:
        return [s for s, b in enumerate(f.body) if norm(b) == want]
    want = _canon(want)
    out = []
    for s, b in enumerate(f.body):
        have = _canon(_nows(b))
        if have and (want.startswith(have.rstrip(",")) or have.startswith(want)):
            out.append(s)
    return out


def _insertion(f: _Lines, h: Hunk, path: str, n: int):
    """A hunk with only added lines: placed only at the top (``-0,0``) or exactly at the end of the file."""
    added = [("+", t) for _, t in h.lines]
    if h.old_start == 0:
        return 0, (added, 0, [])
    if h.old_start is not None and h.stated_old == 0 and h.old_start == len(f.body):
        return len(f.body), (added, len(f.body), [])
    raise PatchError(
        f"{path}: hunk {n} only adds lines and quotes no unchanged line around them, so where they go cannot be "
        "checked; nothing was applied. Include 2-3 unchanged lines before the added ones"
    )


def _trimmed(h: Hunk) -> Iterator[Hunk]:
    """Variants of ``h`` with leading/trailing context dropped (models invent or misquote edge context)."""
    lines = h.lines
    lead = next((k for k, (t, _) in enumerate(lines) if t != " "), len(lines))
    trail = next((k for k, (t, _) in enumerate(reversed(lines)) if t != " "), len(lines))
    for drop in range(1, max(lead, trail) + 1):
        a, b = min(drop, lead), min(drop, trail)
        part = lines[a : len(lines) - b]
        while part and part[0][0] == GAP:  # an elision at an edge stands for nothing
            part, a = part[1:], a + 1
        while part and part[-1][0] == GAP:
            part = part[:-1]
        yield Hunk(None if h.old_start is None else h.old_start + a, part)


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
    """Apply ``diff`` to ``base_dir`` IN PLACE through the lenient parser (never plain ``git apply``, which
    picks the nearest of two equal places), returning the clean diff that was applied. Raises PatchError."""
    base_dir = Path(base_dir)
    fixed = repair_diff(diff, DirFiles(base_dir))
    apply_diff(fixed, base_dir, check_only=True)
    apply_diff(fixed, base_dir)
    return fixed


# --------------------------------------------------------------------------- SEARCH/REPLACE blocks

_SR_START = re.compile(r"^\s*<{5,9}\s*SEARCH\s*(.*)$")
_SR_MID = re.compile(r"^\s*={5,9}\s*$")
_SR_END = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")


def has_search_replace(text: str) -> bool:
    return any(_SR_START.match(line) for line in text.splitlines())


def parse_search_replace(text: str, files: Mapping[str, str] | None = None) -> list[SearchReplace]:
    """SEARCH/REPLACE blocks, each preceded by a line naming the file (plain, `backticked` or **bold**). With
    ``files`` (path -> content), a block that names no file goes to the one file holding its SEARCH text."""
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
        if path is None and files is None:
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
        file = path or _file_holding(search, files or {}, i + 1)
        edits.append(SearchReplace(file=file, search=_join(search), replace=_join(replace)))
        i = j + 1
    return edits


def _file_holding(search: list[str], files: Mapping[str, str], line: int) -> str:
    """The one file whose lines hold ``search`` (compared stripped), for a SEARCH block that names no file."""
    want = [s.strip() for s in search]
    holding = []
    for name, content in files.items():
        have = [s.strip() for s in content.split("\n")]
        if want and any(have[k : k + len(want)] == want for k in range(len(have) - len(want) + 1)):
            holding.append(name)
    if len(holding) != 1:
        where = ", ".join(holding) if holding else "no editable file"
        raise PatchError(
            f"SEARCH block at line {line} names no file, and its text is in {where}: which file it edits is a "
            "guess; nothing was applied. Put the file's path on the line before the block"
        )
    return holding[0]


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
