"""Resolve GOOD/BAD references (git revision, DVC experiment, params file, MLflow run, the working tree) to a commit
plus what is laid over it: params, or the working tree's files.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml

from segbisect.core import machine
from segbisect.core.errors import UsageError
from segbisect.project import gateway, reading
from segbisect.project.reading import git, rev_parse_commit, uncommitted
from segbisect.tracking.store import INSTALL_HINT, NAME_A_STORE, may_hold_runs, mlflow_installed, route_logs

PARAMS_FILE = "params.yaml"
# DVC's own name for the working tree (`dvc params diff`, `dvc exp show`).
WORKSPACE = "workspace"
PREFIXES = ("git", "exp", "file", "mlflow", WORKSPACE)
PREFIX_OF = {"git": "git", "exp": "exp", "params-file": "file", "mlflow": "mlflow", WORKSPACE: WORKSPACE}
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# DVC's record of the outputs it last produced, not configuration: hybrids keep the lock DVC writes for them.
LOCK_NAME = "dvc.lock"


@dataclass(frozen=True)
class Reference:
    """A full pipeline configuration: a commit, optionally with params files replaced by `params`, or with the
    working tree's `files` in place of the commit's (a path missing from the working tree is deleted).

    `untracked`: files git neither tracks nor ignores, offered to the pipeline; those it reads join `files` once
    its stages are known (see `snapshot.load_all`), the others are left out.
    """

    text: str
    kind: str
    commit: str
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    detail: str = ""
    warnings: tuple[str, ...] = ()
    overlay_keys: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.text} ({self.kind}: {self.detail or self.commit[:10]})"


def resolve(repo: Path, text: str, tracking_uri: str | None) -> Reference:
    """Detect the kind of `text` and resolve it; `kind:` prefixes (git:, exp:, file:, mlflow:, workspace:) force a
    kind. MLflow run ids are looked up in `tracking_uri`, the store the user named (None: none named).
    """
    kind, colon, rest = text.partition(":")
    if kind == WORKSPACE and colon:
        if rest:
            raise UsageError(f"reference '{text}': the working tree takes no name; write 'workspace' or 'workspace:'")
        return _working_tree(repo, text)
    if kind in PREFIXES and rest:
        if kind == "mlflow":
            _check_lookup(text, tracking_uri)
        ref = _RESOLVERS[kind](repo, rest, tracking_uri)
        if ref is None:
            raise UsageError(f"reference '{text}': no {kind} reference named '{rest}'")
        return ref
    found = [ref for k in PREFIXES if (ref := _RESOLVERS[k](repo, text, tracking_uri)) is not None]
    if not found:
        raise UsageError(
            f"reference '{text}' is not a git revision, DVC experiment, params file, MLflow run id or `workspace` "
            f"(the working tree){_unlooked(text, tracking_uri)}"
        )
    kinds = {ref.kind for ref in found}
    if len(found) > 1 and not (kinds == {"git", "exp"} and len({r.commit for r in found}) == 1):
        prefixes = ", ".join(f"'{PREFIX_OF[k]}:'" for k in sorted(kinds))
        raise UsageError(
            f"reference '{text}' is ambiguous ({', '.join(sorted(kinds))}); prefix it with one of {prefixes}"
        )
    return found[0]


def _git_ref(repo: Path, text: str, _uri: str | None) -> Reference | None:
    commit = rev_parse_commit(repo, text)
    return Reference(text, "git", commit, detail=commit[:10]) if commit else None


def _exp_ref(repo: Path, text: str, _uri: str | None) -> Reference | None:
    """A DVC experiment by name (or full refs/exps/... ref), via DVC's own name resolution."""
    if "/" in text and not text.startswith("refs/exps/"):
        return None
    if not git(repo, "for-each-ref", "--count=1", "refs/exps/").stdout:
        return None  # no experiment at all: spares importing DVC in the session
    try:
        found = gateway.experiment(repo, text)
    except UsageError as exc:
        raise UsageError(f"reference '{text}': {exc}") from None
    if found is None:
        return None
    detail = f"DVC experiment {found.name} at {found.commit[:10]}"
    return Reference(text, "exp", found.commit, detail=detail)


