"""Configuration as data, declared once: every option's type, range and allowed names live on its dataclass field.

A command's settings are a dataclass whose fields are declared with :func:`option` (default, help, bounds,
allowed names, an extra check). From that one declaration come the command-line flags (:func:`add_arguments`:
``foo_bar`` is ``--foo-bar``, booleans get ``--no-foo-bar``), the reading of YAML files (:func:`read_yaml_mapping`:
duplicate keys are refused) and the check of every value, whatever its source (:func:`build`: flags, a ``--config``
file, a resumed checkpoint's config). A value out of range or not among the allowed names is a one-line
``ValueError`` naming the flag and what it accepts, raised before any work starts. :func:`save_config` writes the
resolved settings as YAML that :func:`build` reads back equal.

``fcvit train`` (:class:`fcvit.train.config.TrainConfig`) and the dense commands (:mod:`fcvit.dense.config`) are
declared this way; the other commands' few flags use argparse types from :mod:`fcvit.errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text

__all__ = [
    "add_arguments",
    "build",
    "check_model_name",
    "describe_default",
    "mapping_argument",
    "option",
    "parse_mapping",
    "plain",
    "read_yaml_mapping",
    "save_config",
    "validate",
]

Choices = Iterable[Any] | Callable[[], Iterable[Any]]
COMMAND_LINE = "command line"  # the source name of flags: errors then name the flag (--foo-bar), else the key


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: Choices | None = None,
    check: Callable[[Any], None] | None = None,
    auto: str | None = None,
) -> Any:
    """A dataclass field with its command-line help and its checks.

    ``low``/``high``: inclusive bounds; ``above``/``below``: exclusive bounds (of a number, or of every item of a
    list); ``choices``: the allowed values, or a function returning them (names from a library's registry, read
    only when a value is checked); ``check``: a function raising ``ValueError`` for a value it refuses; ``auto``:
    what ``None`` means ("the model's pretrained_cfg"), shown in the help as the default.
    """
    meta = dict(help=help, low=low, high=high, above=above, below=below, choices=choices, check=check, auto=auto)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unoptional(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _kind(hint: Any) -> tuple[type, type | None]:
    """(container or scalar type, item type): ``list[float]`` -> (list, float), ``int | None`` -> (int, None)."""
    hint = _unoptional(hint)
    origin = typing.get_origin(hint) or hint
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if origin in (list, tuple):
        return origin, (args[0] if args else float)
    return origin, None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def describe_default(f: dataclasses.Field) -> str:
    """The ``[default: ...]`` of a field's help: its value, or for ``None`` what is chosen automatically."""
    default = _default(f)
    if default in (None, "") and f.metadata.get("auto"):
        return f"auto: {f.metadata['auto']}"
    if default == "":
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default) or "none"
    return str(default)


def _allowed(f: dataclasses.Field) -> list[Any] | None:
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("low") is not None:
        parts.append(f">= {meta['low']}")
    if meta.get("above") is not None:
        parts.append(f"> {meta['above']}")
    if meta.get("high") is not None:
        parts.append(f"<= {meta['high']}")
    if meta.get("below") is not None:
        parts.append(f"< {meta['below']}")
    return " and ".join(parts)


def _in_bounds(x: float, meta: Mapping[str, Any]) -> bool:
    return not (
        (meta.get("low") is not None and x < meta["low"])
        or (meta.get("high") is not None and x > meta["high"])
        or (meta.get("above") is not None and not x > meta["above"])
        or (meta.get("below") is not None and not x < meta["below"])
    )


