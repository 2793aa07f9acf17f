"""Typed experiment configs: YAML files plus dotted command-line overrides.

A config is a (nested) dataclass. ``load_config(ProbeConfig, "configs/x.yaml",
["probe.dims=[8,16]", "seed=3"])`` reads the file, applies the overrides and
checks every key and value against the dataclass *before* any work starts:
an unknown key names the nearest valid one, a value of the wrong type quotes
the value and the expected type, and all problems are reported together.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Any``,
``Optional[T]``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``Literal[...]`` and nested dataclasses. A ``float`` field takes finite numbers
within float32's range only (NaN and ±inf mean nothing as a learning rate, a
factor or a range, and 1e300 overflows the float32 tensors it scales; the
fields that may be unbounded say so with ``None``), an ``int`` field one that
fits 64 bits.

YAML is read with bounds, so a small hostile file cannot exhaust memory or
time before its keys are checked (:func:`read_yaml`, also for the values of
overrides): at most :data:`MAX_CONFIG_BYTES` of text, :data:`MAX_YAML_NODES`
values once aliases are expanded (a "billion laughs" file is refused, not
expanded), nesting at most :data:`MAX_YAML_DEPTH` deep, no recursive alias, no
duplicate key (YAML would silently keep the last), no empty or comment-only
file, and only YAML's safe types (``!!python/...`` tags are refused).
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

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: the largest built-in config is ~3 kB
MAX_YAML_NODES = 100_000  # values after alias expansion; the largest built-in config has ~300
MAX_YAML_DEPTH = 50  # nesting levels; built-in configs use at most 5
INT_LIMIT = 2**63  # int fields must fit int64 (torch seeds, counts)
FLOAT32_MAX = 3.4028234663852886e38  # float fields must fit float32: they scale float32 tensors


class ConfigError(ValueError):
    """A config that does not match its schema; the message lists every problem."""


class _BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (the plain one keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_node(root: yaml.Node, source: str) -> None:
    """Refuse a YAML graph whose expansion (aliases followed) is too large, too deep or recursive."""
    size: Dict[int, int] = {}
    height: Dict[int, int] = {}
    stack = [(root, False)]
    on_path: set = set()
    while stack:  # iterative post-order: a deep graph cannot overflow Python's stack here
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{source} expands to more than {MAX_YAML_NODES:,} values (aliases repeat their anchors); "
                    "a config is a page of keys: write it out without nested aliases"
                )
            if height[key] > MAX_YAML_DEPTH:
                raise ConfigError(f"{source} is nested more than {MAX_YAML_DEPTH} levels deep; flatten it")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"{source} holds a recursive alias (an anchor used inside itself); remove it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, source: str) -> Any:
    """YAML ``text`` as data, within the bounds of the module docstring; errors name ``source``."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text):,} characters; a config is at most {MAX_CONFIG_BYTES:,}")
    loader = _BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to read (more than {MAX_YAML_DEPTH} levels); flatten it") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {_one_line(error)}") from None
    finally:
        loader.dispose()


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's message (problem, line, column) on one line, without the quoted source snippet."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


MAX_THREADS = 256  # torch threads at most (or 4 per core on a bigger machine): 1e5 threads hang the process


def check_threads(value: Any, key: str) -> None:
    """A torch thread count a machine can use (None/0: the default); a config from a larger machine still runs."""
    import os

    limit = max(MAX_THREADS, 4 * (os.cpu_count() or 1))
    if isinstance(value, int) and value > limit:
        raise ConfigError(
            f"{key}={value} is more threads than this machine can use ({os.cpu_count()} cores; at most {limit}); "
            "use the core count or fewer"
        )


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


def flatten_dotted(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}``: every leaf under its dotted key (the inverse of
    ``set_dotted``); an empty mapping is a leaf."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    none) in each of ``near`` and the folders of :func:`builtin_config_dirs`
    (``./configs``, then the configs installed with lowbit). A name that matches nothing
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
    """Folders searched for config names: ``./configs`` (the user's own, first), then lowbit's built-in ones.

    The built-in configs are package data (``lowbit/configs/*.yaml``), so they
    exist in a wheel or sdist install as well as in a source checkout.
    """
    folders = [Path("configs"), package_config_dir()]
    unique: List[Path] = []
    for folder in folders:
        if folder.is_dir() and all(folder.resolve() != f.resolve() for f in unique):
            unique.append(folder)
    return unique


