"""Reading ideas out of an ideator's reply: ``{"ideas": [{"title": ..., "description": ...}, ...]}``, as models
actually write it.

Tolerated, because models write it: the JSON fenced (the fence that holds it, when there are several) or wrapped
in prose; a bare list; raw newlines inside strings; trailing commas; a Python-style dict with single quotes; the
usual other names for the two fields (``name``, ``desc``, ``details``...). Each idea is validated on its own, so
one bad idea costs only itself, and a reply cut off at the token limit keeps every idea complete before the cut.
"""

from __future__ import annotations

import ast
import json
import re

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

_DECODER = json.JSONDecoder(strict=False)  # raw newlines and tabs inside strings, as models write them
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class IdeaDraft(BaseModel):
    """One idea as the model writes it."""

    model_config = ConfigDict(extra="ignore")
    title: str = Field(
        min_length=3, max_length=200, validation_alias=AliasChoices("title", "name", "idea_title", "heading", "idea")
    )
    description: str = Field(
        min_length=10,
        max_length=4000,
        validation_alias=AliasChoices(
            "description", "desc", "details", "detail", "text", "content", "summary", "explanation"
        ),
    )
    parent_ids: list[str] = Field(default_factory=list)


class IdeaBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ideas: list[IdeaDraft]


class CutOff(ValueError):
    """The reply ends inside this JSON value (the output-token limit)."""


class _Garbled(ValueError):
    """A complete value (brackets balanced) that is no JSON even after repair; ``end`` is where it ends."""

    def __init__(self, message: str, end: int) -> None:
        super().__init__(message)
        self.end = end


def parse_ideas(text: str) -> IdeaBatch:
    """Validate a reply as ``{"ideas": [...]}`` (a JSON object, possibly fenced or wrapped in prose), strictly."""
    t = _json_part(text)
    starts = [k for k in (t.find("{"), t.find("[")) if k >= 0]
    if not starts:
        raise ValueError("no JSON object in the reply")
    data, _ = _DECODER.raw_decode(t[min(starts) :])
    if isinstance(data, list):
        data = {"ideas": data}
    return IdeaBatch.model_validate(data)


def parse_ideas_lenient(text: str) -> tuple[list[IdeaDraft], list[str]]:
    """The valid ideas of a reply, each validated on its own, and a problem per invalid one.

    Accepts a reply cut mid-way (at the token limit): every idea object complete before the cut is kept.
    """
    t = _json_part(text)
    m = re.search(r"""["']ideas["']\s*:\s*\[""", t)
    if m:
        pos = m.end()
    else:
        k = t.find("[")
        if k < 0:
            return [], ["reply is not valid JSON of the required shape: no JSON object with an ideas list"]
        pos = k + 1
    drafts: list[IdeaDraft] = []
    problems: list[str] = []
    k = 0
    while True:
        while pos < len(t) and t[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(t) or t[pos] == "]":
            break
        try:
            item, pos = _item(t, pos)
        except CutOff:
            if not drafts and not problems:
                problems.append("reply is not valid JSON of the required shape: no complete idea object")
            break  # the rest is cut: keep what was complete
        except _Garbled as e:  # a complete value that is no JSON even repaired: it alone is lost
            k += 1
            problems.append(f"idea {k} is not valid JSON and was dropped: {_short(e)}")
            pos = e.end
            continue
        k += 1
        try:
            drafts.append(IdeaDraft.model_validate(item))
        except ValidationError as e:
            problems.append(f"idea {k} is invalid and was dropped: {_short(e)}")
    return drafts, problems


def _item(t: str, pos: int) -> tuple[object, int]:
    """The JSON value at ``pos`` and where it ends. Repairs a complete object (trailing commas, single quotes);
    raises CutOff when the text ends inside it, _Garbled when it is complete but unreadable."""
    try:
        return _DECODER.raw_decode(t, pos)
    except json.JSONDecodeError:
        pass
    if t[pos] not in "{[":
        raise CutOff("no JSON value here")
    end = _balanced_end(t, pos)
    if end is None:
        raise CutOff("the reply ends inside this value")
    chunk = t[pos:end]
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", chunk), strict=False), end
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(chunk)  # {'title': '...'}: a Python dict, as small models write it
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, dict | list):
        return value, end
    raise _Garbled(f"cannot read {chunk[:80]!r}", end)


def _balanced_end(t: str, pos: int) -> int | None:
    """Index just past the bracket closing the one at ``pos`` (strings in either quote skipped), or None."""
    depth, quote, k = 0, "", pos
    while k < len(t):
        c = t[k]
        if quote:
            if c == "\\":
                k += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c if c == '"' or _opens_single_quote(t, k) else ""
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return k + 1
        k += 1
    return None


def _opens_single_quote(t: str, k: int) -> bool:
    """A ' that opens a Python string (after ``{ [ , :``), not an apostrophe inside unquoted prose."""
    before = t[:k].rstrip()
    return bool(before) and before[-1] in "{[,:"


def _json_part(text: str) -> str:
    """The fenced block that holds the JSON (the first one opening with { or [), else the whole reply."""
    t = text.strip()
    blocks = re.findall(r"```[\w-]*[ \t]*\n(.*?)(?:```|$)", t, re.S)
    for b in blocks:
        if b.lstrip().startswith(("{", "[")):
            return b.strip()
    return blocks[0].strip() if blocks else t


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
