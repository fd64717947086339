"""Typed, validated access to params.yaml: each stage reads only its own section."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
SPLITS = ("train", "val", "test")  # prepare makes them, preprocess keeps them, train and evaluate read them
PREPARED_LABELS = "labels.json"  # prepare's per-split foreground shares in its output folder; preprocess reads it

T = TypeVar("T")


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a dict; a missing or malformed file is a PipelineError."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    return data


def config_hash(path: Path = PARAMS_FILE) -> str:
    """Short stable hash of the full configuration, so runs of one configuration group together."""
    canonical = json.dumps(read_params(path), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_section(section: str, schema: type[T], path: Path = PARAMS_FILE) -> T:
    """Build the dataclass `schema` from one section, rejecting unknown, missing and mistyped keys."""
    data = read_params(path)
    if section not in data:
        raise PipelineError(f"{path}: missing section '{section}'")
    return _build(schema, data[section], f"{section}", path)


def _build(schema: type[T], values: Any, where: str, path: Path) -> T:
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: '{where}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"{path}: unknown key '{where}.{unknown[0]}' (known: {', '.join(fields)})")
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise PipelineError(f"{path}: missing key '{where}.{name}'")
            continue
        kwargs[name] = _coerce(hints[name], values[name], f"{where}.{name}", path)
    obj = schema(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise PipelineError(f"{path}: {where}: {exc}") from None
    return obj


def _coerce(hint: Any, value: Any, where: str, path: Path) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast("type[Any]", hint), value, where, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, path)
            except PipelineError as exc:
                errors.append(str(exc))
        raise PipelineError(errors[0] if errors else f"{path}: '{where}' has invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise PipelineError(f"{path}: '{where}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"{path}: '{where}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{path}: '{where}' must be a mapping, got {value!r}")
        return {
            _coerce(args[0], k, f"{where} key", path): _coerce(args[1], v, f"{where}.{k}", path)
            for k, v in value.items()
        }
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"{path}: '{where}' must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"{path}: '{where}' must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"{path}: '{where}' must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise PipelineError(f"{path}: '{where}' must be a string, got {value!r}")
        return value
    return value


def as_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value view of a params dataclass or mapping, the shape MLflow's log_params wants.

    Every non-empty mapping is opened, whatever its keys' type, so each entry is a key of its own
    (`label_map: {0: 0, 255: 1}` -> `label_map.0`, `label_map.255`): a change to one entry shows as that key.
    """
    flat: dict[str, Any] = {}
    items = dataclasses.asdict(typing.cast(Any, obj)).items() if dataclasses.is_dataclass(obj) else obj.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(as_flat_dict(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclasses.dataclass(frozen=True)
class ClassesParams:
    """The shared `classes` section: what the class ids mean, for every stage that needs them."""

    num_classes: int
    names: list[str]
    ignore_index: int = 255

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if len(self.names) != self.num_classes:
            raise ValueError(f"names has {len(self.names)} entries but num_classes is {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes or not 0 <= self.ignore_index <= 255:
            raise ValueError(f"ignore_index must be in [num_classes, 255], got {self.ignore_index}")
