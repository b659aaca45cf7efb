"""Read an implementer LLM's whole reply into new file contents, or refuse it with a precise reason.

One entry point, :func:`apply_answer`, used by the implementer and by the benchmarks:

1. pick the part of the reply that is the change: after "Wait, here is the corrected diff" the correction
   (when it covers everything the first diff changed), before "Alternatively, ..." the main change;
2. read it as SEARCH/REPLACE blocks, else as a unified diff (repaired by :mod:`ideaforge.patch.repair`), else as
   whole files in fenced blocks (elision comments such as ``# ... existing code ...`` expanded from the file),
   else as whole definitions replacing the file's one definition of each name (:mod:`ideaforge.patch.definitions`);
3. refuse protected files and paths outside the tree, and any changed Python file that no longer compiles;
4. write the result into the tree.

Nothing is written unless every step passed, so a refused reply leaves the tree as it was.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ideaforge.patch.apply import PatchError, refuse_protected
from ideaforge.patch.definitions import file_defining, replace_definitions
from ideaforge.patch.repair import (
    ELISION_RE,
    DirFiles,
    apply_search_replace_fuzzy,
    fenced_blocks,
    file_region,
    from_apply_patch,
    has_search_replace,
    looks_like_diff,
    parse_search_replace,
    repaired_files,
    resolve_path,
)

log = logging.getLogger(__name__)

# Words that say the second change REPLACES the first ...
CORRECTION_RE = re.compile(
    r"\b(corrected|fixed|revised|updated|final|correct|right|proper)\s+(unified\s+)?(diff|patch|version|change)\b"
    r"|\binstead\b|\bi made (a|an) (mistake|error|typo)\b|\bignore the (previous|above|first|earlier)\b"
    r"|\bscratch that\b|\blet me (fix|redo|correct|rewrite|try (that )?again)\b"
    r"|\b(mistake|error|bug|typo) in (my|the) (previous|above|first|earlier)\b|\b(previous|above) (diff|patch) (is|was) wrong\b",
    re.I,
)
# ... that it ADDS to the first ...
SUPPLEMENT_RE = re.compile(r"\b(also|forgot|in addition|additionally|as well|missed)\b", re.I)
# ... or only that the model is having second thoughts (then the overlap of the two changes decides).
SECOND_THOUGHT_RE = re.compile(r"^\W*(wait|actually|oops|hmm+|sorry|on second thought|hold on)\b", re.I)
ALTERNATIVE_RE = re.compile(
    r"\b(alternatively|an alternative|another (option|approach|way|variant)|option (2|b|two)|if you prefer"
    r"|you could also|or instead)\b",
    re.I,
)
MIN_WHOLE_FILE_COVERAGE = 0.5  # share of the file's lines a code block must keep to be taken as the whole file
_CODE_INFO = {"", "python", "py", "python3"}


@dataclass
class AppliedAnswer:
    """What a reply changed: new contents (None = deleted) of the files it touched, and in which form."""

    files: dict[str, str | None]
    form: str  # "diff" | "search_replace" | "whole_file"


def apply_answer(
    text: str,
    tree: Path,
    protected: list[str] | tuple[str, ...] = (),
    editable: list[str] | None = None,
    cut_off: bool = False,
) -> AppliedAnswer:
    """Apply an LLM reply to ``tree`` in place (see the module docstring). ``cut_off``: the API said the reply hit
    the output-token limit. Raises PatchError (category ``protected_file_touched`` for protected files)."""
    tree = Path(tree)
    base = DirFiles(tree)
    refuse_protected(named_files(text, base), list(protected))  # before anything else: a clear category
    result = read_answer(text, base, editable=editable, cut_off=cut_off)
    refuse_protected(sorted(result.files), list(protected))
    check_compiles(result.files, base)
    for rel, content in result.files.items():
        target = tree / rel
        if content is None:
            target.unlink(missing_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode())
    return result


def read_answer(
    text: str, base: Mapping[str, str], editable: list[str] | None = None, cut_off: bool = False
) -> AppliedAnswer:
    """New file contents meant by the reply ``text`` against ``base`` (path -> content); nothing is written."""
    text = from_apply_patch(text.replace("\r\n", "\n").replace("\r", "\n"))
    blocks = fenced_blocks(text)
    if cut_off and (not blocks or not blocks[-1].closed):
        raise PatchError(
            "the reply was cut off at the output-token limit inside its change; nothing was applied. "
            "Send the complete change, as short as possible (a diff, not whole files)"
        )
    if blocks and not blocks[-1].closed:
        raise PatchError(
            "the reply stops inside an unclosed ``` block: it looks cut off (output limit?). Nothing was applied; "
            "send the complete change, as short as possible"
        )
    part = select_change(text, base)
    files = _interpret(part, base, editable)
    files = {k: v for k, v in files.items() if v != base.get(k) or k not in base}
    if not files:
        raise PatchError("the change leaves every file as it was: nothing to run")
    form = "search_replace" if has_search_replace(part) else ("diff" if _has_diff(part) else "whole_file")
    return AppliedAnswer(files, form)


def _has_diff(text: str) -> bool:
    blocks = fenced_blocks(text)
    if any(looks_like_diff("\n".join(b.lines)) for b in blocks):
        return True
    return bool(re.search(r"^(diff --git |--- \S.*\n\+\+\+ \S|@@ )", text, re.M))


def named_files(text: str, base: Mapping[str, str]) -> list[str]:
    """Files a reply's diff headers or SEARCH/REPLACE blocks name (resolved against ``base``)."""
    text = from_apply_patch(text.replace("\r\n", "\n"))
    raw = re.findall(r"^(?:---|\+\+\+) (\S+)", text, re.M) + re.findall(r"^diff --git (\S+) (\S+)", text, re.M)
    names = [n for x in raw for n in ([x] if isinstance(x, str) else x)]
    if has_search_replace(text):
        try:
            names += [e.file for e in parse_search_replace(text)]
        except PatchError:
            pass
    out = set()
    for n in names:
        n = n.strip("\"'")
        if n in ("/dev/null", "dev/null"):
            continue
        out.add(resolve_path(n[2:] if n.startswith("./") else n, list(base)))
    return sorted(out)


