"""Every pipeline module a stage imports, directly or not, is a dep of that stage in dvc.yaml.

A missing dep lets a change to that module leave a stale output in DVC's cache and run-cache, and segbisect
would then bisect over results the code no longer produces.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """The `pipeline.*` modules one file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(f"{PACKAGE}.")}
        elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            found |= {f"{PACKAGE}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{PACKAGE}."):
            found.add(node.module)
    return found


def closure(module: str) -> set[str]:
    """`module` and everything it imports from the package, transitively, as repository-relative files."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        path = ROOT / (current.replace(".", "/") + ".py")
        if current in seen or not path.is_file():
            continue
        seen.add(current)
        todo.extend(imported_modules(path))
    return {name.replace(".", "/") + ".py" for name in seen}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_module_it_imports(stage: str) -> None:
    cmd = STAGES[stage]["cmd"]
    assert cmd.startswith(f"python -m {PACKAGE}."), cmd
    needed = closure(cmd.split()[-1])
    missing = needed - set(STAGES[stage]["deps"])
    assert not missing, f"dvc.yaml stage '{stage}' lacks deps {sorted(missing)}"


def test_closure_follows_imports_inside_functions() -> None:
    """train imports the model inside a function (to keep TensorFlow out of start-up); it still counts."""
    assert {"pipeline/model.py", "pipeline/numerics.py", "pipeline/errors.py"} <= closure("pipeline.train")
