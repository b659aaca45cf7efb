"""PROTECTED. The r1_zero reward and the answer grader of grpo_math.

Reward (the paper's r1_zero reward): 1 when the response contains ``</think> <answer>`` and ``</answer>`` and the
text inside the last ``<answer>`` (or the last ``\\boxed{}`` in it) equals the reference answer, else 0; a
formatted but wrong answer gets 0 too (``format_reward`` records the format alone).
Equality: the paper's Hendrycks/mathd normalisation (LaTeX spacing, ``\\dfrac``, ``\\left``, units in
``\\text{}``, thousands separators, ``a/b``), exact numbers (``0.75 == 3/4``), then math-verify's symbolic
comparison (sets, intervals, expressions, equations), which the paper's grader lacks in its default fast mode.
"""

from __future__ import annotations

import re
from fractions import Fraction

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

FORMAT_MARK, END_MARK = "</think> <answer>", "</answer>"


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
_UNIT_RE = re.compile(r"\\(?:text|mbox)\{\s*[a-zA-Z ]+\}$")


def normalize(ans: str) -> str:
    """Canonical string form (mathd-style): no spaces, $, \\left/\\right, spacing commands, trailing units in
    \\text{}, degrees, trailing dot; dfrac/tfrac -> frac; \\frac12 -> \\frac{1}{2}; a/b -> \\frac{a}{b}."""
    s = ans.strip().replace("\n", "")
    s = _UNIT_RE.sub("", s) if _UNIT_RE.sub("", s).strip() else s
    s = _TEXT_RE.sub(r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\$", ""), ("$", "")):
        s = s.replace(old, new)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"-?\d+/\d+", s):
        num, den = s.split("/")
        s = f"\\frac{{{num}}}{{{den}}}" if not num.startswith("-") else f"-\\frac{{{num[1:]}}}{{{den}}}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"[a-zA-Z]=.+", s):  # "x=5" -> "5"
        s = s[2:]
    return s


def _number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(\.\d+)?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _symbolic_equal(given: str, reference: str) -> bool:
    try:
        gold = parse(f"${reference}$", extraction_config=_CONFIG, parsing_timeout=2)
        pred = parse(f"${given}$", extraction_config=_CONFIG, parsing_timeout=2)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=2))
    except Exception:  # noqa: BLE001 - an unparsable answer is simply not equal
        return False


def equivalent(given: str | None, reference: str) -> bool:
    """True when two final answers are the same mathematical answer."""
    if given is None or not given.strip():
        return False
    a, b = normalize(given), normalize(reference)
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    return _symbolic_equal(given, reference)


def extract_answer(response: str) -> str | None:
    """The answer of an r1_zero-formatted response, or None when the format is not followed."""
    if FORMAT_MARK not in response or END_MARK not in response:
        return None
    text = response.split("<answer>")[-1].replace(END_MARK, "")
    if "\\boxed" in text:
        return last_boxed(text)
    return text.strip()


def r1_zero_reward(response: str, reference: str) -> dict[str, float]:
    """{"format_reward", "answer_reward", "reward"} of one response, as the paper's r1_zero reward."""
    formatted = FORMAT_MARK in response and END_MARK in response
    correct = formatted and equivalent(extract_answer(response), reference)
    return {"format_reward": float(formatted), "answer_reward": float(correct), "reward": float(correct)}