def package_config_dir() -> Path:
    """lowbit's built-in configs, installed with the package."""
    return Path(__file__).resolve().parent / "configs"


def builtin_configs(prefix: str = "") -> List[Path]:
    """The built-in config files whose names start with ``prefix`` (e.g. ``train-``), sorted by name."""
    return sorted(package_config_dir().glob(f"{prefix}*.yaml"))


def _parse_scalar(text: str) -> Any:
    try:
        value = parse_yaml(text, f"override value {text[:40]!r}")
    except ConfigError as error:
        if "not valid YAML" in str(error):
            return text  # e.g. "a: b" or an unbalanced bracket: taken as the plain string
        raise
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


def read_yaml(path: Union[str, Path], allow_empty: bool = False) -> Dict[str, Any]:
    """Read a YAML mapping within the bounds of the module docstring, with errors that name the file.

    An empty or comment-only file is an error (it would silently mean "all
    defaults"), unless ``allow_empty``; then it reads as ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (looked in {path.resolve().parent})")
    source = f"config file {str(path)!r}"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source} is {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,} (is it a config?)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source} is not UTF-8 text (byte {error.start}); is it a config?") from None
    except OSError as error:
        raise ConfigError(f"{source} cannot be read: {error.strerror or error}") from None
    data = parse_yaml(text, source)
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(
            f"{source} is empty (or only comments): write the keys to change, or give no file for the built-in defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of keys, got {type(data).__name__}")
    return _fix_yaml_floats(data)


def read_yaml_or_empty(path: Union[str, Path]) -> Dict[str, Any]:
    """A run's YAML file for a report (meta.yaml, summary.yaml): ``{}`` when missing, empty or not a mapping.

    Still bounded and safe; invalid YAML is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return read_yaml(path, allow_empty=True)
    except ConfigError as error:
        if "must hold a mapping" in str(error):
            return {}
        raise


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
    """Validate ``data`` against the dataclass ``cls`` and build it; raise ConfigError listing all problems.

    A config class with a top-level ``plugins`` field (every command's config)
    first imports the modules it lists (:func:`lowbit.plugins.import_plugins`),
    so that the models, quantizers and estimators they register are known
    before anything names them: this is how a resumed run, a sweep cell in a
    worker and ``lowbit export`` get the user's code back from ``config.yaml``.
    """
    _import_plugins_of(cls, data)
    errors: List[str] = []
    value = _build_dataclass(cls, data, "", errors)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    return value


def _import_plugins_of(cls: Any, data: Any) -> None:
    """Import ``data["plugins"]`` when ``cls`` has a ``plugins`` field (a list of strings; else reported later)."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, Mapping) and data.get("plugins")):
        return
    if "plugins" not in {f.name for f in dataclasses.fields(cls)}:
        return
    errors: List[str] = []
    modules = _coerce(List[str], data["plugins"], "plugins", errors)
    if not errors:  # a wrong type is reported with the config's other problems
        from lowbit.plugins import import_plugins

        import_plugins(modules, source="plugins: of the config")


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
        # A mapping given for a Union with one dataclass option meant that dataclass: its own errors say more.
        shaped = [a for a in options if dataclasses.is_dataclass(a)] if isinstance(value, Mapping) else []
        if len(shaped) == 1:
            return _coerce(shaped[0], value, path, errors)
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
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if number is None:
            errors.append(f"{path}: expected an integer, got {value!r}")
            return None
        if not -INT_LIMIT <= number < INT_LIMIT:
            errors.append(f"{path}: {value!r} is beyond any count or seed lowbit can use (|n| < 2**63)")
            return None
        return number
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if math.isnan(number):
                errors.append(f"{path}: expected a number, got NaN")
                return None
            if math.isinf(number):
                errors.append(f"{path}: expected a finite number, got {value!r}")
                return None
            if abs(number) > FLOAT32_MAX:
                errors.append(f"{path}: {value!r} is beyond float32 (|x| <= 3.4e38), the precision of the tensors it meets")
                return None
            return number
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
