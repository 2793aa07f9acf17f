"""Typed experiment configs: YAML files plus dotted command-line overrides.

A config is a (nested) dataclass. ``load_config(ProbeConfig, "configs/x.yaml",
["probe.dims=[8,16]", "seed=3"])`` reads the file, applies the overrides and
checks every key and value against the dataclass *before* any work starts:
an unknown key names the nearest valid one, a value of the wrong type quotes
the value and the expected type, and all problems are reported together.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Any``,
``Optional[T]``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``Literal[...]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Mapping, Sequence, Tuple, Type, TypeVar, Union

import yaml

from lowbit.registry import nearest

C = TypeVar("C")


class ConfigError(ValueError):
    """A config that does not match its schema; the message lists every problem."""


def parse_overrides(overrides: Iterable[str]) -> Dict[str, Any]:
    """Turn ``["probe.dims=[8,16]", "seed=3"]`` into a nested dict.

    Values are parsed as YAML, so ``[8,16]`` is a list, ``3`` an int, ``1e-5`` a
    float and ``sgd`` a string.
    """
    result: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. seed=3 or probe.dims=[8,16])")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        set_dotted(result, key, _parse_scalar(text))
    return result


def set_dotted(tree: Dict[str, Any], key: str, value: Any) -> Dict[str, Any]:
    """Set ``tree["a"]["b"] = value`` for ``key = "a.b"``, making the inner mappings; returns ``tree``."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        existing = node.get(part)
        if not isinstance(existing, dict):
            existing = node[part] = {}
        node = existing
    node[parts[-1]] = value
    return tree


def get_dotted(tree: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``key = "a.b"``, or ``default`` where a part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def format_override(key: str, value: Any) -> str:
    """``key=value`` that ``parse_overrides`` reads back as ``value`` (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    if text.endswith("\n..."):  # a plain scalar document
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[: -len("...")].strip()
    return f"{key}={text}"


def find_config(name: Union[str, Path], prefixes: Sequence[str] = (), near: Sequence[Union[str, Path]] = ()) -> Path:
    """The config file ``name`` stands for: a path, or a built-in name such as ``train-digits-xnor``.

    Tried in order: ``name`` as a path (as given, then relative to each folder in
    ``near``); then ``<prefix><name>.yaml`` for each prefix (e.g. ``train-``, then
    none) in each of ``near`` and the folders of built-in configs (``./configs``
    and the ``configs/`` of the lowbit source tree). A name that matches nothing
    is an error listing the nearest built-in names.
    """
    name = str(name)
    candidates = [Path(name)] + [Path(folder) / name for folder in near]
    for path in candidates:
        if path.is_file():
            return path
    folders = [Path(folder) for folder in near] + builtin_config_dirs()
    stem = name[:-5] if name.endswith(".yaml") else name
    for folder in folders:
        for prefix in [*prefixes, ""]:
            path = folder / f"{prefix}{stem}.yaml"
            if path.is_file():
                return path
    known = sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})
    hint = nearest(stem, known) or (nearest(f"{prefixes[0]}{stem}", known) if prefixes else None)
    raise ConfigError(
        f"config {name!r} is neither a file nor a built-in config name"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (built-in configs are in {', '.join(str(f) for f in folders if f.is_dir()) or 'no configs folder found'})"
    )


def builtin_config_dirs() -> List[Path]:
    """Folders holding lowbit's own configs: ``./configs`` and the source tree's ``configs/``."""
    source = Path(__file__).resolve().parents[2] / "configs"  # src/lowbit/config.py -> <repo>/configs
    folders = [Path("configs"), source]
    unique: List[Path] = []
    for folder in folders:
        if folder.is_dir() and all(folder.resolve() != f.resolve() for f in unique):
            unique.append(folder)
    return unique


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _fix_yaml_floats(value)


def _fix_yaml_floats(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-5`` as a string; read it as the float it is."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if value.strip().lower() not in {"nan", "inf", "-inf", "+inf", "infinity"} else value
    if isinstance(value, list):
        return [_fix_yaml_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _fix_yaml_floats(v) for k, v in value.items()}
    return value


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``.

    Non-empty mappings merge; any other value, an empty mapping ``{}`` included,
    replaces (so ``optim.extra={}`` clears the extras of the file).
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and value and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (looked in {path.resolve().parent})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return _fix_yaml_floats(data)


def load_config(
    cls: Type[C],
    path: Union[str, Path, None] = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from ``base`` (a dict), then the YAML file, then the overrides."""
    data: Dict[str, Any] = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def from_dict(cls: Type[C], data: Mapping[str, Any]) -> C:
    """Validate ``data`` against the dataclass ``cls`` and build it; raise ConfigError listing all problems."""
    errors: List[str] = []
    value = _build_dataclass(cls, data, "", errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return value


def to_dict(config: Any) -> Dict[str, Any]:
    """The config as plain YAML-friendly data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_config(config: Any, path: Union[str, Path]) -> None:
    """Write the config as YAML, atomically (a reader never sees half a config.yaml)."""
    from lowbit.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _build_dataclass(cls: Any, data: Any, where: str, errors: List[str]) -> Any:
    if not isinstance(data, Mapping):
        errors.append(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: Dict[str, Any] = {}
    for key, raw in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            hint = nearest(str(key), fields)
            suggestion = f"; did you mean {(where + '.' if where else '') + hint!r}?" if hint else ""
            errors.append(f"unknown key {path!r}{suggestion} (valid keys here: {', '.join(fields)})")
            continue
        kwargs[key] = _coerce(hints[key], raw, path, errors)
    for name, field in fields.items():
        if name not in kwargs and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            errors.append(f"missing required key {(where + '.' if where else '') + name!r}")
    if errors:
        return None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:  # __post_init__ checks of the dataclass itself
        errors.append(f"{where or 'config'}: {error}")
        return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str, errors: List[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[T]: T's own errors say more than "expected T or None"
            return _coerce(options[0], value, path, errors)
        for option in options:
            trial: List[str] = []
            result = _coerce(option, value, path, trial)
            if not trial:
                return result
        errors.append(f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            hint = nearest(str(value), [str(a) for a in args])
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            errors.append(f"{path}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}{suggestion}")
        return value
    if origin in (list, List, tuple, Tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if origin in (list, List, Sequence) and args and _is_scalar_type(args[0]):
                value = [value]  # a single value where a list is expected: a list of one
            else:
                errors.append(f"{path}: expected a list, got {value!r}")
                return None
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin in (tuple, Tuple) else items
    if origin in (dict, Dict, Mapping):
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return None
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(value_type, v, f"{path}.{k}", errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(f"{path}: expected true or false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        errors.append(f"{path}: expected an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(float(value)):
                errors.append(f"{path}: expected a number, got NaN")
                return None
            return float(value)
        errors.append(f"{path}: expected a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append(f"{path}: expected a string, got {value!r}")
        return None
    return value


def _is_scalar_type(tp: Any) -> bool:
    return tp in (int, float, str, bool)
