"""The layout is enforced: one installed namespace, and no import that points up a layer.

Layers, bottom to top (pyproject.toml maps the design's top-level folders into ``ideaforge``):
  bottom     ideaforge.{models,names,config,rewards,ranking} and ``ideaforge`` itself
  libraries  ideaforge.{patch,run,store,track,llm,report,rl,research_envs}: the bottom and each other, no cycles
  activities ideaforge.activities
  workflows  ideaforge.workflows: ONLY the stdlib, temporalio, pydantic and the bottom (they must replay)
  workers    ideaforge.workers
  cli        ideaforge.cli and ``python -m ideaforge``
Every module is read with ``ast`` (imports inside functions count too); nothing is imported.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
PACKAGES: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]

BOTTOM = {"ideaforge", "ideaforge.models", "ideaforge.names", "ideaforge.config", "ideaforge.rewards",
          "ideaforge.ranking"}  # fmt: skip
LIBRARIES = ("patch", "run", "store", "track", "llm", "report", "rl", "research_envs")
RANK = {"bottom": 0, "library": 1, "activities": 2, "workflows": 3, "workers": 4, "cli": 5}
WORKFLOW_THIRD_PARTY = {"temporalio", "pydantic"}
FOLDER_NAMES = ("workflows", "activities", "workers", "research_envs")


def layer_of(module: str) -> tuple[str, str]:
    """(layer, unit) of an ``ideaforge`` module; the unit is the library package for libraries."""
    if module in BOTTOM:
        return "bottom", module
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in LIBRARIES:
        return "library", f"ideaforge.{top}"
    if top in ("activities", "workflows", "workers"):
        return top, f"ideaforge.{top}"
    if top in ("cli", "__main__"):
        return "cli", "ideaforge.cli"
    raise AssertionError(f"{module} belongs to no layer: place it in tests/test_layers.py")


def source_modules() -> dict[str, Path]:
    """Module name -> file, for every .py file the package-dir mapping installs (not the envs' baselines)."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIR.items():
        root = REPO / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if "baseline" in rel.parts or "__pycache__" in rel.parts:
                continue
            sub = [p for p in rel.with_suffix("").parts if p != "__init__"]
            out[".".join([package, *sub])] = path
    return out


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Absolute names imported by a module (relative imports resolved; ``from pkg import mod`` -> pkg.mod)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append(Import(module, sub if sub in known else base, node.lineno))
    return found


MODULES = source_modules()
IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path, set(MODULES))]


