"""Bad input gets a clear error and loses nothing: campaign configs, env names, env specs, diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ideaforge.cli.campaigns import CampaignError, load_config
from ideaforge.patch.apply import PatchError, check_applies, inspect_diff
from ideaforge.research_envs.registry import EnvError, load_env, load_env_folder

FIXTURES = [Path(__file__).parent / "fixtures" / "envs"]


def test_config_file_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="config file not found"):
        load_config(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(CampaignError, match="not valid TOML"):
        load_config(bad, {})
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "x"\nenv = "toy_quad"\nepochz = 3\n')
    with pytest.raises(CampaignError, match="epochz: Extra inputs are not permitted"):
        load_config(typo, {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Bad Name!", "env": "toy_quad"}, "name: Value error, campaign name"),
        (
            {"name": "ok", "env": "toy_quad", "epochs": 0},
            "epochs: Input should be greater than or equal to 1",
        ),
        ({"name": "ok", "env": "toy_quad", "ideator.kind": "gpt5"}, "ideator.kind: Input should be"),
        ({"name": "ok"}, "env: Field required"),
    ],
)
def test_flag_errors_are_reported_per_field(overrides: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('name = "x"\nenv = "toy_quad"\nepochs = 5\n[ideator]\nkind = "offline"\n')
    cfg = load_config(f, {"epochs": 2, "ideator.model": "m"})
    assert cfg.epochs == 2 and cfg.ideator.model == "m" and cfg.name == "x"


def test_unknown_env_lists_the_available_ones() -> None:
    with pytest.raises(EnvError, match=r"unknown research env 'nope'; available: .*toy_quad"):
        load_env("nope", FIXTURES)


def _env(tmp_path: Path, toml: str, files: dict[str, str]) -> Path:
    folder = tmp_path / "myenv"
    (folder / "baseline").mkdir(parents=True)
    (folder / "env.toml").write_text(toml)
    for name, text in files.items():
        (folder / "baseline" / name).write_text(text)
    return folder


SPEC = """name = "myenv"
description = "d"
editable_files = ["train.py"]
protected_files = ["evaluate.py"]
run_command = ["{python}", "train.py"]
eval_command = ["{python}", "evaluate.py"]
metric = "loss"
direction = "min"
plausible_range = [0.0, 10.0]
"""


@pytest.mark.parametrize(
    ("toml", "files", "message"),
    [
        (SPEC, {"train.py": ""}, r"missing from baseline/: \['evaluate.py'\]"),
        (
            SPEC.replace('"evaluate.py"]', '"evaluate.py", "train.py"]'),
            {"train.py": "", "evaluate.py": ""},
            "both editable and protected",
        ),
        (SPEC.replace("[0.0, 10.0]", "[10.0, 0.0]"), {"train.py": "", "evaluate.py": ""}, "low < high"),
        (
            SPEC.replace('direction = "min"', 'direction = "down"'),
            {"train.py": "", "evaluate.py": ""},
            "direction",
        ),
        (
            SPEC.replace('name = "myenv"', 'name = "other"'),
            {"train.py": "", "evaluate.py": ""},
            "must equal the folder name",
        ),
        ("name = ", {}, "not valid TOML"),
    ],
)
def test_env_spec_errors(tmp_path: Path, toml: str, files: dict[str, str], message: str) -> None:
    with pytest.raises(EnvError, match=message):
        load_env_folder(_env(tmp_path, toml, files))


def test_bad_diffs_are_refused_with_a_category() -> None:
    env = load_env("toy_quad", FIXTURES)
    protected = env.spec.protected_files
    with pytest.raises(PatchError, match="not a unified diff"):
        inspect_diff("please make the model better")
    binary = "diff --git a/train.py b/train.py\nGIT binary patch\nliteral 3\nKcmZQz\n"
    with pytest.raises(PatchError, match="binary"):
        check_applies(binary, env.baseline, protected)
    delete_eval = (
        "diff --git a/evaluate.py b/evaluate.py\ndeleted file mode 100644\n--- a/evaluate.py\n+++ /dev/null\n"
    )
    with pytest.raises(PatchError) as e:
        check_applies(delete_eval, env.baseline, protected)
    assert e.value.category == "protected_file_touched"
    escape = "--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-x\n+y\n"
    with pytest.raises(PatchError, match="escapes"):
        check_applies(escape, env.baseline, protected)
    stale = "--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-this line is not in the file\n+x\n"
    with pytest.raises(PatchError, match="git apply failed") as e:
        check_applies(stale, env.baseline, protected)
    assert e.value.category == "patch_failed"