def _interpret(part: str, base: Mapping[str, str], editable: list[str] | None) -> dict[str, str | None]:
    if has_search_replace(part):
        # a block naming no file goes to the one editable file holding its SEARCH text (read only then)
        files = base if editable is None else {k: base[k] for k in editable if k in base}
        edits = parse_search_replace(part, files)
        for e in edits:
            e.file = resolve_path(e.file, list(base))
        return dict(apply_search_replace_fuzzy(edits, base.get))
    if _has_diff(part):
        return repaired_files(part, base)
    return whole_files(part, base, editable)


# --------------------------------------------------------------------------- which part of the reply


def _is_prose(line: str) -> bool:
    return bool(line.strip()) and not line.startswith((" ", "+", "-", "@", "\\", "<<<<<<<", "=======", ">>>>>>>"))


def _change_starts(lines: list[str]) -> list[int]:
    """Line numbers where a change starts: a fenced block with a diff/SEARCH/code, or an unfenced diff header."""
    text = "\n".join(lines)
    starts = [b.start for b in fenced_blocks(text)]
    inside = {k for b in fenced_blocks(text) for k in range(b.start, b.end + 1)}
    for k, line in enumerate(lines):
        if k in inside:
            continue
        nxt = lines[k + 1] if k + 1 < len(lines) else ""
        if line.startswith("diff --git") or (line.startswith("--- ") and nxt.startswith("+++ ")):
            if not starts or k - 1 not in starts:
                starts.append(k)
        elif re.match(r"^\s*<{5,9}\s*SEARCH", line):
            starts.append(k)
    return sorted(set(starts))