def upward_imports(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        if imp.target.split(".")[0] != "ideaforge":
            continue
        src_layer, dst_layer = layer_of(imp.source)[0], layer_of(imp.target)[0]
        if RANK[dst_layer] > RANK[src_layer]:
            bad.append(f"{imp.source}:{imp.line} ({src_layer}) imports {imp.target} ({dst_layer})")
    return bad


def test_every_module_is_found_and_placed_in_a_layer() -> None:
    assert {"ideaforge.names", "ideaforge.workflows.campaign", "ideaforge.activities.experiment",
            "ideaforge.workers.main", "ideaforge.cli.commands", "ideaforge.research_envs.registry",
            "ideaforge.run.runner"} <= set(MODULES)  # fmt: skip
    assert not any(".baseline" in m for m in MODULES)
    for m in MODULES:
        layer_of(m)


def test_no_import_points_upward() -> None:
    assert upward_imports(IMPORTS) == []


def test_the_check_sees_an_upward_import() -> None:
    """The rule itself fails on a library that imports a workflow, even from inside a function."""
    fake = [Import("ideaforge.run.runner", "ideaforge.workflows.campaign", 1)]
    assert upward_imports(fake) == ["ideaforge.run.runner:1 (library) imports ideaforge.workflows.campaign (workflows)"]


def test_workflows_import_only_stdlib_temporalio_pydantic_and_the_bottom() -> None:
    bad = []
    for imp in IMPORTS:
        if layer_of(imp.source)[0] != "workflows":
            continue
        top = imp.target.split(".")[0]
        if top == "ideaforge":
            if layer_of(imp.target)[0] not in ("bottom", "workflows"):
                bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
        elif top not in sys.stdlib_module_names and top not in WORKFLOW_THIRD_PARTY and top != "__future__":
            bad.append(f"{imp.source}:{imp.line} imports {imp.target}")
    assert bad == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_libraries_do_not_import_each_other_in_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.target.split(".")[0] != "ideaforge":
            continue
        (src, src_unit), (dst, dst_unit) = layer_of(imp.source), layer_of(imp.target)
        if src == dst == "library" and src_unit != dst_unit:
            graph.setdefault(src_unit, set()).add(dst_unit)
    assert _cycle(graph) is None, f"import cycle between libraries: {' -> '.join(_cycle(graph) or [])}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check sees one


def test_one_installed_namespace_and_every_package_listed() -> None:
    """pyproject installs only ``ideaforge.*``, and lists every folder with an __init__.py (else a wheel lacks it)."""
    assert all(p == "ideaforge" or p.startswith("ideaforge.") for p in [*PACKAGES, *PACKAGE_DIR])
    packages_on_disk = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages_on_disk == set(PACKAGES)


def test_installed_distribution_leaves_only_ideaforge_importable(tmp_path: Path) -> None:
    """From a foreign directory, the installed (editable) distribution gives ``ideaforge.*`` and nothing else."""
    probe = (
        "import importlib.util as u\n"
        f"for n in {['ideaforge', *(f'ideaforge.{f}' for f in FOLDER_NAMES), *FOLDER_NAMES]!r}:\n"
        "    print(n, u.find_spec(n) is not None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    found = dict(line.split() for line in out.splitlines())
    assert found["ideaforge"] == "True", "ideaforge is not installed: run `pip install -e .` (ops/install.sh)"
    for folder in FOLDER_NAMES:
        assert found[f"ideaforge.{folder}"] == "True", folder
        assert found[folder] == "False", f"`import {folder}` works outside the repo: it leaked to the top level"


@pytest.mark.parametrize("folder", FOLDER_NAMES)
def test_mapped_folders_are_not_installed_twice(folder: str) -> None:
    assert not (REPO / "ideaforge" / folder).exists(), f"ideaforge/{folder} would shadow the mapped {folder}/"


@pytest.mark.slow
def test_wheel_holds_only_ideaforge_with_env_data_and_builds_without_warnings(tmp_path: Path) -> None:
    """A real (non-editable) wheel: one top-level package, every env's files and the prompts inside, and no
    setuptools warning banner while it builds."""
    import zipfile

    src, dist = tmp_path / "src", tmp_path / "dist"  # a copy: setuptools writes build/ into the source tree
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for folder in set(PACKAGE_DIR.values()):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    log = build.stdout + build.stderr
    assert "absent from the `packages` configuration" not in log
    assert "SetuptoolsDeprecationWarning" not in log
    (wheel,) = dist.glob("ideaforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"ideaforge", wheel.name.split("-py3")[0] + ".dist-info"}
    expected = {m.replace(".", "/") + ("/__init__.py" if p.name == "__init__.py" else ".py") for m, p in MODULES.items()}
    assert expected <= set(names)
    for env_dir in (REPO / "research_envs").iterdir():
        if not (env_dir / "env.toml").is_file():
            continue
        on_disk = {
            p.relative_to(REPO / "research_envs").as_posix()
            for p in env_dir.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert {f"ideaforge/research_envs/{rel}" for rel in on_disk} <= set(names), env_dir.name
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    prompts = {p.name for p in (REPO / "ideaforge" / "llm" / "prompts").glob("*.md")}
    assert {f"ideaforge/llm/prompts/{p}" for p in prompts} <= set(names)
