"""The README's commands, read from the README itself, so the test and CI run them as written (no second copy).

A fenced block is marked by an HTML comment on the line before it, invisible on GitHub:

- `<!-- readme-test: run -->`: shell commands, one per line, run in order in a fresh clone.
- `<!-- readme-test: ci -->`: the test command. CI runs it (`python3 tests/readme_commands.py test` prints it
  without its install steps); the README test, one of the tests it runs, does not.
- `<!-- readme-test: output -->`: what the run block before it prints, whole; `…` stands for any text, and any run
  of whitespace for any other (a terminal's wrapping).
- `<!-- readme-test: mlflow-filter EXPERIMENT -->`: a search filter for the runs of the MLflow experiment named.

A command is a line of `&&`-joined steps. The steps that build the environment (create or activate the venv, pip
install) are CI's to run: `python3 tests/readme_commands.py install` prints them, joined, for .ci/run to run as the
project's install; the README test, running inside that environment, runs every other step of the run blocks.
Standard library only: CI runs this before anything is installed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!-- readme-test: (?P<kind>run|ci|output|mlflow-filter)(?: (?P<argument>\S+))? -->$")
FENCE = re.compile(r"^(```|~~~)")
INSTALL_STEP = re.compile(r"^(python3 -m venv \S+|\. \S+/bin/activate|(\S+/bin/)?pip install .+)$")


@dataclass(frozen=True)
class Block:
    kind: str
    argument: str
    text: str
    line: int

    def commands(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


class ReadmeError(Exception):
    """A marker the README test cannot use: named with the README's line, so the fix is one edit away."""


def blocks(readme: Path = README) -> list[Block]:
    lines = readme.read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines, start=1):
        marker = MARKER.match(line.strip())
        if marker is None:
            continue
        if number >= len(lines) or not FENCE.match(lines[number]):
            raise ReadmeError(f"{readme}:{number}: a readme-test marker must be followed by a fenced block")
        fence = FENCE.match(lines[number])
        assert fence is not None
        end = next((i for i in range(number + 1, len(lines)) if lines[i].startswith(fence.group(1))), None)
        if end is None:
            raise ReadmeError(f"{readme}:{number + 1}: the fenced block is never closed")
        text = "\n".join(lines[number + 1 : end])
        found.append(Block(marker.group("kind"), marker.group("argument") or "", text, number))
    return found


def steps(command: str) -> list[str]:
    return [step.strip() for step in command.split(" && ")]


def is_install(step: str) -> bool:
    return INSTALL_STEP.match(step) is not None


def install_steps(readme: Path = README) -> list[str]:
    commands = [command for block in blocks(readme) if block.kind in ("run", "ci") for command in block.commands()]
    return [step for command in commands for step in steps(command) if is_install(step)]


def suite_command(readme: Path = README) -> str:
    ci = [block for block in blocks(readme) if block.kind == "ci"]
    if len(ci) != 1 or len(ci[0].commands()) != 1:
        raise ReadmeError(f"{readme}: needs exactly one readme-test ci block of one command")
    return " && ".join(step for step in steps(ci[0].commands()[0]) if not is_install(step))


def expected_output(text: str) -> re.Pattern[str]:
    pieces = [r"\s+".join(re.escape(word) for word in piece.split()) for piece in text.split("…")]
    return re.compile(r"\s*" + r".*?".join(pieces) + r"\s*", re.DOTALL)


def main(argv: list[str]) -> int:
    if argv == ["install"]:
        print(" && ".join(install_steps()))
    elif argv == ["test"]:
        print(suite_command())
    else:
        print("usage: readme_commands.py install|test", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
