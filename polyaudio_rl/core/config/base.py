"""Typed-config machinery: dataclasses from nested dicts, YAML files and dotted overrides.

Every config section is a dataclass whose fields carry ``metadata={"help": ...}`` (meaning, default,
paper source). ``build(cls, mapping)`` turns a nested dict into that dataclass, checking every key and
type; an unknown key or a wrongly typed value raises :class:`ConfigError` naming the dotted key and,
for unknown keys, the closest valid one.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

LRSchedule = Literal["constant", "linear", "cosine"]  # after learner.warmup_steps; decays reach 0 at a stage's last step
LR_SCHEDULES = get_args(LRSchedule)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


def cfg_field(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """A dataclass field with a help text. Mutable defaults (list/dict) are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    """A choice: ``value`` must be one of the Literal's values (a bool never stands for 0 or 1)."""
    allowed = list(get_args(tp))
    if isinstance(value, bool) or value not in allowed:
        hint = _suggest(value, [a for a in allowed if isinstance(a, str)]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: expected one of {allowed}, got {value!r}{hint}")
    return value


def _coerce_container(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        (inner, *_) = get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    kt, vt = get_args(tp) or (Any, Any)
    return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, int, float (an int or a YAML-1.1 string like "1e-4" is taken) or str: no other conversion."""
    ok = {bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}[tp]
    if ok(value):
        return float(value) if tp is float else value
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    what = "bool (true/false)" if tp is bool else tp.__name__
    raise ConfigError(f"{key}: expected {what}, got {value!r} ({type(value).__name__})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int→float only. Returns the checked value."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if origin in (list, tuple, dict):
        return _coerce_container(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return build(tp, value, prefix=key)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, key)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls: type, mapping: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``mapping``; unknown keys and bad types raise ConfigError."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'{_suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-able) of a config dataclass."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[str, Any]:
    """``"grpo.group_size=8"`` → ("grpo.group_size", 8). The value is parsed as YAML (so 1e-5, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any, cls: type) -> None:
    """Set ``tree[a][b][c] = value`` for key ``a.b.c``, checking each part against dataclass ``cls``."""
    parts = key.split(".")
    node, node_cls, walked = tree, cls, []
    for i, part in enumerate(parts):
        walked.append(part)
        dotted = ".".join(walked)
        names = {f.name: f for f in dataclasses.fields(node_cls)} if node_cls else {}
        if node_cls is not None and part not in names:
            raise ConfigError(f"unknown config key '{dotted}'{_suggest(part, names)}")
        if i == len(parts) - 1:
            node[part] = value
            return
        hint = typing.get_type_hints(node_cls)[part]
        node_cls = hint if dataclasses.is_dataclass(hint) else None
        if node_cls is None and get_origin(hint) is not dict:
            raise ConfigError(f"config key '{dotted}' is not a section; cannot set '{key}'")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}' is not a section; cannot set '{key}'")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; ``include: other.yaml`` (relative path) is merged underneath first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("include", None)
    if base:
        merged = load_yaml(path.parent / base)
        deep_merge(merged, data)
        return merged
    return data


def deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every leaf field: used by ``--help-config`` and the docs test."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
