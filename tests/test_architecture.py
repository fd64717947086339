"""docs/architecture.md draws segbisect's rooms (its subpackages, and `cli` for the top-level modules) and which
imports which; these tests derive that graph from the code, so the diagram cannot drift from it, and keep the rooms
free of cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.scratch import ROOT

PACKAGE = ROOT / "bisect" / "segbisect"
DOC = ROOT / "docs" / "architecture.md"
MARK = "<!-- segbisect-imports -->"  # the fenced block after it is the diagram
TOP = "cli"  # the room of the top-level modules: the console script (__init__.py) and the Typer command line

Graph = dict[str, set[str]]


def room(dotted: str) -> str:
    """`segbisect.core.search` -> `core`; a top-level module (`segbisect`, `segbisect.cli`) -> `cli`."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1] / "__init__.py").is_file() else TOP


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The segbisect modules `path` imports anywhere: at the top, in functions and under TYPE_CHECKING."""
    name = module_name(path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(".".join(part for part in (base, node.module or "") if part))
    return {target for target in found if target.partition(".")[0] == "segbisect"}


def code_graph() -> Graph:
    """Which room imports which, every room present (one that imports none maps to nothing)."""
    rooms = [TOP, *(init.parent.name for init in PACKAGE.glob("*/__init__.py"))]
    graph: Graph = {name: set() for name in rooms}
    for path in PACKAGE.rglob("*.py"):
        source = room(module_name(path))
        graph[source].update(room(target) for target in imported(path) if room(target) != source)
    return graph


def doc_graph(text: str) -> Graph:
    """The arrows of the fenced block after MARK: one line per room, `room -> room, room  # what it holds`."""
    _, found, after = text.partition(MARK)
    assert found, f"{DOC}: no {MARK} before the import diagram"
    block = after.split("```")[1].split("\n", 1)[1]
    graph: Graph = {}
    for line in block.splitlines():
        arrow = line.partition("#")[0].strip()
        if not arrow:
            continue
        source, sep, targets = arrow.partition("->")
        assert sep, f"{DOC}: not an arrow in the import diagram: {line!r}"
        assert source.strip() not in graph, f"{DOC}: {source.strip()} has two lines in the import diagram"
        graph[source.strip()] = {target.strip() for target in targets.split(",") if target.strip()}
    return graph


def cycle(graph: Graph) -> list[str]:
    """One import cycle among the rooms, as the path that closes it, or [] when there is none."""
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for target in sorted(graph.get(node, ())):
            if found := walk(target, [*path, node]):
                return found
        done.add(node)
        return []

    return next((found for node in sorted(graph) if (found := walk(node, []))), [])


def differences(doc: Graph, code: Graph) -> list[str]:
    """Each arrow or room the diagram has and the code has not, or the other way round."""
    lines = [
        f"room {name}: {'only in the diagram' if name in doc else 'missing from the diagram'}"
        for name in doc.keys() ^ code.keys()
    ]
    for name in sorted(doc.keys() & code.keys()):
        lines += [f"{name} -> {target}: in the diagram, not in the code" for target in sorted(doc[name] - code[name])]
        lines += [f"{name} -> {target}: in the code, not in the diagram" for target in sorted(code[name] - doc[name])]
    return lines


def test_the_diagram_in_architecture_md_is_segbisects_import_graph() -> None:
    found = differences(doc_graph(DOC.read_text(encoding="utf-8")), code_graph())
    assert not found, f"{DOC}: the import diagram disagrees with the code:\n" + "\n".join(found)


def test_segbisects_rooms_import_each_other_without_a_cycle() -> None:
    graph = code_graph()
    assert {"core", "project", "executors", "reporting", "tracking", "session", TOP} <= graph.keys()
    assert not cycle(graph), f"segbisect's rooms import in a cycle: {' -> '.join(cycle(graph))}"


def test_the_checks_see_an_arrow_the_code_lacks_and_a_cycle() -> None:
    """The two checks above can fail: a diagram with an arrow the code lacks, rooms that import each other."""
    drawn = doc_graph(f"{MARK}\n```text\ncore -> session  # back\nsession -> core\n```\n")
    assert differences(drawn, {"core": set(), "session": {"core"}}) == [
        "core -> session: in the diagram, not in the code"
    ]
    assert cycle(drawn) == ["core", "session", "core"]
