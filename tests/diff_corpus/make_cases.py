"""Regenerate tests/diff_corpus/cases from tests/diff_corpus/base: each case = one intended edit + one LLM-style defect.

    python tests/diff_corpus/make_cases.py

Writes cases/<NN_name>/patch.diff and cases/<NN_name>/expected/<file> (or EXPECT_FAIL). Deterministic.
"""

import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ideaforge.patch.repair import render_diff

C = Path(__file__).resolve().parent
BASE = {p.name: p.read_bytes().decode() for p in (C / "base").iterdir()}


def edit(files):
    out = {}
    for f, old, new in files:
        cur = out.get(f, BASE[f])
        assert cur.count(old) == 1, (f, old)
        out[f] = cur.replace(old, new, 1)
    return out


E_LR = [("train.py", "LEARNING_RATE = 1e-3\n", "LEARNING_RATE = 3e-3\n")]
E_COS = [
    (
        "train.py",
        '    """Learning rate for ``step`` of ``total``: constant."""\n    return LEARNING_RATE\n',
        '    """Learning rate for ``step`` of ``total``: cosine decay."""\n    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / total))\n',
    )
]
E_RMS = [
    (
        "model.py",
        "def make_norm(dim: int) -> nn.Module:\n    return nn.LayerNorm(dim)\n",
        "def make_norm(dim: int) -> nn.Module:\n    return nn.RMSNorm(dim)\n",
    )
]
E_MLP = [
    (
        "model.py",
        "        return self.out(F.gelu(self.fc(x)))\n",
        "        h = self.fc(x)\n        return self.out(F.silu(h) * h)\n",
    )
]
E_TWO = E_LR + [("train.py", "GRAD_CLIP = 1.0\n", "GRAD_CLIP = 0.5\n")]
E_FAR = [
    ("train.py", "BETA2 = 0.99\n", "BETA2 = 0.95\n"),
    (
        "train.py",
        "        if GRAD_CLIP > 0:\n            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)\n",
        "        if GRAD_CLIP > 0:\n            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP, foreach=True)\n",
    ),
]
E_TIE = [
    (
        "model.py",
        "        self.apply(self._init_weights)\n",
        "        self.lm_head.weight = self.wte.weight\n        self.apply(self._init_weights)\n",
    )
]
E_TAB = [
    (
        "tabbed.py",
        "\tfrac = step / total  \n\treturn 0.5 * (1 + frac)\n",
        "\tfrac = step / total  \n\treturn 0.5 * (1 + math.cos(math.pi * frac))\n",
    )
]
E_CRLF = [("crlf.py", "ALPHA = 0.5\r\n", "ALPHA = 0.25\r\n")]
E_NONL = [("nonl.py", "    return 42", "    return 43")]
E_MULTI = E_LR + E_RMS
E_DROP = [("model.py", "    dropout: float = 0.0\n", "    dropout: float = 0.1\n")]


def clean(edits):
    new = edit(edits)
    return render_diff(BASE, new), new


def fence(d, lang="diff"):
    return f"Sure! Here is the change you asked for:\n\n```{lang}\n{d}```\n\nThis should improve the loss. Let me know if you need anything else."


def renumber(d, delta):
    return re.sub(
        r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@",
        lambda m: f"@@ -{int(m[1]) + delta}{m[2] or ''} +{int(m[3]) + delta}{m[4] or ''} @@",
        d,
        flags=re.M,
    )


def recount(d):
    return re.sub(r"^@@ -(\d+),\d+ \+(\d+),\d+ @@", lambda m: f"@@ -{m[1]},99 +{m[2]},3 @@", d, flags=re.M)


def nonumbers(d):
    return re.sub(r"^@@ .* @@.*$", "@@ ... @@", d, flags=re.M)


def noprefix(d):
    d = re.sub(r"^--- a/", "--- ", d, flags=re.M)
    return re.sub(r"^\+\+\+ b/", "+++ ", d, flags=re.M)


