"""The `--fail-if` failure predicate: a tiny whitelisted expression language over metrics keys.

Grammar (parsed with Python's `ast`, never evaluated): comparisons (==, !=, <, <=, >, >=, chained) between
metric keys and numbers/strings/booleans, combined with `and`, `or`, `not` and parentheses. A key is a name,
a dotted name for nested metrics (`per_class_iou.foreground`), or `key["odd name"]` / `key[1]` for keys that
are not identifiers.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any

from segbisect.errors import UsageError

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

    def fits(self, available: list[str]) -> bool:
        """Whether every key names exactly one of `available` metrics."""
        return all(len(_matches(key, available)) == 1 for key in self.keys)

    def resolve_keys(self, available: list[str]) -> None:
        """Map each key to a metric (a unique `*.key` suffix match counts); unknown keys are a usage error."""
        mapping = {}
        for key in self.keys:
            matches = _matches(key, available)
            if len(matches) != 1:
                listing = ", ".join(sorted(available)) or "(none)"
                raise PredicateError(f"--fail-if: unknown metric key '{key}'; available keys: {listing}")
            mapping[key] = matches[0]
        self._aliases = mapping

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


def _matches(key: str, available: list[str]) -> list[str]:
    return [key] if key in available else [a for a in available if a.endswith("." + key)]


def _key(node: ast.AST, text: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_key(node.value, text)}.{node.attr}"
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return f"{_key(node.value, text)}.{node.slice.value!s}"
    raise PredicateError(f"--fail-if '{text}': '{ast.unparse(node)}' is not a metric key")
