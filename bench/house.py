"""segbisect's house in numbers: how many modules, how deep their imports stack, how long the longest parameter
list is, how many untyped `dict[str, Any]` records remain, and how many modules one bisection crosses from the
CLI to its verdict.

The first four are read from the source with `ast`. The last is measured: a bisection of the toy DVC project
(bisect/tests/segbisect_toy.py, BAD = `train.lr: 2.0`) runs in a child interpreter whose `sys.path` puts the
measured tree first, and a profile hook records, on the main thread, the segbisect modules whose functions run
between the Typer app's start and its exit.

    .venv/bin/python bench/house.py [SOURCE]             # print the numbers of one tree (default bisect/segbisect)
    .venv/bin/python bench/house.py --before 64785eb     # that commit's tree vs bisect/segbisect -> results/house.md
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "bisect" / "segbisect"
TOY = ROOT / "bisect" / "tests"  # segbisect_toy.py: the toy project the tests bisect
RESULTS = ROOT / "bench" / "results" / "house.md"
MAX_PARAMS = 6
SELF = ("self", "cls")


@dataclass(frozen=True)
class Trace:
    """One bisection's path from the CLI to the verdict: the segbisect modules whose functions ran."""

    exit_code: int
    culprit: list[str]
    main_thread: list[str]
    all_threads: list[str]


@dataclass(frozen=True)
class House:
    """The numbers of one source tree."""

    modules: int
    docstring_only: int
    floors: int
    chain: list[str]
    cycles: list[list[str]]
    longest_params: int
    longest: list[str]
    over_limit: list[str]
    dict_any: int
    trace: Trace


@dataclass(frozen=True)
class Module:
    """A parsed module, and whether it is a package's `__init__.py`."""

    tree: ast.Module
    package: bool  # its relative imports start from itself, not from its parent


def modules(source: Path) -> dict[str, Module]:
    """Every module of the package at `source`, by dotted name (a package by its own name)."""
    found = {}
    for file in sorted(source.rglob("*.py")):
        parts = file.relative_to(source.parent).with_suffix("").parts
        package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if package else parts)
        found[name] = Module(ast.parse(file.read_text(encoding="utf-8"), str(file)), package)
    return found


def _known(dotted: str, names: set[str]) -> str | None:
    """The longest prefix of `dotted` that is one of the package's modules (`a.b.Record` -> `a.b`)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in names:
            return ".".join(parts[:end])
    return None


def imports(name: str, module: Module, names: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    here = name if module.package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            dotted = ".".join(part for part in (base, node.module or "") if part)
            targets = [f"{dotted}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in (_known(t, names) for t in targets) if target and target != name)
    return found


def graph(source: Path) -> tuple[dict[str, ast.Module], dict[str, set[str]]]:
    """Each module's tree, and the package's modules it imports."""
    found = modules(source)
    edges = {name: imports(name, module, set(found)) for name, module in found.items()}
    return {name: module.tree for name, module in found.items()}, edges


def components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each a sorted list; a cycle is a component of two or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(edges[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest import chain, a module per floor (a cycle, if any, counts as one floor)."""
    owner = {member: tuple(c) for c in components(edges) for member in c}
    best: dict[tuple[str, ...], list[str]] = {}

    def chain(component: tuple[str, ...]) -> list[str]:
        if component not in best:
            below = {owner[s] for m in component for s in edges[m]} - {component}
            tallest = max((chain(c) for c in sorted(below)), key=len, default=[])
            best[component] = ["/".join(component), *tallest]
        return best[component]

    return max((chain(c) for c in sorted(set(owner.values()))), key=len, default=[])


