"""diff_repair: the imperfect-diff corpus, single defects, SEARCH/REPLACE parsing, and what it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ideaforge.models import SearchReplace
from ideaforge.patch.apply import PatchError, apply_diff
from ideaforge.patch.repair import (
    apply_search_replace_fuzzy,
    apply_with_repair,
    extract_diff_text,
    parse_search_replace,
    repair_diff,
    resolve_path,
)

CORPUS = Path(__file__).resolve().parent / "diff_corpus"
CASES = sorted(p for p in (CORPUS / "cases").iterdir() if (p / "patch.diff").is_file())
BASE = {"m.py": "def f(x):\n    y = x + 1\n\n    return y * 2\n\n\nVALUE = 3\n"}


def test_corpus_is_big_enough():
    assert len([c for c in CASES if not (c / "EXPECT_FAIL").exists()]) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(CORPUS / "base", tree)
    diff = (case / "patch.diff").read_bytes().decode()
    if (case / "EXPECT_FAIL").exists():
        with pytest.raises(PatchError):
            apply_with_repair(diff, tree)
        return
    applied = apply_with_repair(diff, tree)
    for f in (case / "expected").rglob("*"):
        if f.is_file():
            assert (tree / f.relative_to(case / "expected")).read_bytes() == f.read_bytes(), f.name
    fresh = tmp_path / "fresh"  # the returned diff applies to the original tree with plain git apply
    shutil.copytree(CORPUS / "base", fresh)
    apply_diff(applied, fresh, check_only=True)


def test_wrong_header_numbers_are_recomputed():
    out = repair_diff(
        "--- a/m.py\n+++ b/m.py\n@@ -50,9 +50,1 @@\n def f(x):\n-    y = x + 1\n+    y = x + 2\n", BASE
    )
    assert "@@ -1,5 +1,5 @@" in out and "+    y = x + 2" in out


def test_missing_space_on_blank_context_and_chatter():
    text = "Here you go:\n--- m.py\n+++ m.py\n@@ -1,4 +1,4 @@\n def f(x):\n     y = x + 1\n\n-    return y * 2\n+    return y * 3\nHope this helps!\n"
    out = repair_diff(text, BASE)
    assert "-    return y * 2\n+    return y * 3\n" in out and "Hope" not in out


def test_indentation_of_added_lines_follows_the_file():
    tabbed = {"t.py": "def g():\n\tif True:\n\t\treturn 1\n"}
    out = repair_diff(
        "--- a/t.py\n+++ b/t.py\n@@ -2,2 +2,2 @@\n     if True:\n-        return 1\n+        return 2\n",
        tabbed,
    )
    assert "+\t\treturn 2\n" in out


def test_new_and_deleted_files():
    new = repair_diff("--- /dev/null\n+++ b/extra.py\n@@ -0,0 +1,2 @@\n+A = 1\n+B = 2\n", BASE)
    assert "new file mode" in new and "+++ b/extra.py" in new
    gone = repair_diff("--- a/m.py\n+++ /dev/null\n@@ -1,7 +0,0 @@\n-def f(x):\n", BASE)
    assert "deleted file mode" in gone


def test_refusals_have_clear_messages():
    with pytest.raises(PatchError, match="no unified diff"):
        extract_diff_text("just prose, no diff")
    with pytest.raises(PatchError, match="hunk 1 does not match"):
        repair_diff("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-def nothing_like_this():\n+pass\n", BASE)
    with pytest.raises(PatchError, match="no such file"):
        repair_diff("--- a/zz.py\n+++ b/zz.py\n@@ -1 +1 @@\n-a\n+b\n", BASE)
    with pytest.raises(PatchError, match="changes nothing"):
        repair_diff("--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-VALUE = 3\n+VALUE = 3\n", BASE)
    with pytest.raises(PatchError, match="escapes the codebase"):
        repair_diff("--- /dev/null\n+++ b/../outside.py\n@@ -0,0 +1 @@\n+x = 1\n", BASE)
    with pytest.raises(PatchError, match="no hunk lines: it looks cut off"):
        repair_diff("--- a/m.py\n+++ b/m.py\n", BASE)
    with pytest.raises(PatchError, match="no hunks that change anything"):
        repair_diff("```diff\n--- a/m.py\n+++ b/m.py\n```\nDone.", BASE)


def test_resolve_path_variants():
    names = ["train.py", "pkg/model.py"]
    assert resolve_path("a/train.py", names) == "train.py"
    assert resolve_path("baseline/pkg/model.py", names) == "pkg/model.py"
    assert resolve_path("model.py", names) == "pkg/model.py"
    assert resolve_path("b/new.py", names) == "new.py"


def test_parse_search_replace_variants():
    text = (
        "First change:\n**train.py**\n```python\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.2\n>>>>>>> REPLACE\n```\n"
        "Same file again:\n```\n<<<<<<< SEARCH\nSTEPS = 20\n=======\nSTEPS = 40\n>>>>>>> REPLACE\n```\n"
        "`pkg/model.py`\n<<<<<<< SEARCH\n=======\nNEW = 1\n>>>>>>> REPLACE\n"
    )
    edits = parse_search_replace(text)
    assert [(e.file, e.search, e.replace) for e in edits] == [
        ("train.py", "LR = 0.1\n", "LR = 0.2\n"),
        ("train.py", "STEPS = 20\n", "STEPS = 40\n"),
        ("pkg/model.py", "", "NEW = 1\n"),
    ]
    with pytest.raises(PatchError, match="no file path"):
        parse_search_replace("<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n")
    with pytest.raises(PatchError, match="not closed"):
        parse_search_replace("x.py\n<<<<<<< SEARCH\na\n=======\nb\n")


def test_fuzzy_search_replace():
    read = BASE.get
    # whitespace drift in the SEARCH text (trailing spaces, wrong indentation) still finds the unique place
    out = apply_search_replace_fuzzy(
        parse_search_replace("m.py\n<<<<<<< SEARCH\ny = x + 1   \n=======\ny = x - 1\n>>>>>>> REPLACE\n"),
        read,
    )
    assert out["m.py"].splitlines()[1] == "    y = x - 1"
    with pytest.raises(PatchError, match="occurs 2 times"):
        apply_search_replace_fuzzy([SearchReplace(file="m.py", search="y", replace="z")], read)
    with pytest.raises(PatchError, match="not found in m.py"):
        apply_search_replace_fuzzy(
            parse_search_replace("m.py\n<<<<<<< SEARCH\nnope()\n=======\nb\n>>>>>>> REPLACE\n"), read
        )
    with pytest.raises(PatchError, match="does not exist"):
        apply_search_replace_fuzzy(
            parse_search_replace("q.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"), read
        )
    created = apply_search_replace_fuzzy(
        parse_search_replace("q.py\n<<<<<<< SEARCH\n=======\nA = 1\n>>>>>>> REPLACE\n"), read
    )
    assert created == {"q.py": "A = 1\n"}