def _params_file_ref(repo: Path, text: str, _uri: str | None) -> Reference | None:
    """A YAML file whose values are overlaid on HEAD's params.yaml."""
    path = Path(text)
    if not path.is_absolute() and not path.is_file():
        path = repo / text
    if not path.is_file():
        return None
    try:
        overlay = reading.load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"params file '{text}' is not UTF-8 text ({exc.reason} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"params file '{text}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(overlay, dict):
        raise UsageError(f"params file '{text}' must contain a mapping of params sections")
    head = rev_parse_commit(repo, "HEAD")
    if head is None:
        raise UsageError("the repository has no HEAD commit to overlay a params file on")
    merged = deep_merge(_commit_params(repo, head), overlay)
    detail = f"{path.name} over HEAD {head[:10]}"
    return Reference(text, "params-file", head, {PARAMS_FILE: merged}, detail=detail, overlay_keys=_leaf_keys(overlay))


def _check_lookup(text: str, tracking_uri: str | None) -> None:
    """An `mlflow:` reference needs a store to look in and MLflow to look with."""
    if tracking_uri is None:
        raise UsageError(
            f"reference '{text}': no tracking store named to look the run up in; name it with {NAME_A_STORE}"
        )
    if not mlflow_installed():
        raise UsageError(f"reference '{text}': looking up an MLflow run needs MLflow; {INSTALL_HINT}")


def _unlooked(text: str, tracking_uri: str | None) -> str:
    """Why a run id that is nothing else was not looked up in MLflow, if it was not."""
    if not RUN_ID.match(text):
        return ""
    if tracking_uri is None:
        return f"; no tracking store named to look MLflow runs up in ({NAME_A_STORE})"
    return "" if mlflow_installed() else f"; MLflow run ids need MLflow ({INSTALL_HINT})"


def _mlflow_ref(repo: Path, text: str, tracking_uri: str | None) -> Reference | None:
    """An MLflow run in the named store: its recorded git commit plus its logged params (flattened, per stage
    section).
    """
    if not RUN_ID.match(text) or tracking_uri is None or not may_hold_runs(tracking_uri) or not mlflow_installed():
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    route_logs(None)
    try:
        run = MlflowClient(tracking_uri).get_run(text)
    except MlflowException:
        return None
    tags = run.data.tags
    recorded = tags.get("git_commit") or tags.get("mlflow.source.git.commit")
    if not recorded:
        raise UsageError(f"MLflow run {text} has no git_commit tag, so its code version is unknown")
    warnings = []
    if recorded.endswith("-dirty"):
        recorded = recorded.removesuffix("-dirty")
        warnings.append(f"MLflow run {text} ran on a dirty worktree; uncommitted code changes are not recoverable")
    commit = rev_parse_commit(repo, recorded)
    if commit is None:
        raise UsageError(f"MLflow run {text} records commit {recorded}, which this repository does not have")
    moved = machine.differences(tags)
    if moved:
        warnings.append(
            f"MLflow run {text} ran on another machine ({'; '.join(moved)}): hybrids run here, so a verdict "
            "may rest on floating-point differences between CPUs rather than on the change"
        )
    params = _commit_params(repo, commit)
    section = tags.get("stage")
    nested = params.get(section) if section else None
    _set_logged(params, nested if isinstance(nested, dict) else params, run.data.params)
    detail = f"MLflow run {text[:8]} (stage {section}) at {commit[:10]}" if section else f"MLflow run at {commit[:10]}"
    return Reference(text, "mlflow", commit, {PARAMS_FILE: params}, detail=detail, warnings=tuple(warnings))


def _workspace_ref(repo: Path, text: str, _uri: str | None) -> Reference | None:
    return _working_tree(repo, text) if text == WORKSPACE else None