def select_change(text: str, base: Mapping[str, str]) -> str:
    """The part of a reply that is the change.

    Between two changes, "corrected diff" / "instead" / "I made a mistake" means the second replaces the first;
    "also" / "forgot" that it adds to it; a bare "Wait," / "Actually," replaces when the second change redoes the
    same lines, and is refused as unclear otherwise. A replacement that leaves out part of what the first change
    did is refused. "Alternatively, ..." / "Option 2" before a later change: the main (first) change is taken."""
    lines = text.split("\n")
    seen: set[str] = set()
    for b in fenced_blocks(text):  # the same change repeated verbatim ("the final diff again:") counts once
        body = "\n".join(b.lines).strip()
        if body in seen and looks_like_diff(body):
            lines[b.start : b.end + 1] = [""] * (b.end + 1 - b.start)
        seen.add(body)
    for _ in range(8):  # one revision marker at a time, latest first
        inside = {k for b in fenced_blocks("\n".join(lines)) for k in range(b.start, b.end + 1)}
        starts = _change_starts(lines)
        between = [
            k
            for k, ln in enumerate(lines)
            if k not in inside and _is_prose(ln) and any(s < k for s in starts) and any(s > k for s in starts)
        ]
        marks = [k for k in between if _revision_kind(lines[k]) is not None]
        if not marks:
            break
        cut = marks[-1]
        kind = _revision_kind(lines[cut])
        first, later = "\n".join(lines[:cut]), "\n".join(lines[cut:])
        if kind == "supplement":
            lines[cut] = ""  # both changes stand; look for earlier markers
            continue
        replaces = _overlaps(first, later, base)
        if kind == "second_thought" and replaces is False:
            raise PatchError(
                f"the reply revises itself ({lines[cut].strip()[:80]!r}) with a change elsewhere, and it is unclear "
                "whether that replaces or adds to the first; nothing was applied. Send one complete diff"
            )
        _check_correction_covers(first, later, base)
        log.info("reply corrects itself at line %d: taking the change after it", cut + 1)
        lines = lines[cut:]
        break
    inside = {k for b in fenced_blocks("\n".join(lines)) for k in range(b.start, b.end + 1)}
    starts = _change_starts(lines)
    alternatives = [
        k
        for k, ln in enumerate(lines)
        if k not in inside
        and _is_prose(ln)
        and ALTERNATIVE_RE.search(ln)
        and any(s < k for s in starts)
        and any(s > k for s in starts)
    ]
    if alternatives:
        log.info("reply offers alternatives from line %d: taking the main change", alternatives[0] + 1)
        return "\n".join(lines[: alternatives[0]])
    return "\n".join(lines)


def _revision_kind(line: str) -> str | None:
    if CORRECTION_RE.search(line):
        return "correction"
    if SUPPLEMENT_RE.search(line):
        return "supplement"
    if SECOND_THOUGHT_RE.search(line):
        return "second_thought"
    return None


def _overlaps(first: str, later: str, base: Mapping[str, str]) -> bool | None:
    """Whether the two changes touch the same lines (None when either does not apply on its own)."""
    try:
        a, b = _interpret(first, base, None), _interpret(later, base, None)
    except PatchError:
        return None
    for path in set(a) & set(b):
        old = base.get(path)
        if old is None:
            return True
        ra, rb = _changed_ranges(old, a[path]), _changed_ranges(old, b[path])
        if any(x < d + 3 and c < y + 3 for x, y in ra for c, d in rb):
            return True
    return False


def _changed_ranges(old: str, new: str | None) -> list[tuple[int, int]]:
    if new is None:
        return [(0, len(old.splitlines()))]
    sm = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    return [(i1, max(i2, i1 + 1)) for tag, i1, i2, _, _ in sm.get_opcodes() if tag != "equal"]


def _check_correction_covers(first: str, later: str, base: Mapping[str, str]) -> None:
    """A correction replaces the first change only when it redoes every place the first one changed."""
    try:
        before = _interpret(first, base, None)
    except PatchError:
        return  # the first change does not even apply: the correction stands alone
    try:
        after = _interpret(later, base, None)
    except PatchError:
        return  # the correction itself fails: its own error is the one to report
    for path, new in before.items():
        old = base.get(path)
        if old is None or new == old:
            continue
        redo = _changed_ranges(old, after[path]) if path in after else []
        for a, b in _changed_ranges(old, new):
            if not any(a < d + 3 and c < b + 3 for c, d in redo):
                raise PatchError(
                    f"the reply corrects itself, but the correction leaves out part of the first change ({path} "
                    f"line {a + 1}); nothing was applied. Send one complete diff"
                )


# --------------------------------------------------------------------------- whole files in fenced blocks