def nogit(d):
    d = re.sub(r"^diff --git .*\n", "", d, flags=re.M)
    d = re.sub(
        r"^(---|\+\+\+) (\S+)$",
        lambda m: f"{m[1]} {m[2]}\t2024-05-01 12:00:00.000000000 +0000",
        d,
        flags=re.M,
    )
    return d


def ctx_trailing(d):
    return "\n".join(ln + "   " if ln.startswith(" ") and ln.strip() else ln for ln in d.split("\n"))


def crlf(d):
    return d.replace("\n", "\r\n")


def ctx_tabs(d):
    return "\n".join(
        " " + re.sub(r"^ {4}", "\t", ln[1:]) if ln.startswith(" ") else ln for ln in d.split("\n")
    )


def blank_noprefix(d):
    return "\n".join("" if ln == " " else ln for ln in d.split("\n"))


def ctx_noprefix(d):
    return "\n".join(
        ln[1:] if ln.startswith(" ") and ln[1:].strip() and not ln.startswith("  ") else ln
        for ln in d.split("\n")
    )


def ctx_noprefix_all(d):
    return "\n".join(ln[1:] if ln.startswith(" ") else ln for ln in d.split("\n"))


def no_final_nl(d):
    return d.rstrip("\n")


def dedent(d):
    out = []
    for ln in d.split("\n"):
        if ln[:1] in " +-" and not ln.startswith(("---", "+++")) and ln[1:5] == "    ":
            ln = ln[0] + ln[5:]
        out.append(ln)
    return "\n".join(out)


def extra_blank_ctx(d):
    lines = d.split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("@@"))
    lines.insert(k + 2, " ")
    return "\n".join(lines)


def drop_blank_ctx(d):
    return "\n".join(ln for ln in d.split("\n") if ln != " ")


def halluc_ctx(d):
    lines = d.split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("@@"))
    lines.insert(k + 1, " # this line is not in the file at all")
    return "\n".join(lines)


def reverse_hunks(d):
    head, *hunks = re.split(r"(?m)^(?=@@)", d)
    return head + "".join(reversed(hunks))


def dotslash(d):
    return re.sub(r"^(---|\+\+\+) [ab]/", r"\1 ./", d, flags=re.M)


def baseline_prefix(d):
    return re.sub(r"^(---|\+\+\+) ([ab])/", r"\1 \2/baseline/", d, flags=re.M)


def headerless(d):
    return "\n".join(ln for ln in d.split("\n") if not ln.startswith(("diff --git", "---", "+++")))


def ellipsis(d):
    lines = d.split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("@@"))
    lines.insert(k + 1, "...")
    return "\n".join(lines)


def zero_numbers(d):
    return re.sub(r"^@@ .* @@", "@@ -0 +0 @@", d, flags=re.M)


def split_sections(d):
    # second hunk becomes its own --- +++ section for the same file
    head_end = d.index("@@")
    head = d[:head_end]
    parts = re.split(r"(?m)^(?=@@)", d[head_end:])
    hdr = "".join(ln + "\n" for ln in head.split("\n") if ln.startswith(("---", "+++")))
    return head + parts[0] + hdr + "".join(parts[1:])


def two_fences(d):
    secs = re.split(r"(?m)^(?=diff --git)", d)
    secs = [s for s in secs if s]
    return (
        "First file:\n\n```diff\n"
        + secs[0]
        + "```\n\nAnd the second one:\n\n```diff\n"
        + secs[1]
        + "```\nDone.\n"
    )


def python_fence(d):
    return fence(d, "python")


def markdown_bold_header(d):
    return "**Patch:**\n\n" + fence(nogit(d))


def chatter_no_fence(d):
    return "I will change the learning rate.\n\n" + d + "\nThat's it: the change is small and safe.\n"


def diff_fence_crlf_numbers(d):
    return crlf(fence(renumber(d, 7)))


def combo(d):
    return fence(noprefix(recount(renumber(blank_noprefix(d), -5))))