def _scalar(kind: type, value: Any) -> Any:
    """``value`` (from YAML, JSON or a flag's text) as a ``kind``; ``TypeError``/``ValueError`` when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("expected true or false")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise TypeError("expected an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported config type {kind}")


def _coerce(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """Convert and check one value of field ``f``; the ``ValueError`` says what is wrong, not where."""
    if value is None:
        if _unoptional(hint) is hint and _default(f) is not None:
            raise ValueError("must be given (it has no automatic value)")
        return None
    kind, item = _kind(hint)
    try:
        if kind is dict:
            value = parse_mapping(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise TypeError("expected a mapping such as '{\"depths\": [1, 1, 1, 1]}'")
            return value
        if kind in (list, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            converted = kind(_scalar(item, v) for v in items)
        else:
            converted = _scalar(kind, value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad value {value!r} ({e})") from None
    meta = f.metadata
    numbers = converted if kind in (list, tuple) else [converted]
    if kind is str:
        shown = repr(converted)
    else:  # as the user wrote it: 0 and 1e-3, not 0.0 and 0.001
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    if kind is not str and not all(_in_bounds(x, meta) for x in numbers if isinstance(x, (int, float))):
        raise ValueError(f"{shown} is out of range: must be {_bounds_text(meta)}")
    allowed = _allowed(f)
    if allowed is not None and converted not in allowed:
        raise ValueError(f"{shown} is not one of: {', '.join(map(str, allowed))}")
    if meta.get("check") is not None:
        meta["check"](converted)
    return converted


def build(cls: type, *layers: tuple[str, Mapping[str, Any] | None]) -> Any:
    """An instance of the dataclass ``cls``: its defaults, then each ``(source, values)`` layer in turn.

    Every value is converted and checked against its field's declaration; a key that is no field, or a value it
    refuses, is a ``ValueError`` naming the source and the flag (``--crop-pct (command line): 0 is out of range``,
    ``crop_pct (run.yaml): ...`` for a file). After
    the fields, ``cls.check(instance)`` (if defined) checks the relations between them.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for source, mapping in layers:
        for key, value in (mapping or {}).items():
            name = str(key).replace("-", "_")
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=3)
                known = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(fields))}"
                raise ValueError(f"{source}: unknown config key {key!r} ({known})")
            try:
                values[name] = _coerce(fields[name], hints[name], value)
            except ValueError as e:
                label = _flag(name) if source == COMMAND_LINE else name
                raise ValueError(f"{label} ({source}): {e}") from None
    instance = cls(**values)
    if hasattr(instance, "check"):
        instance.check()
    return instance


def validate(instance: Any, source: str = "config") -> Any:
    """A config dataclass built in code, checked against its declarations as :func:`build` checks values read from
    flags and files; returns the checked copy (``ValueError`` naming the field otherwise)."""
    return build(type(instance), (source, plain(instance)))


def check_model_name(name: Any) -> None:
    """Raise a one-line ``ValueError`` unless ``name`` is a model registered with timm (this project's included),
    listing the closest names. timm is imported here, when a value is checked, so building the flags stays fast."""
    import timm

    from .. import models  # noqa: F401  (registers this project's models with timm)

    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name is a string such as 'fcvit_b12', got {name!r}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown model {name!r}" + (f"; closest: {', '.join(close)}" if close else ""))


def parse_mapping(text: str) -> dict[str, Any]:
    """A ``--model-kwargs``-style value: a JSON object or a YAML flow mapping (``'{depths: [1, 1, 1, 1]}'``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{text!r} is not a mapping ({str(e).splitlines()[0]})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{text!r} is not a mapping such as '{{\"depths\": [1, 1, 1, 1]}}'")
    return value


def mapping_argument(text: str) -> dict[str, Any]:
    """argparse type of every ``--model-kwargs`` flag: :func:`parse_mapping` with argparse's error."""
    try:
        return parse_mapping(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per field of ``cls`` (``--foo-bar``; booleans also ``--no-foo-bar``), defaulting to "not given"
    (so that a ``--config`` file or a resumed run's config is overridden only by flags the user typed).

    Types and allowed names are checked by :func:`build`, which names the source; argparse only splits the words.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind, item = _kind(hints[f.name])
        allowed = f.metadata.get("choices")
        names = f" (one of: {', '.join(map(str, allowed))})" if allowed is not None and not callable(allowed) else ""
        help = f"{f.metadata.get('help', '')}{names} [default: {describe_default(f)}]"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help.replace("%", "%%"))
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif kind in (list, tuple):
            parser.add_argument(_flag(f.name), nargs="+", metavar=item.__name__.upper(), **kw)
        elif kind is dict:
            parser.add_argument(_flag(f.name), metavar="MAPPING", **kw)
        else:
            parser.add_argument(_flag(f.name), metavar=f.name.upper(), **kw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives one key twice (PyYAML keeps the last silently)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (it is given twice)", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: ``{}``); errors name the file and, for bad YAML (a duplicate
    key included), the line."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}{where}: malformed YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values")
    return loaded


def plain(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON data (tuples as lists)."""

    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the config dataclass ``cfg`` as YAML (keys in field order), atomically; :func:`build` reads it back."""
    atomic_write_text(path, yaml.safe_dump(plain(cfg), sort_keys=False))
