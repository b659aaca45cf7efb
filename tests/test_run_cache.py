"""The cache of real runs behind the search benchmark (ops/run_cache.py), on the toy env (real runs in ~0.1 s),
and the shipped tiny_gpt cache: it holds every run the benchmark it was filled for asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ideaforge.research_envs.registry import load_env
from ops.run_cache import CacheMiss, RunCache

FIXTURES = [Path(__file__).parent / "fixtures" / "envs"]
LR = (("knob:lr", 0.2),)


@pytest.fixture
def toy():
    return load_env("toy_quad", FIXTURES)


def test_a_miss_is_trained_for_real_once_then_read_back(toy, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    cache = RunCache(toy, path, "default", fill=True, work=tmp_path / "work")
    base, tuned = cache.metric((), 0), cache.metric(LR, 0)
    assert base is not None and tuned is not None and tuned != base  # the recipe changed the training
    assert cache.metric(LR, 1) != tuned  # another seed, another run
    assert cache.ran == 3
    assert cache.metric(LR, 0) == tuned and cache.ran == 3  # a hit trains nothing
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["recipe"], r["seed"]) for r in rows] == [
        ([], 0),
        ([["knob:lr", 0.2]], 0),
        ([["knob:lr", 0.2]], 1),
    ]
    assert {r["steps"] for r in rows} == {20} and all(r["baseline"] and r["torch"] for r in rows)
    again = RunCache(toy, path, "default")  # read-only, from the file
    assert again.metric(LR, 0) == tuned and again.ran == 0


def test_a_read_only_miss_names_the_key(toy, tmp_path: Path) -> None:
    cache = RunCache(toy, tmp_path / "runs.jsonl", "default")
    with pytest.raises(CacheMiss, match=r"knob:lr.*0\.2.*seed 3"):
        cache.metric(LR, 3)
    assert not (tmp_path / "runs.jsonl").exists()


def test_a_failed_run_is_stored_as_a_failure(toy, tmp_path: Path) -> None:
    cache = RunCache(toy, tmp_path / "runs.jsonl", "default", fill=True, work=tmp_path / "work")
    assert cache.metric((("variant:crash", None),), 0) is None
    row = json.loads((tmp_path / "runs.jsonl").read_text())
    assert (
        row["val_loss"] is None
        and "training exit 1" in row["error"]
        and "toy crash requested" in row["error"]
    )


def test_the_first_row_of_a_key_wins_across_processes(toy, tmp_path: Path) -> None:
    """Two fillers that both missed a key: the later one uses the row the first one stored, so every reader
    sees one landscape."""
    path = tmp_path / "runs.jsonl"
    first = RunCache(toy, path, "default", fill=True, work=tmp_path / "a")
    late = RunCache(toy, path, "default", fill=True, work=tmp_path / "b")  # loaded before `first` wrote
    stored = first.metric(LR, 0)
    late._run = lambda recipe, seed: {**first.rows[next(iter(first.rows))], "val_loss": 123.0}  # type: ignore[method-assign]
    assert late.metric(LR, 0) == stored
    assert len(path.read_text().splitlines()) == 1


def test_rows_of_another_landscape_and_a_torn_line_are_ignored(toy, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    cache = RunCache(toy, path, "default", fill=True, work=tmp_path / "w")
    value = cache.metric((), 0)
    row = json.loads(path.read_text())
    with path.open("a") as f:
        f.write(json.dumps({**row, "steps": 5, "val_loss": 0.5, "seed": 7}) + "\n")  # the smoke profile's run
        f.write(
            json.dumps({**row, "baseline": "0" * 64, "val_loss": 0.5, "seed": 8}) + "\n"
        )  # another baseline
        f.write('{"recipe": [], "seed": 9, "st')  # a filler killed mid-write
    again = RunCache(toy, path, "default", fill=True, work=tmp_path / "w2")
    assert again.metric((), 0) == value
    for seed in (7, 8, 9):
        with pytest.raises(CacheMiss):
            RunCache(toy, path, "default").metric((), seed)
    assert again.metric((), 9) is not None  # appended after the torn line, not glued to it
    assert RunCache(toy, path, "default").metric((), 9) == again.metric((), 9)


def test_an_unknown_profile_is_refused(toy, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no profile 'bench'"):
        RunCache(toy, tmp_path / "runs.jsonl", "bench")
