"""Checks of what the user typed that would otherwise fail late or silently: before any hybrid runs."""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
from pathlib import Path

from segbisect.core.errors import UsageError
from segbisect.project.refs import PARAMS_FILE, Reference
from segbisect.project.snapshot import Snapshot

TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def check_overlay(ref: Reference, snap: Snapshot) -> None:
    """Every key a params file sets must be read by some stage (declared in dvc.yaml or used in a `${}`
    template): a misspelt key would otherwise be taken as a harmless new one.
    """
    declared = {
        ".".join(map(str, keypath)) for stage in snap.stages for file, keypath in stage.params if file == PARAMS_FILE
    }
    templated = set(TEMPLATE.findall((snap.root / "dvc.yaml").read_text(encoding="utf-8")))
    used = declared | templated
    for key in ref.overlay_keys:
        if not any(key == u or key.startswith(u + ".") or u.startswith(key + ".") for u in used):
            close = difflib.get_close_matches(key, sorted(used), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"params file '{ref.text}': no stage in dvc.yaml reads '{key}'{hint}")


def check_command(command: str, repo: Path) -> None:
    """A `--run` check must parse and its program must exist, or every hybrid would fail the same way."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--run '{command}': cannot be parsed ({exc})") from None
    words = [w for w in words if not re.match(r"^[A-Za-z_]\w*=", w)]
    if not words:
        raise UsageError("--run is empty: give a command, or leave the option out")
    if subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode != 0:
        raise UsageError(f"--run '{command}': not valid shell syntax")
    program = words[0]
    if "/" in program:
        path = Path(program) if Path(program).is_absolute() else repo / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"--run: {path} is not an executable file")
        return
    found = subprocess.run(["bash", "-c", 'type -t -- "$1"', "_", program], capture_output=True, cwd=repo)
    if found.returncode != 0:
        raise UsageError(f"--run: '{program}' is not a command here (not on PATH, not a shell builtin)")


def check_writable(path: Path | None) -> None:
    """A file the bisection writes at its end (the summary) must be writable before hours of hybrids run."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, expected a file to write")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: its folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{path}: not writable")
