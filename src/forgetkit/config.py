"""Typed configs: dataclasses built from YAML/dicts with strict key checking, overrides, and dumping.

Each config field carries its help text in ``metadata["help"]`` (as peft's configs do); ``forgetkit config``
prints them. Unknown keys are errors with a suggestion, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from .errors import ForgetkitError

RENAMED_KEYS = {"protocol.forget_per_task": "protocol.classes_per_request",
                "protocol.num_tasks": "protocol.num_requests", "protocol.tasks": "protocol.requests"}
"""run-config keys of forgetkit 0.1 -> their names now; the old ones are read, in files and overrides, with a
warning, for one release"""


def _warn_renamed(old: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in forgetkit 0.3; use {RENAMED_KEYS[old]}",
                  FutureWarning, stacklevel=3)


def coerce(value: Any, tp, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (the subset of typing the configs use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:  # a choice: the error lists them (forgetkit config prints them too)
        choices = typing.get_args(tp)
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in choices:
            value = str(value)  # `precision: 32` in YAML is a number, its choice the string "32"
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise ForgetkitError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ForgetkitError as err:
                errors.append(str(err))
        raise ForgetkitError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ForgetkitError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        if hasattr(tp, "parse"):  # a union of configs that picks its own class (the method section, by name)
            return tp.parse(value, where.removeprefix("config."))
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ForgetkitError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ForgetkitError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ForgetkitError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ForgetkitError(f"{where} must be a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ForgetkitError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ForgetkitError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ForgetkitError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict | None, where: str = "config"):
    """Build dataclass ``cls`` from a dict, recursively; unknown keys raise with a 'did you mean' hint."""
    data = dict(data or {})
    section = where.removeprefix("config").lstrip(".")
    for key in list(data):
        old = f"{section}.{key}" if section else key
        if old in RENAMED_KEYS:
            new = RENAMED_KEYS[old].rsplit(".", 1)[-1]
            if new in data:
                raise ForgetkitError(f"{old} and {RENAMED_KEYS[old]} are one setting; keep {RENAMED_KEYS[old]}")
            _warn_renamed(old)
            data[new] = data.pop(key)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ForgetkitError(f"unknown config key '{where}.{key}'{hint}")
    kwargs = {name: coerce(data[name], hints[name], f"{where}.{name}") for name in names if name in data}
    return cls(**kwargs)


def check_choices(obj, where: str) -> None:
    """Refuse a value outside its field's ``Literal`` choices in a config built directly in Python (``from_dict``
    checks them for configs read from YAML and overrides)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if typing.get_origin(hints[f.name]) is typing.Literal:  # kept as coerced (`precision=32` is "32")
            setattr(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}"))


def config_fields(cls) -> list[dataclasses.Field]:
    """A config dataclass's fields, its own first and then those it inherits (``TrainConfig``'s steps before the
    runtime fields of ``RuntimeConfig``): the order ``forgetkit config`` lists and ``config.yaml`` saves them in."""
    own = set(vars(cls if isinstance(cls, type) else type(cls)).get("__annotations__", {}))
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)


def to_dict(obj) -> Any:
    """Dataclass (nested) -> plain dict/list values, suitable for YAML and JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in config_fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ForgetkitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ForgetkitError(f"{path} is not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(data, dict):
        raise ForgetkitError(f"{path} must hold a mapping of config sections")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML: numbers, lists, booleans)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ForgetkitError(f"override '{item}' must look like section.key=value (e.g. train.steps=200)")
        dotted, raw = item.split("=", 1)
        if dotted in RENAMED_KEYS:
            _warn_renamed(dotted)
            dotted = RENAMED_KEYS[dotted]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        keys = dotted.split(".")
        for key in keys[:-1]:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[keys[-1]] = value
        for old, new in RENAMED_KEYS.items():  # an override of a setting wins over the file's old name for it
            if new == dotted:  # a rename keeps the section (config.RENAMED_KEYS)
                node.pop(old.rsplit(".", 1)[-1], None)
    return data


def describe(cls, prefix: str = "", defaults=None) -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every field of a config dataclass, nested sections flattened.

    ``defaults`` is the instance whose values are the defaults (a nested section's defaults are those of the parent's
    default for it, e.g. GS-LoRA's rank-4 LoRA, not the nested class's own).
    """
    rows = []
    for f in config_fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        optional = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(optional) == 1 and dataclasses.is_dataclass(optional[0]) and default is None:
            # an optional section (null = taken from elsewhere): its own fields, under the section's help
            rows.append((key, "None", f.metadata.get("help", "")))
            rows += describe(optional[0], key + ".")
            continue
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key + ".", default if dataclasses.is_dataclass(default) else None)
            continue
        help_text = f.metadata.get("help", "")
        if typing.get_origin(tp) is typing.Literal:
            help_text = f"{help_text} [choices: {', '.join(map(str, typing.get_args(tp)))}]".lstrip()
        rows.append((key, repr(to_dict(default)), help_text))
    return rows


# ---------------------------------------------------------------------------- checks several configs share
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_threads(threads: int, key: str) -> None:
    if threads < 0:
        raise ForgetkitError(f"{key} must be 0 (torch's default, one per core) or a positive number of CPU threads, "
                             f"got {threads}")


def check_device(device: str, key: str) -> None:
    if not DEVICE_PATTERN.fullmatch(device):
        raise ForgetkitError(f"unknown device '{device}' in {key}; use auto, cpu, cuda or cuda:N")
