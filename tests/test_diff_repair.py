"""diff_repair: the imperfect-diff corpus, single defects, SEARCH/REPLACE parsing, and what it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ideaforge.models import SearchReplace
from ideaforge.patch.answer import apply_answer, read_answer
from ideaforge.patch.apply import PatchError, apply_diff
from ideaforge.patch.repair import (
    apply_search_replace_fuzzy,
    apply_with_repair,
    extract_diff_text,
    parse_search_replace,
    repair_diff,
    repaired_files,
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


# --------------------------------------------------------------------------- the answer corpus (whole replies)

ANSWERS = Path(__file__).resolve().parent / "answer_corpus"
ANSWER_CASES = sorted(p for p in (ANSWERS / "cases").iterdir() if (p / "case.json").is_file())


def test_answer_corpus_covers_every_category():
    cats = {json.loads((c / "case.json").read_text())["category"] for c in ANSWER_CASES}
    assert {"truncated", "truncated_midline", "ambiguous", "elision", "whole_file", "self_correction",
            "alternatives", "joined_lines", "search_replace", "crlf", "unrecoverable"} <= cats


@pytest.mark.parametrize("case", ANSWER_CASES, ids=[c.name for c in ANSWER_CASES])
def test_answer_corpus_case(case, tmp_path):
    meta = json.loads((case / "case.json").read_text())
    tree = tmp_path / "tree"
    shutil.copytree(ANSWERS / "base" / meta["env"], tree)
    before = {p.name: p.read_bytes() for p in tree.iterdir()}
    text = (case / "answer.md").read_bytes().decode()
    protected = ["evaluate.py"]
    if meta["expect"] == "refuse":
        with pytest.raises(PatchError):
            apply_answer(text, tree, protected)
        assert {p.name: p.read_bytes() for p in tree.iterdir()} == before  # nothing written
        return
    apply_answer(text, tree, protected)
    for f in (case / "expected").iterdir():
        assert (tree / f.name).read_bytes() == f.read_bytes(), f.name


# --------------------------------------------------------------------------- never wrong: single mechanisms

TWIN = {
    "t.py": "class A:\n    def f(self):\n        x = 1\n        return x\n\n\n"
    "class B:\n    def f(self):\n        x = 1\n        return x\n"
}


def test_ambiguous_hunk_is_refused_with_both_places():
    diff = "--- a/t.py\n+++ b/t.py\n@@ -4,2 +4,2 @@\n-        x = 1\n+        x = 2\n         return x\n"
    with pytest.raises(PatchError, match=r"fits 2 places equally well \(lines 3, 9\)") as e:
        repair_diff(diff, TWIN)
    assert "class" not in str(e.value) or "x = 1" in str(e.value)  # the regions are quoted


def test_ambiguous_hunk_applies_where_its_line_number_points_exactly():
    diff = "--- a/t.py\n+++ b/t.py\n@@ -9,2 +9,2 @@\n-        x = 1\n+        x = 2\n         return x\n"
    out = repaired_files(diff, TWIN)["t.py"]
    assert out.splitlines()[2] == "        x = 1" and out.splitlines()[8] == "        x = 2"


def test_disambiguating_context_picks_the_right_copy():
    diff = "--- a/t.py\n+++ b/t.py\n@@ -1,1 +1,1 @@\n class B:\n     def f(self):\n-        x = 1\n+        x = 2\n"
    assert repaired_files(diff, TWIN)["t.py"].splitlines()[8] == "        x = 2"


def test_insertion_without_context_is_refused_unless_at_the_top():
    with pytest.raises(PatchError, match="only adds lines"):
        repair_diff("--- a/m.py\n+++ b/m.py\n@@ -3,0 +4,1 @@\n+import math\n", BASE)
    top = repaired_files("--- a/m.py\n+++ b/m.py\n@@ -0,0 +1,1 @@\n+import math\n", BASE)["m.py"]
    assert top.startswith("import math\ndef f(x):")


@pytest.mark.parametrize(
    "reply, message",
    [
        ("--- a/m.py\n+++ b/m.py\n@@ -1,4 +1,4 @@\n def f(x):\n-    y = x + 1\n+    y = x + 2\n", "announces 4 old / 4 new"),
        ("```diff\n--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    y = x + 1\n+    y = x + 2\n", "unclosed"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    y = x + 1\n+    y = max(x,", "bracket open"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n def f(x):\n", "before any changed line"),
    ],
    ids=["short_last_hunk", "unclosed_fence", "cut_mid_line", "stops_in_context"],
)
def test_cut_off_replies_are_refused(reply, message):
    with pytest.raises(PatchError, match=message):
        repair_diff(reply, BASE)


def test_a_wrong_count_is_not_a_cut_when_the_reply_goes_on():
    reply = "```diff\n--- a/m.py\n+++ b/m.py\n@@ -1,9 +1,9 @@\n def f(x):\n-    y = x + 1\n+    y = x + 2\n```\nDone."
    assert "+    y = x + 2" in repair_diff(reply, BASE)


def test_the_api_cut_off_flag_refuses_an_unfinished_reply(tmp_path):
    (tmp_path / "m.py").write_text(BASE["m.py"])
    reply = "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    y = x + 1\n+    y = x + 2\n"
    with pytest.raises(PatchError, match="output-token limit"):
        apply_answer(reply, tmp_path, cut_off=True)
    apply_answer(reply, tmp_path)
    assert "x + 2" in (tmp_path / "m.py").read_text()


def test_changed_python_must_compile_and_nothing_is_written(tmp_path):
    (tmp_path / "m.py").write_text(BASE["m.py"])
    reply = "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    y = x + 1\n+    y = (x + 1\n     \n"
    with pytest.raises(PatchError, match=r"does not compile: .*line 2") as e:
        apply_answer("```diff\n" + reply + "```\n", tmp_path)
    assert "    2 |     y = (x + 1" in str(e.value)  # the region after the change is quoted
    assert (tmp_path / "m.py").read_text() == BASE["m.py"]


# --------------------------------------------------------------------------- recover more: single mechanisms


def test_elision_context_line_stands_for_unchanged_lines():
    reply = "--- a/t.py\n+++ b/t.py\n@@ -7,4 +7,4 @@\n class B:\n     # ... existing code ...\n-        return x\n+        return x + 1\n"
    out = repaired_files(reply, TWIN)["t.py"].splitlines()
    assert out[3] == "        return x" and out[9] == "        return x + 1"


def test_elision_in_added_lines_is_refused():
    reply = "--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n def f(x):\n-    y = x + 1\n+    # ... rest unchanged ...\n"
    with pytest.raises(PatchError, match="an added line is an elision comment"):
        repair_diff(reply, BASE)


def test_joined_call_matches_only_where_unique():
    base = {"c.py": "opt = make(\n    a=1,\n    b=2,\n)\nother = 3\n"}
    reply = "--- a/c.py\n+++ b/c.py\n@@ -1,1 +1,1 @@\n-opt = make(a=1, b=2)\n+opt = make(a=1, b=3)\n"
    assert repaired_files(reply, base)["c.py"] == "opt = make(a=1, b=3)\nother = 3\n"
    twice = {"c.py": base["c.py"] + "opt = make(\n    a=1,\n    b=2,\n)\n"}
    with pytest.raises(PatchError, match="fits 2 places"):
        repaired_files(reply.replace("@@ -1,1 +1,1 @@", "@@ -3,1 +3,1 @@"), twice)


def test_whole_file_block_is_diffed_against_the_file_it_names():
    files = {"train.py": "LR = 0.1\nSTEPS = 20\n\n\ndef main():\n    pass\n", "other.py": "X = 1\n"}
    reply = "Updated `train.py`:\n```python\nLR = 0.05\nSTEPS = 20\n\n\ndef main():\n    pass\n```\n"
    assert read_answer(reply, files).files == {"train.py": files["train.py"].replace("0.1", "0.05")}
    # a fragment of whole definitions replaces the one definition of that name (only train.py has main)
    fragment = "```python\ndef main():\n    print(1)\n```\n"
    assert read_answer(fragment, files).files == {"train.py": files["train.py"].replace("pass", "print(1)")}
    # a fragment that is not only definitions, or names what no file (or several) defines, stays refused
    for bad in ("```python\nLR = 0.2\nprint(LR)\n```\n", "```python\ndef helper():\n    return 1\n```\n"):
        with pytest.raises(PatchError, match="fragment|does not clearly match|no single editable file"):
            read_answer(bad, files)


def test_correction_replaces_and_supplement_adds():
    d1 = "```diff\n--- a/m.py\n+++ b/m.py\n@@ -7 +7 @@\n-VALUE = 3\n+VALUE = 4\n```\n"
    d2 = "```diff\n--- a/m.py\n+++ b/m.py\n@@ -7 +7 @@\n-VALUE = 3\n+VALUE = 5\n```\n"
    d3 = "```diff\n--- a/m.py\n+++ b/m.py\n@@ -2 +2 @@\n-    y = x + 1\n+    y = x - 1\n```\n"
    fixed = read_answer(d1 + "Wait, here is the corrected diff:\n" + d2, BASE).files["m.py"]
    assert "VALUE = 5" in fixed and "VALUE = 4" not in fixed
    both = read_answer(d1 + "I also forgot this part:\n" + d3, BASE).files["m.py"]
    assert "VALUE = 4" in both and "x - 1" in both
    twice = read_answer(d1 + "To recap, the whole change:\n" + d1, BASE).files["m.py"]
    assert "VALUE = 4" in twice
    main = read_answer(d1 + "Alternatively, a bigger step:\n" + d2, BASE).files["m.py"]
    assert "VALUE = 4" in main
    with pytest.raises(PatchError, match="unclear whether"):
        read_answer(d1 + "Hmm, on reflection:\n" + d3, BASE)
    d13 = "```diff\n--- a/m.py\n+++ b/m.py\n@@ -2 +2 @@\n-    y = x + 1\n+    y = x - 1\n@@ -7 +7 @@\n-VALUE = 3\n+VALUE = 4\n```\n"
    with pytest.raises(PatchError, match="leaves out part of the first change"):
        read_answer(d13 + "Sorry, here is the corrected diff:\n" + d2, BASE)


def test_search_replace_in_an_unclosed_fence_is_cut_off():
    reply = "m.py\n```\n<<<<<<< SEARCH\nVALUE = 3\n=======\nVALUE = 4\n>>>>>>> REPLACE\n\n<<<<<<< SEARCH\n    y = x"
    with pytest.raises(PatchError, match="cut off"):
        read_answer(reply, BASE)


# --------------------------------------------------------------------------- fragments of whole definitions

DEFS = (
    '"""Module."""\n\nimport os\n\n\n@decorate(1)\ndef top(x):\n    return x\n\n\n'
    "class A:\n    def f(self):\n        return 1\n\n    @staticmethod\n    def g():\n        return 2\n\n\n"
    "class B:\n    def f(self):\n        return 3\n"
)


def test_definitions_replace_their_one_place_reindented_with_decorators_and_imports():
    from ideaforge.patch.definitions import replace_definitions

    # a method given unindented goes back at its class's indentation, with its decorator
    new = replace_definitions(["@staticmethod", "def g():", "    return 20"], DEFS, "m.py")
    assert "\n".join(new) == DEFS.replace("        return 2\n", "        return 20\n").rstrip("\n")
    # a decorated function is replaced from its decorator on; a new import goes after the file's imports
    new = "\n".join(replace_definitions(["import math", "", "@decorate(2)", "def top(x):", "    return math.e"], DEFS, "m.py"))
    assert "import os\nimport math\n" in new and "@decorate(2)\ndef top(x):\n    return math.e\n" in new
    assert "@decorate(1)" not in new and new.count("def top") == 1
    # a class given with some of its methods: those are replaced, the others stay
    new = "\n".join(replace_definitions(["class A:", "    def f(self):", "        return 10"], DEFS, "m.py"))
    assert "return 10" in new and "return 2" in new and "return 3" in new


def test_definitions_that_are_not_unambiguous_are_refused():
    from ideaforge.patch.definitions import replace_definitions

    cases = {
        "defines 2 times": ["def f(self):", "    return 0"],  # A.f and B.f
        "does not have": ["def h():", "    return 0"],
        "other than whole definitions": ["X = 1", "def top(x):", "    return 0"],
        "changes the header": ["class A(Base):", "    def f(self):", "        return 0"],
        "elision": ["def top(x):", "    # ... rest unchanged ...", "    return 0"],
        "does not parse": ["def top(x:", "    return 0"],
    }
    for why, block in cases.items():
        with pytest.raises(PatchError, match=why):
            replace_definitions(block, DEFS, "m.py")


def test_search_replace_naming_no_file_goes_to_the_one_file_holding_its_text():
    files = {"a.py": "X = 1\nY = 2\n", "b.py": "Z = 3\nY = 2\n"}
    block = "```\n<<<<<<< SEARCH\n{}\n=======\n{}\n>>>>>>> REPLACE\n```\n"
    assert read_answer(block.format("X = 1", "X = 5"), files).files == {"a.py": "X = 5\nY = 2\n"}
    for search in ("Y = 2", "W = 9"):  # in both files; in none
        with pytest.raises(PatchError, match="names no file, and its text is in (a.py, b.py|no editable file)"):
            read_answer(block.format(search, "Q = 0"), files)
