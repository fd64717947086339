"""The `--fail-if` failure predicate: a tiny whitelisted expression language over metrics keys.

Grammar (parsed with Python's `ast`, never evaluated): comparisons (==, !=, <, <=, >, >=, chained) between
metric keys and numbers/strings/booleans, combined with `and`, `or`, `not` and parentheses. A key is a name,
a dotted name for nested metrics (`per_class_iou.foreground`), or `key["odd name"]` / `key[1]` for keys that
are not identifiers.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from segbisect.core.errors import UsageError

# Deep enough for any real check (a comparison is 3 levels, each and/or/not adds one).
MAX_DEPTH = 50
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class PredicateError(UsageError):
    """The expression is not in the predicate language or names an unknown metric."""


class UnjudgeableError(Exception):
    """A hybrid's metrics lack a key or hold a non-comparable value, so the hybrid is untestable."""


class Predicate:
    """`Predicate(text)(metrics) -> True` when the metrics show the failure."""

    def __init__(self, text: str) -> None:
        self.text = text
        if not text.strip():
            raise PredicateError("--fail-if is empty: give an expression, or leave the option out")
        too_deep = PredicateError(f"--fail-if: nested deeper than {MAX_DEPTH} levels")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise PredicateError(f"--fail-if '{text}': not a valid expression ({exc.msg})") from None
        except (RecursionError, MemoryError):
            raise too_deep from None
        if _depth(tree.body) > MAX_DEPTH:
            raise too_deep
        self._tree = tree.body
        self.keys: list[str] = []
        self._aliases: dict[str, str] = {}
        self._check(self._tree)

    @property
    def resolved(self) -> bool:
        """Whether the keys were checked against real metrics (trivially so when there are none)."""
        return bool(self._aliases) or not self.keys

    @property
    def metric_keys(self) -> list[str]:
        """The metrics the expression reads (resolved names once checked)."""
        return [self._aliases.get(k, k) for k in self.keys]

    @property
    def bound(self) -> tuple[str, float | str] | None:
        """The metric the check holds to a threshold and that threshold, when the check is one comparison (what a
        plot of that metric draws): a number, or the key of the metric on the comparison's other side (a tolerance
        the metrics file carries, as in `foreground_fraction <= all_zero_threshold`); None for any other expression.
        """
        node = self._tree
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
            return None
        left, right = node.left, node.comparators[0]
        for metric, number in ((left, right), (right, left)):
            try:
                value = ast.literal_eval(number)
            except ValueError:
                continue
            if _is_key(metric) and _number(value):
                return self._resolved(metric), float(value)
        if _is_key(left) and _is_key(right):
            return self._resolved(left), self._resolved(right)
        return None

    def _resolved(self, node: ast.AST) -> str:
        key = _key(node, self.text)
        return self._aliases.get(key, key)

    def fits(self, available: list[str]) -> bool:
        """Whether every key names exactly one of `available` metrics."""
        return all(len(_matches(key, available)) == 1 for key in self.keys)

    def resolve_keys(self, available: list[str], source: str = "the metrics file") -> None:
        """Map each key to a metric of `source` (a unique `*.key` suffix match counts); see `check`."""
        self.check({source: available})
        self._aliases = {key: _matches(key, available)[0] for key in self.keys}

    def check(self, files: Mapping[str, Sequence[str]]) -> None:
        """Every key must name one metric of some file (`files`: each one's keys). A misspelt key is a usage
        error offering the closest key, as a misspelt params key is; a suffix naming several keys asks for one.
        """
        for key in self.keys:
            holders = {file: _matches(key, keys) for file, keys in files.items()}
            holders = {file: matches for file, matches in holders.items() if matches}
            if not holders:
                raise PredicateError(_unknown(key, files))
            [(file, matches), *others] = holders.items()
            if not others and len(matches) > 1:
                raise PredicateError(
                    f"--fail-if names '{key}', which several keys of {file} end with ({', '.join(matches)}): "
                    "write one of them whole"
                )

    def __call__(self, metrics: dict[str, Any]) -> bool:
        return bool(self._eval(self._tree, metrics))

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            self._check(node.operand)
        elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            for operand in [node.left, *node.comparators]:
                self._check(operand)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            pass
        elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            self.keys.append(_key(node, self.text))
        else:
            raise PredicateError(
                f"--fail-if '{self.text}': '{ast.unparse(node)}' is not allowed "
                "(use metric keys, numbers, comparisons, and/or/not, parentheses)"
            )

    def _eval(self, node: ast.AST, metrics: dict[str, Any]) -> Any:
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, metrics) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, metrics)
            return not value if isinstance(node.op, ast.Not) else (-value if isinstance(node.op, ast.USub) else value)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, metrics)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, metrics)
                try:
                    if not _COMPARE[type(op)](left, right):
                        return False
                except TypeError:
                    raise UnjudgeableError(f"cannot compare {left!r} with {right!r}") from None
                left = right
            return True
        if isinstance(node, ast.Constant):
            return node.value
        key = _key(node, self.text)
        name = self._aliases.get(key, key)
        if name not in metrics:
            raise UnjudgeableError(f"metric '{name}' is missing")
        value = metrics[name]
        if isinstance(value, float) and math.isnan(value):
            raise UnjudgeableError(f"metric '{name}' is NaN")
        return value


def _depth(root: ast.AST) -> int:
    """How deeply the expression nests, walked without recursion (evaluation recurses, so it must be bounded)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _matches(key: str, available: Sequence[str]) -> list[str]:
    return [key] if key in available else [a for a in available if a.endswith("." + key)]


def _unknown(key: str, files: Mapping[str, Sequence[str]]) -> str:
    """The error for a key no file holds: the closest key that would resolve (and its file), else every key."""
    names = {name: file for file, keys in files.items() for name in _spellings(keys)}
    close = difflib.get_close_matches(key, list(names), n=1)
    if close:
        return f"--fail-if names '{key}', not in {names[close[0]]}; did you mean '{close[0]}'?"
    keys = sorted({name for keys in files.values() for name in keys})
    return f"--fail-if names '{key}', not in {' or '.join(files)}; available keys: {', '.join(keys) or '(none)'}"


def _spellings(keys: Sequence[str]) -> list[str]:
    """Every way a predicate can name one of `keys`: whole, or by a dotted suffix no other key ends with."""
    suffixes = {".".join(key.split(".")[i:]) for key in keys for i in range(1, key.count(".") + 1)}
    return [*keys, *sorted(s for s in suffixes if len(_matches(s, keys)) == 1)]


def _key(node: ast.AST, text: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_key(node.value, text)}.{node.attr}"
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return f"{_key(node.value, text)}.{node.slice.value!s}"
    raise PredicateError(f"--fail-if '{text}': '{ast.unparse(node)}' is not a metric key")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_key(node: ast.AST) -> bool:
    return isinstance(node, (ast.Name, ast.Attribute, ast.Subscript))
