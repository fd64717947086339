"""Rebuild every case's bad.patch from its change.yaml, against the pipeline files as they are now.

    python examples/zero-predictions/make_patches.py [--check] [--cases 02-label-ids-off-by-one ...]

A case's change.yaml maps a file (relative to the repository root) to a list of replacements, each an `old` and a
`new` block of whole lines, written without the indentation they share in the file. `old` must stand in the file
exactly once, at one indentation, and `new` takes its place at that indentation. The replacements of one file apply
in order, each to the text the previous ones left. bad.patch is then the unified diff of every file, which `git
apply` accepts (run_casebook.py applies it). So reformatting the pipeline only needs this script run again; a
replacement whose `old` text no longer stands exactly once stops it with one line naming the case and the file.
`--check` writes nothing and fails when a committed bad.patch differs from what the script would write.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
ROOT = HERE.parents[1]
CHANGE_FILE = "change.yaml"
PATCH_FILE = "bad.patch"


class ChangeError(Exception):
    """A change.yaml that does not fit the current files; str() is the one-line message."""


def case_folders(names: list[str] | None = None) -> list[Path]:
    """The case folders that describe a code change (all, or those named), in order."""
    folders = sorted(p for p in CASES_DIR.iterdir() if (p / CHANGE_FILE).is_file())
    if names:
        unknown = set(names) - {p.name for p in folders}
        if unknown:
            raise ChangeError(f"no {CHANGE_FILE} in case(s): {', '.join(sorted(unknown))}")
        folders = [p for p in folders if p.name in names]
    return folders


def load_change(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """file -> [(old, new), ...] from the case's change.yaml, checked for shape."""
    spec = yaml.safe_load((folder / CHANGE_FILE).read_text())
    if not isinstance(spec, dict) or not spec:
        raise ChangeError(f"{folder.name}: {CHANGE_FILE} must map files to lists of replacements")
    change: dict[str, list[tuple[str, str]]] = {}
    for file, replacements in spec.items():
        if not isinstance(replacements, list) or not replacements:
            raise ChangeError(f"{folder.name}: {file}: expected a list of replacements")
        for item in replacements:
            if not (
                isinstance(item, dict)
                and set(item) == {"old", "new"}
                and all(isinstance(v, str) for v in item.values())
            ):
                raise ChangeError(f"{folder.name}: {file}: every replacement needs text `old` and `new`, got {item!r}")
        change[str(file)] = [(item["old"], item["new"]) for item in replacements]
    return change


def replace_once(text: str, old: str, new: str) -> str:
    """`text` with the lines `old` (at whatever indentation they stand) replaced by `new` at that indentation."""
    lines = text.splitlines(keepends=True)
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if not old_lines or not old_lines[0].strip():
        raise ChangeError("`old` must start with a non-blank line")
    found = []
    for start, line in enumerate(lines):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if lines[start : start + len(old_lines)] == _indented(old_lines, indent):
            found.append((start, indent))
    if len(found) != 1:
        raise ChangeError(f"`old` text found {len(found)} times, expected exactly once: {old_lines[0].strip()!r}")
    start, indent = found[0]
    return "".join(lines[:start] + _indented(new_lines, indent) + lines[start + len(old_lines) :])


def _indented(block: list[str], indent: str) -> list[str]:
    return [line if not line.strip() else indent + line for line in block]


def make_patch(folder: Path, root: Path = ROOT) -> str:
    """The case's bad.patch text: its change.yaml applied to the files under `root`, as a git-style unified diff."""
    parts = []
    for file, replacements in load_change(folder).items():
        path = root / file
        if not path.is_file():
            raise ChangeError(f"{folder.name}: {file}: no such file")
        before = after = path.read_text()
        for old, new in replacements:
            try:
                after = replace_once(after, old, new)
            except ChangeError as exc:
                raise ChangeError(f"{folder.name}: {file}: {exc}") from None
        if after == before:
            raise ChangeError(f"{folder.name}: {file}: the replacements change nothing")
        diff = difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{file}", f"b/{file}"
        )
        parts.append(f"diff --git a/{file} b/{file}\n" + "".join(diff))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail when a bad.patch is out of date")
    parser.add_argument("--cases", nargs="*", help="case folder names (default: every case with a change.yaml)")
    opts = parser.parse_args(argv)
    stale = []
    try:
        for folder in case_folders(opts.cases):
            patch, target = make_patch(folder), folder / PATCH_FILE
            current = target.read_text() if target.is_file() else None
            if current == patch:
                continue
            stale.append(folder.name)
            if not opts.check:
                target.write_text(patch)
                print(f"wrote {target.relative_to(ROOT)}")
    except ChangeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if opts.check and stale:
        print(f"error: bad.patch out of date in {', '.join(stale)}: run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