def _working_tree(repo: Path, text: str) -> Reference:
    """The working tree as it is on disk: HEAD's commit with every tracked file as it is now (modified, staged or
    deleted), and the untracked files git does not ignore on offer. Lock files stay HEAD's.
    """
    head = rev_parse_commit(repo, "HEAD")
    if head is None:
        raise UsageError(f"reference '{text}': the repository has no commit yet for the working tree to start from")
    tree = uncommitted(repo)
    changed = tuple(path for path in tree.changed if Path(path).name != LOCK_NAME)
    return with_files(Reference(text, WORKSPACE, head, untracked=tree.untracked), changed)


def with_files(ref: Reference, files: tuple[str, ...]) -> Reference:
    """The working tree `ref` with `files` taken from disk, its detail naming them."""
    names = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    changes = f"uncommitted: {names}" if files else "no uncommitted changes"
    return replace(ref, files=files, detail=f"working tree over HEAD {ref.commit[:10]}, {changes}")


_RESOLVERS = {
    "git": _git_ref,
    "exp": _exp_ref,
    "file": _params_file_ref,
    "mlflow": _mlflow_ref,
    WORKSPACE: _workspace_ref,
}


def _commit_params(repo: Path, commit: str) -> dict[str, Any]:
    out = git(repo, "show", f"{commit}:{PARAMS_FILE}", check=False)
    data = reading.load_yaml(out.stdout) if out.returncode == 0 else {}
    return data if isinstance(data, dict) else {}


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` laid over it, nested mappings merged key by key (how a params file overlays HEAD's)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of every value in a nested mapping (`{"a": {"b": 1}}` -> `("a.b",)`)."""
    keys: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.extend(_leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else [dotted])
    return tuple(keys)


def _set_logged(params: dict[str, Any], section: dict[str, Any], logged: dict[str, str]) -> None:
    """Lay a stage run's logged params over the commit's. A run that logs its whole configuration names each key
    from its params.yaml section down, a mapping with number keys (`label_map`) entry by entry: such a mapping is
    the run's entries alone, not the commit's with them laid over. `deps.<path>` are DVC's hashes of its data, not
    params; a run of an older pipeline logged its own section's keys alone, which go under `section`."""
    mappings: dict[tuple[str, ...], dict[Any, Any]] = {}
    for key, text in logged.items():
        parts = key.split(".")
        if parts[0] not in params:
            if parts[0] != "deps":
                _set_dotted(section, parts, text)
            continue
        depth = _number_keyed_mapping(params, parts)
        if depth is None:
            _set_dotted(params, parts, text)
            continue
        committed = _at(params, parts[:depth])
        entry = _number_key(parts[depth])
        mappings.setdefault(tuple(parts[:depth]), {})[entry] = _parse_logged(text, committed.get(entry))
    for path, mapping in mappings.items():
        _at(params, list(path[:-1]))[path[-1]] = mapping


def _number_keyed_mapping(params: dict[str, Any], parts: list[str]) -> int | None:
    """How many parts of a logged key lead to a committed mapping with number keys whose entry the last part is."""
    node: Any = params
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
        if isinstance(node, dict) and node and depth + 2 == len(parts) and not any(isinstance(k, str) for k in node):
            return depth + 1
    return None


def _at(params: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    node: Any = params
    for part in parts:
        node = node[part]
    return cast(dict[str, Any], node)


def _number_key(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _set_dotted(target: dict[str, Any], parts: list[str], text: str) -> None:
    """Put a logged (stringified) param back at its nested place, keeping the committed value's type."""
    first = _committed_key(target, parts[0])
    joined = ".".join(parts)
    if len(parts) > 1 and first not in target and joined not in target:
        target[first] = {}
    if joined in target or len(parts) == 1 or not isinstance(target.get(first), dict):
        key = first if len(parts) == 1 else joined
        target[key] = _parse_logged(text, target.get(key))
        return
    _set_dotted(target[first], parts[1:], text)


def _committed_key(target: dict[str, Any], part: str) -> Any:
    """The key of `target` a logged part names: `255` for "255" in a mapping with number keys."""
    return next((key for key in target if not isinstance(key, str) and str(key) == part), part)


def _parse_logged(text: str, committed: Any) -> Any:
    if isinstance(committed, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
