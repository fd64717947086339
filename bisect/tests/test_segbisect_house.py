"""Rules of segbisect's house that a reader would otherwise take on trust, read from the installed package's source:
short parameter lists, and one gateway to DVC."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import segbisect

SOURCE = Path(segbisect.__file__).parent
MAX_PARAMS = 6
# The Typer command: one parameter per command-line option is how Typer declares them.
LONG_BY_DESIGN = {"segbisect.cli.main"}
# The one module that reaches DVC, and the drivers that run inside DVC's own process (a command under `dvc_run`,
# the fork server's patches).
DVC_GATEWAY = {"segbisect.project.gateway", "segbisect.project.dvc_run", "segbisect.project.dvc_patches"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, ast.parse(path.read_text(encoding="utf-8"), str(path))


def parameters(qualname: str, node: ast.AST) -> Iterator[tuple[str, int]]:
    """Each function under `node` and how many parameters it takes, a leading self/cls aside."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            args = child.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
            count = len(named) - (1 if named and named[0].arg in ("self", "cls") else 0)
            yield f"{qualname}.{child.name}", count
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from parameters(f"{qualname}.{child.name}", child)
        else:
            yield from parameters(qualname, child)


def imports_dvc(tree: ast.Module) -> bool:
    """An import of DVC or one of its own distributions (dvc_data, dvc_objects...) anywhere in the module, by
    statement or by a literal name given to importlib."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "importlib.import_module",
            "import_module",
            "__import__",
        ):
            names += [
                arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
    return any(name.partition(".")[0] == "dvc" or name.startswith("dvc_") for name in names)


def test_no_function_takes_more_than_six_parameters() -> None:
    counts = {name: count for module, tree in modules() for name, count in parameters(module, tree)}
    assert counts["segbisect.cli.main"] > MAX_PARAMS  # the walk reaches the command's options
    over = sorted(f"{name} ({count})" for name, count in counts.items() if count > MAX_PARAMS)
    assert over == sorted(f"{name} ({counts[name]})" for name in LONG_BY_DESIGN)


def test_only_the_gateway_and_the_drivers_inside_dvc_import_dvc() -> None:
    importers = {name for name, tree in modules() if imports_dvc(tree)}
    assert "segbisect.project.gateway" in importers
    assert importers <= DVC_GATEWAY, f"DVC imported outside its gateway: {sorted(importers - DVC_GATEWAY)}"