def functions(name: str, tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """Each function's qualified name and its number of parameters, self/cls aside."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
            count = len(named) - (1 if named and named[0].arg in SELF else 0)
            yield f"{name}.{prefix}{node.name}", count
            yield from functions(name, node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(name, node, f"{prefix}{node.name}.")
        else:
            yield from functions(name, node, prefix)


def dict_any(tree: ast.AST) -> int:
    """`dict[str, Any]` written in the code (annotations included, docstrings and comments not)."""
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and ast.unparse(node).replace("typing.", "") == "dict[str, Any]"
    )


def measure(source: Path) -> House:
    trees, edges = graph(source)
    arity = dict(pair for name, tree in trees.items() for pair in functions(name, tree))
    top = max(arity.values())
    return House(
        modules=len(trees),
        docstring_only=sum(1 for tree in trees.values() if len(tree.body) == 1 and ast.get_docstring(tree)),
        floors=len(longest_chain(edges)),
        chain=longest_chain(edges),
        cycles=[c for c in components(edges) if len(c) > 1],
        longest_params=top,
        longest=sorted(name for name, count in arity.items() if count == top),
        over_limit=sorted(f"{name} ({count})" for name, count in arity.items() if count > MAX_PARAMS),
        dict_any=sum(dict_any(tree) for tree in trees.values()),
        trace=trace(source),
    )


def trace(source: Path) -> Trace:
    """Bisect the toy in a child interpreter that imports segbisect from `source` (see `traced`)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(source.parent), str(TOY)]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    child = [sys.executable, __file__, "--trace", str(source)]
    done = subprocess.run(child, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise SystemExit(f"error: {source}: the traced bisection failed:\n{done.stderr[-3000:]}")
    return Trace(**json.loads(done.stdout.splitlines()[-1]))


def traced(source: Path) -> Trace:
    """One bisection of the toy, with the segbisect modules whose functions ran recorded per thread."""
    import segbisect.cli
    from segbisect_toy import bad_commit, bisect, make_toy_repo

    if Path(segbisect.cli.__file__).resolve().parent.parent != source.resolve().parent:
        raise SystemExit(f"error: {source}: segbisect was imported from {segbisect.cli.__file__} instead")
    main: set[str] = set()
    every: set[str] = set()

    def hook(frame: FrameType, event: str, arg: object) -> None:
        """Functions only (`CO_NEWLOCALS`): a module or class body run by an import is not a call on the path."""
        module = frame.f_globals.get("__name__", "")
        if event == "call" and frame.f_code.co_flags & inspect.CO_NEWLOCALS and module.partition(".")[0] == "segbisect":
            every.add(module)
            if threading.current_thread() is threading.main_thread():
                main.add(module)

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_toy_repo(Path(tmp) / "toy")
        bad_commit(repo, params={"train": {"lr": 2.0}})
        threading.setprofile(hook)
        sys.setprofile(hook)
        try:
            code, report, _ = bisect(repo, "good", "bad")
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    culprit = sorted(unit["name"] for unit in (report.get("culprit") or {}).get("units", []))
    return Trace(code, culprit, sorted(main), sorted(every))


def source_at(rev: str, dest: Path) -> Path:
    """bisect/segbisect as commit `rev` has it, extracted under `dest` (git archive: the checkout is untouched)."""
    tar = subprocess.run(["git", "archive", rev, "bisect/segbisect"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest / "bisect" / "segbisect"


ROWS = (
    ("modules (.py files)", lambda h: h.modules),
    ("of them, a docstring alone (package markers)", lambda h: h.docstring_only),
    ("import floors (longest import chain)", lambda h: h.floors),
    ("import cycles between modules", lambda h: len(h.cycles)),
    ("longest parameter list (self/cls aside)", lambda h: h.longest_params),
    (f"functions over {MAX_PARAMS} parameters", lambda h: len(h.over_limit)),
    ("`dict[str, Any]` in the code", lambda h: h.dict_any),
    ("modules crossed, CLI to verdict (main thread)", lambda h: len(h.trace.main_thread)),
    ("modules crossed, CLI to verdict (all threads)", lambda h: len(h.trace.all_threads)),
)


def details(title: str, house: House) -> str:
    elsewhere = sorted(set(house.trace.all_threads) - set(house.trace.main_thread))
    lines = [
        f"### {title}",
        "",
        f"- longest import chain: {' -> '.join(house.chain)}",
        f"- import cycles: {house.cycles or 'none'}",
        f"- longest parameter list ({house.longest_params}): {', '.join(house.longest)}",
        f"- over {MAX_PARAMS} parameters: {', '.join(house.over_limit) or 'none'}",
        f"- bisection: exit {house.trace.exit_code}, culprit {', '.join(house.trace.culprit)}",
        f"- modules on the main thread's path: {', '.join(house.trace.main_thread)}",
        f"- on other threads only: {', '.join(elsewhere) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


def report(rev: str, before: House, after: House) -> str:
    one, five, fifteen = os.getloadavg()
    table = [f"| measure | before ({rev}) | after |", "| --- | --- | --- |"]
    table += [f"| {label} | {value(before)} | {value(after)} |" for label, value in ROWS]
    return "\n".join(
        [
            "# segbisect's house in numbers",
            "",
            f"Command: `.venv/bin/python bench/house.py --before {rev}` (before: commit {rev}'s bisect/segbisect; "
            "after: the working tree's).",
            f"Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}, Python "
            f"{platform.python_version()}; load {one:.2f}/{five:.2f}/{fifteen:.2f}.",
            f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            "",
            "Import floors count the modules of the longest chain of segbisect-internal imports (imports inside "
            "functions and under TYPE_CHECKING included). The path is measured on one bisection of the toy project "
            "(BAD = `train.lr: 2.0`, `--no-mlflow`), the Typer app invoked in-process as the tests do: the segbisect "
            "modules whose functions ran between the CLI's start and the verdict.",
            "",
            *table,
            "",
            details(f"Before ({rev})", before),
            details("After", after),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path, default=SOURCE, help="segbisect's package folder")
    parser.add_argument("--before", metavar="REV", help=f"compare REV's tree with SOURCE; write {RESULTS}")
    parser.add_argument("--trace", type=Path, help=argparse.SUPPRESS)  # the child's side of `trace`
    args = parser.parse_args()
    if args.trace:
        print(json.dumps(asdict(traced(args.trace))))
        return
    if not (args.source / "__init__.py").is_file():
        raise SystemExit(f"error: {args.source}: not a Python package folder")
    if not args.before:
        print(json.dumps(asdict(measure(args.source)), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        before = measure(source_at(args.before, Path(tmp)))
    after = measure(args.source)  # last: the working tree may be changing
    RESULTS.write_text(report(args.before, before, after), encoding="utf-8")
    print(RESULTS.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