def ctx_changed_text(d):
    # context misquoted (wrong text): unrecoverable -> fail expected
    return d.replace(" LEARNING_RATE", " LR_WRONG").replace(" def lr_at", " def learning_rate_at")


def invented_file(d):
    return d.replace("a/train.py", "a/trainer.py").replace("b/train.py", "b/trainer.py")


CASES = [
    ("control_clean", E_LR, lambda d: d),
    ("control_clean_multi", E_MULTI, lambda d: d),
    ("fenced_chatter", E_COS, fence),
    ("python_fence", E_RMS, python_fence),
    ("wrong_line_numbers", E_COS, lambda d: renumber(d, 12)),
    ("wrong_line_numbers_neg", E_MLP, lambda d: renumber(d, -9)),
    ("wrong_counts", E_TIE, recount),
    ("no_numbers", E_RMS, nonumbers),
    ("zero_numbers", E_MLP, zero_numbers),
    ("missing_ab_prefix", E_COS, noprefix),
    ("no_git_header_timestamps", E_RMS, nogit),
    ("ctx_trailing_spaces", E_MLP, ctx_trailing),
    ("crlf_diff", E_COS, crlf),
    ("ctx_tabs_for_spaces", E_FAR, ctx_tabs),
    ("blank_ctx_no_prefix", E_COS, blank_noprefix),
    ("ctx_no_prefix", E_TIE, ctx_noprefix),
    ("ctx_no_prefix_all", E_MLP, ctx_noprefix_all),
    ("no_final_newline", E_RMS, no_final_nl),
    ("dedented_hunk", E_MLP, dedent),
    ("dedented_hunk_far", E_FAR, dedent),
    ("extra_blank_ctx", E_RMS, extra_blank_ctx),
    ("dropped_blank_ctx", E_COS, drop_blank_ctx),
    ("hallucinated_ctx", E_TIE, halluc_ctx),
    ("reversed_hunks", E_FAR, reverse_hunks),
    ("dotslash_paths", E_LR, dotslash),
    ("baseline_prefix_paths", E_TIE, baseline_prefix),
    ("headerless_hunks", E_MLP, headerless),
    ("ellipsis_line", E_RMS, ellipsis),
    ("split_sections", E_FAR, split_sections),
    ("two_fences", E_MULTI, two_fences),
    ("tab_file_space_ctx", E_TAB, lambda d: d.replace("\n \t", "\n     ").replace("\n+\t", "\n+    ")),
    (
        "tab_file_trailing_stripped",
        E_TAB,
        lambda d: "\n".join(ln.rstrip() if ln.startswith(" ") else ln for ln in d.split("\n")),
    ),
    ("crlf_file_lf_diff", E_CRLF, lambda d: d.replace("\r", "")),
    ("no_newline_file", E_NONL, lambda d: d.replace("\\ No newline at end of file\n", "")),
    ("markdown_bold_nogit", E_DROP, markdown_bold_header),
    ("chatter_no_fence", E_TWO, chatter_no_fence),
    ("fence_crlf_numbers", E_COS, diff_fence_crlf_numbers),
    ("combo_defects", E_FAR, combo),
    ("unrecoverable_misquoted", E_COS, ctx_changed_text),
    ("unrecoverable_unknown_file", E_LR, invented_file),
]


def main() -> None:
    shutil.rmtree(C / "cases", ignore_errors=True)
    for i, (name, edits, defect) in enumerate(CASES, 1):
        d, new = clean(edits)
        broken = defect(d)
        case = C / "cases" / f"{i:02d}_{name}"
        case.mkdir(parents=True)
        (case / "patch.diff").write_bytes(broken.encode())
        if name.startswith("unrecoverable"):
            (case / "EXPECT_FAIL").write_text(
                "repair must refuse this diff (its context is not in the file)\n"
            )
            continue
        for f, content in new.items():
            (case / "expected" / f).parent.mkdir(parents=True, exist_ok=True)
            (case / "expected" / f).write_bytes(content.encode())
    print(len(CASES), "cases")


if __name__ == "__main__":
    main()