def whole_files(text: str, base: Mapping[str, str], editable: list[str] | None) -> dict[str, str]:
    """Files given whole in fenced code blocks: each block is matched to a file by a path mention or by
    similarity, elisions are expanded from the file; a block that is not the whole file is applied only as whole
    definitions, each replacing the file's one definition of that name (else refused)."""
    lines = text.split("\n")
    candidates = [p for p in (editable or list(base)) if p in base]
    blocks = [b for b in fenced_blocks(text) if _is_code_block(b)]
    if not blocks:
        raise PatchError(
            "no change found in the reply: expected a unified diff (--- a/FILE, +++ b/FILE, @@ lines), "
            "SEARCH/REPLACE blocks, or the whole new file in a fenced block"
        )
    if not blocks[-1].closed:
        raise PatchError(
            "the reply stops inside an unclosed ``` block: it looks cut off (output limit?). Nothing was applied; "
            "send a unified diff instead of whole files"
        )
    out: dict[str, str] = {}
    for b in blocks:
        try:
            path = _block_target(b, lines, candidates, base)
        except PatchError:  # a block of definitions only one file has: "replace make_norm with this"
            path = file_defining(b.lines, candidates, base)
            if path is None:
                raise
        if path in out:
            raise PatchError(f"the reply gives {path} twice in full; nothing was applied. Send one version")
        body = b.lines
        if body and _names_file(body[0], [path]):
            body = body[1:]  # "# train.py" header comment
        content = expand_elisions(body, base[path].splitlines(), path)
        try:
            _check_whole(content, base[path], path)
        except PatchError as fragment:  # not the whole file: whole definitions, each replacing the file's one
            if not path.endswith(".py"):
                raise
            try:
                content = replace_definitions(body, base[path], path)
            except PatchError as e:
                raise PatchError(f"the code block for {path} is a fragment, not the whole file; {e}") from fragment
        eol = "\r\n" if "\r\n" in base[path] else "\n"
        out[path] = eol.join(content) + (eol if base[path].endswith(("\n", "\r")) else "")
    return out


def _is_code_block(b) -> bool:
    info = b.info.split()[0].lower() if b.info.split() else ""
    body = "\n".join(b.lines)
    return (info in _CODE_INFO or "." in info or "/" in info) and not looks_like_diff(body) and bool(body.strip())


def _names_file(line: str, names: list[str]) -> bool:
    s = line.strip()
    if not s.startswith(("#", "//")):
        return False
    s = re.sub(r"^(#|//)\s*(file(name)?\s*:\s*)?", "", s, flags=re.I).strip("`*: ")
    return any(s == n or s.endswith("/" + n) for n in names)


def _mentions(line: str, names: list[str]) -> set[str]:
    found = set()
    for n in names:
        if re.search(r"(?<![\w./-])(?:[\w.-]+/)*" + re.escape(n) + r"(?![\w-])", line):
            found.add(n)
    return found


def _block_target(b, lines: list[str], candidates: list[str], base: Mapping[str, str]) -> str:
    info_names = set()
    for tok in b.info.split():
        p = resolve_path(tok.strip("`'\""), candidates)
        if p in candidates:
            info_names.add(p)
    if len(info_names) == 1:
        return info_names.pop()
    if b.lines and (named := [n for n in candidates if _names_file(b.lines[0], [n])]):
        if len(named) == 1:
            return named[0]
    k, prose = b.start - 1, []
    while k >= 0 and len(prose) < 3:
        if lines[k].strip().startswith(("```", "~~~")):
            break
        if lines[k].strip():
            prose.append(lines[k])
        k -= 1
    mentioned = set().union(*(_mentions(ln, candidates) for ln in prose)) if prose else set()
    if len(mentioned) == 1:
        return mentioned.pop()
    pool = sorted(mentioned) or candidates
    scores = sorted(
        ((difflib.SequenceMatcher(None, base[n].splitlines(), b.lines, autojunk=False).ratio(), n) for n in pool),
        reverse=True,
    )
    if not scores or scores[0][0] < 0.4 or (len(scores) > 1 and scores[0][0] - scores[1][0] < 0.15):
        shown = ", ".join(f"{n} ({r:.2f})" for r, n in scores[:3])
        raise PatchError(
            "a code block in the reply names no file and does not clearly match one editable file "
            f"(similarity {shown}); nothing was applied. Send a unified diff with --- a/FILE / +++ b/FILE headers"
        )
    return scores[0][1]


def _check_whole(content: list[str], old: str, path: str) -> None:
    old_lines = [ln.strip() for ln in old.splitlines() if ln.strip()]
    new_set = {ln.strip() for ln in content if ln.strip()}
    kept = sum(ln in new_set for ln in old_lines) / max(1, len(old_lines))
    if kept < MIN_WHOLE_FILE_COVERAGE:
        raise PatchError(
            f"the code block for {path} keeps only {kept:.0%} of the file's lines: it is a fragment, not the "
            "whole file, and where it goes cannot be checked; nothing was applied. Send a unified diff"
        )


