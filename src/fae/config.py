"""Typed configuration: dataclass schemas, YAML files and ``key=value`` overrides.

Every config in FAE is a (nested) dataclass. ``load_config(Schema, path, overrides)`` reads a
YAML file, applies dotted overrides (``train.lr=3e-4``), and validates the result against the
schema: an unknown key or a value of the wrong type raises :class:`ConfigError` naming the
dotted key, before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from fae.errors import ConfigError

T = TypeVar("T")

# PyYAML implements YAML 1.1, where a float needs a dot: ``1e-4`` would read as the string "1e-4".
# One loader and one dumper for every config file add YAML 1.2's exponent floats, so ``lr: 1e-4``
# is a number while a quoted ``'1e-4'`` (and a string field holding "0.0") stays a string.
_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                             |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                             |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats (``1e-4``)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings :class:`_Loader` would read as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """YAML text -> Python values, with YAML 1.2 floats (the one config reader)."""
    return yaml.load(text, Loader=_Loader)


def yaml_dump(data: Any) -> str:
    """Python values -> YAML text that :func:`yaml_load` reads back unchanged."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (dicts -> dataclasses)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:  # an optional field: its own error names the exact key
            return _coerce(value, members[0], key)
        for arg in members:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def check_choices(cfg: Any, section: str = "") -> None:
    """Raise ConfigError, naming the key, when a ``Literal``-typed field of the dataclass ``cfg``
    holds a value outside its choices. :func:`from_dict` checks this as a file is read; a config
    built in Python (``SamplerConfig(cfg_time="x")``) reaches its ``validate`` without that check,
    so ``validate`` calls this rather than listing the choices a second time."""
    for name, choices in _literal_fields(type(cfg)):
        _coerce(getattr(cfg, name), choices, f"{section}.{name}" if section else name)


@functools.cache
def _literal_fields(schema: type) -> tuple[tuple[str, Any], ...]:
    """(name, Literal type) of each ``Literal`` field of dataclass ``schema``, resolved once per
    class (``get_type_hints`` costs ~0.1 ms, and samplers validate their config on every batch)."""
    hints = typing.get_type_hints(schema)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(schema)
                 if get_origin(hints.get(f.name)) is Literal)


def from_dict(schema: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``schema`` from a plain dict, rejecting unknown keys by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"config '{prefix or schema.__name__}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for name in data:
        if name not in fields:
            raise ConfigError(unknown_key_message(schema, prefix, name))
    kwargs = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        default = _field_default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # A partial section overrides the field's own default (which may differ from the
            # class defaults, e.g. a paper config's TrainConfig), not the bare class.
            value = _deep_merge(to_dict(default), value)
        kwargs[name] = _coerce(value, hints[name], dotted)
    try:
        obj = schema(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"config '{prefix or schema.__name__}': {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def unknown_key_message(schema: type, prefix: str, name: str) -> str:
    """The error for key ``name`` that section ``prefix`` (of type ``schema``) does not have: the
    closest known key as a suggestion, else the keys known there."""
    dotted = f"{prefix}.{name}" if prefix else name
    guess = closest_key(name, known_keys(schema))
    if guess:
        return f"unknown config key '{dotted}'; did you mean '{prefix + '.' if prefix else ''}{guess}'?"
    known = ", ".join(sorted(f.name for f in dataclasses.fields(schema) if f.init))
    return f"unknown config key '{dotted}' (known keys here: {known})"


def known_keys(schema: type, prefix: str = "", _seen: frozenset = frozenset()) -> list[str]:
    """Every dotted key of ``schema`` below ``prefix``: its fields, then the fields of its nested
    sections (``train``, ``train.optim``, ``train.optim.lr``, ...)."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        keys.append(dotted)
        section = _section_type(hints[f.name])
        if section is not None and section not in _seen:
            keys += known_keys(section, dotted, _seen | {schema})
    return keys


def _section_type(tp: Any) -> type | None:
    """The dataclass a field holds (also as ``X | None``), or None."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [arg for arg in get_args(tp) if arg is not type(None)]
        tp = members[0] if len(members) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def closest_key(name: str, known: list[str]) -> str | None:
    """The key of ``known`` (dotted, relative to the section) that ``name`` most likely meant: the
    one deeper key of that very name (a right name in the wrong section: ``lr`` ->
    ``train.optim.lr``), else the closest spelling among the keys of this level and below."""
    same_name = [k for k in known if k.endswith("." + name)]
    if len(same_name) == 1:
        return same_name[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# Field metadata: leave the field out of ``to_dict`` while it holds its default. For sections a
# schema gains that most of its configs never use (the generator's flow sections): run folders
# written before they existed still hold the same config, so they resume instead of restarting.
OMIT_IF_DEFAULT = {"omit_if_default": True}


def to_dict(cfg: Any) -> Any:
    """Plain-python (YAML/JSON-safe) view of a config dataclass (fields marked
    :data:`OMIT_IF_DEFAULT` are left out while they hold their default; reading back restores it)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (f.metadata.get("omit_if_default") and getattr(cfg, f.name) == _field_default(f))}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (the dotted keys of the command line)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({_first_line(e)})") from None
    return key.split("."), value


def _first_line(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML spreads it over several)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


# The configs shipped inside the package (package data): imagenet256/ (the paper), demo/, experiments/.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def config_file(path: str | Path) -> Path:
    """The file a ``--config`` argument names: ``path`` itself when that file exists, else the
    shipped config of that name (``imagenet256/sit_xl1.yaml``), so an installed package needs no
    source checkout. Raises ConfigError when it is neither."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = SHIPPED_CONFIGS / given
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise ConfigError(f"config file '{path}' does not exist (neither a file from here nor a shipped config "
                      f"such as imagenet256/sit_xl1.yaml: see {SHIPPED_CONFIGS})")


# A config file may start from another: ``base: fae_dinov2g.yaml`` reads that file first and lays
# this one over it (sections merge key by key; a list or a value replaces the base's). The name is
# looked up beside the including file first, then as any ``--config`` name (:func:`config_file`).
# Paper variants (FAE-48) state only what differs, so they follow their recipe when it changes.
BASE_KEY = "base"


def read_yaml(path: str | Path) -> dict:
    """The mapping in config file ``path`` (a file, or a shipped config's name: :func:`config_file`),
    with its ``base:`` chain merged in (:data:`BASE_KEY`)."""
    return _with_base(config_file(path), ())


def _with_base(path: Path, seen: tuple[Path, ...]) -> dict:
    """The mapping of ``path`` laid over its base's (recursively); ``seen`` catches a cycle."""
    data = _read_mapping(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file '{path}': '{BASE_KEY}' must name a config file, got {base!r}")
    beside = path.parent / base
    parent = (beside if beside.is_file() else config_file(base)).resolve()
    chain = (*seen, path.resolve())
    if parent in chain:
        raise ConfigError(f"config file '{path}': '{BASE_KEY}: {base}' makes a cycle "
                          f"({' -> '.join(p.name for p in (*chain, parent))}); remove one '{BASE_KEY}'")
    return _deep_merge(_with_base(parent, chain), data)


def _read_mapping(path: Path) -> dict:
    """The top-level mapping of one YAML file (no ``base`` handling)."""
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (is it a binary file?)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_first_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return data


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read ``path`` (optional), apply ``key=value`` overrides, validate against ``schema``."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(schema, data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml_dump(to_dict(cfg)))
