"""PROTECTED. Final-answer extraction and equivalence checking for MATH-style solutions."""

from __future__ import annotations

import re
from fractions import Fraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize(ans: str) -> str:
    """Canonical string form: no spaces, $, \\left/\\right, \\!, units in \\text{}, trailing dot; dfrac->frac."""
    s = ans.strip()
    s = _TEXT_RE.sub(r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("$", "")):
        s = s.replace(old, new)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def _number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(\.\d+)?|-?\d+/\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def equivalent(predicted: str | None, reference: str) -> bool:
    """True when two final answers match after normalisation, or as equal numbers (3/4 == 0.75)."""
    if predicted is None:
        return False
    a, b = normalize(predicted), normalize(reference)
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    return na is not None and na == nb


def score(completion: str, reference: str) -> float:
    """Reward of one completion: 1.0 when its last \\boxed{} answer equals the reference, else 0.0."""
    return 1.0 if equivalent(last_boxed(completion), reference) else 0.0