def expand_elisions(block: list[str], base: list[str], path: str) -> list[str]:
    """Replace elision lines (``# ... existing code ...``) in a whole-file block by the file lines they stand for.

    The block is cut at elisions into segments; each segment is located in the file after the previous one by
    a line that occurs once in the file, and widened over the changed lines at its edges; what lies between two
    segments in the file is what the elision stood for."""
    if not any(ELISION_RE.match(ln) for ln in block):
        return block
    segs: list[list[str]] = [[]]
    gap_indent: list[int] = []  # indentation of each elision line: it stands for lines at that depth or deeper
    for ln in block:
        if ELISION_RE.match(ln):
            segs.append([])
            gap_indent.append(len(ln.expandtabs(4)) - len(ln.expandtabs(4).lstrip()))
        else:
            segs[-1].append(ln)
    norm = [" ".join(x.split()) for x in base]
    counts: dict[str, int] = {}
    for x in norm:
        counts[x] = counts.get(x, 0) + 1
    out: list[str] = []
    pos = 0
    for k, seg in enumerate(segs):
        gap_before, gap_after = k > 0, k < len(segs) - 1
        if not any(s.strip() for s in seg):
            continue
        r0, r1 = _locate_segment(seg, norm, counts, pos, path)
        if not gap_before:
            r0 = pos
        if not gap_after:
            r1 = len(base)
        else:
            r1 = _end_of_block(seg, base, r1, gap_indent[k])
        if gap_before:
            out.extend(base[pos:r0])
        out.extend(seg)
        pos = r1
    if segs[-1] == [] or not any(s.strip() for s in segs[-1]):
        out.extend(base[pos:])
    return out


def _locate_segment(seg: list[str], norm: list[str], counts: dict[str, int], pos: int, path: str) -> tuple[int, int]:
    sn = [" ".join(x.split()) for x in seg]
    anchors = [(i, norm.index(x, pos)) for i, x in enumerate(sn) if x and counts.get(x) == 1 and x in norm[pos:]]
    if not anchors:
        raise PatchError(
            f"{path}: a part of the code block between elision comments has no line that occurs once in the file "
            "after the part before it, so what the elision stands for is unclear; nothing was applied. "
            "Send a unified diff"
        )
    # align the segment with the file from its first to its last anchor
    (i0, a0), (i1, a1) = anchors[0], anchors[-1]
    r0, r1 = a0, a1 + 1
    # lines before the first anchor: matched or similar to the file lines just before it belong to the segment
    t = i0 - 1
    while t >= 0 and r0 - 1 >= pos and _similar(sn[t], norm[r0 - 1]):
        r0, t = r0 - 1, t - 1
    t = i1 + 1
    while t < len(sn) and r1 < len(norm) and _similar(sn[t], norm[r1]):
        r1, t = r1 + 1, t + 1
    return r0, r1


def _depth(line: str) -> int:
    x = line.expandtabs(4)
    return len(x) - len(x.lstrip())


def _end_of_block(seg: list[str], base: list[str], r1: int, gap_depth: int) -> int:
    """A segment that ends inside a block deeper than the elision after it rewrote that block to its end: the
    file's remaining lines of the block are not part of what the elision stands for."""
    last = next((x for x in reversed(seg) if x.strip()), "")
    if _depth(last) <= gap_depth:
        return r1
    k = r1
    while k < len(base) and (not base[k].strip() or _depth(base[k]) > gap_depth):
        k += 1
    while k > r1 and not base[k - 1].strip() and not (seg and not seg[-1].strip()):
        k -= 1  # keep the file's blank separator when the segment does not bring its own
    return k


def _similar(a: str, b: str) -> bool:
    if a == b:
        return True
    if not a or not b:
        return False
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.6


# --------------------------------------------------------------------------- checks


def check_compiles(files: Mapping[str, str | None], base: Mapping[str, str]) -> None:
    """Every changed Python file must still compile (it did before): else PatchError with the region."""
    for path, text in sorted(files.items()):
        if text is None or not path.endswith(".py"):
            continue
        old = base.get(path)
        if old is not None and not _compiles(old, path):
            continue
        try:
            compile(text, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            line = getattr(e, "lineno", None) or 1
            msg = getattr(e, "msg", str(e))
            raise PatchError(
                f"{path}: the changed file does not compile: {msg} (line {line}); nothing was applied. "
                f"The region after the change:\n{file_region(text, line - 1)}"
            ) from e


def _compiles(text: str, path: str) -> bool:
    try:
        compile(text, path, "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):
        return False
