"""Reading a config: its YAML text (aigc.safe_yaml), `--smoke`'s shrink, dotted `key=value` overrides, and
pydantic's findings turned into one UserError naming the file and the dotted key."""

from __future__ import annotations

import dataclasses
import reprlib
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import TypeAdapter, ValidationError

from aigc import safe_yaml
from aigc.config.schema import Config
from aigc.errors import UserError

MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes; anything near this is a mistake or an attack

SMOKE = {
    "data.limit": 48,
    "data.image_size": 32,
    "data.batch_size": 16,
    "train.epochs": 1,
    "tune.max_trials": 2,
    "tune.epochs": 1,
    "tune.retrain_epochs": 1,
    "cv.folds": 2,
}

_CONFIG = TypeAdapter(Config)
_SECTIONS = {name for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)}


def load(path: str | Path | None, overrides: str | list[str] | dict | None = None, smoke: bool = False) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate, and freeze it."""
    return load_text(_read(path) if path else "", str(path) if path else "<defaults>", overrides, smoke)


def load_text(text: str, where: str, overrides: str | list[str] | dict | None = None, smoke: bool = False) -> Config:
    """`load` for a config's text (`where` names it in messages: a file, a run's config.yaml); "" is the defaults."""
    raw = safe_yaml.load(text, where) or {} if text else {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of sections at the top level")
    if smoke:
        raw["smoke"] = True
    if raw.get("smoke") is True:
        _shrink(raw, where)
    # explicit overrides win over the smoke shrink
    for key, value in parse_overrides(overrides).items():
        _set_dotted(raw, key, value, where)
    if "source" in raw:  # a field, but not one a file sets
        raise UserError(f"{where}: {_unknown(('source',))}")
    # An empty section (`train:` with nothing under it) means its defaults.
    raw = {key: value for key, value in raw.items() if value is not None or key not in _SECTIONS}
    try:
        return dataclasses.replace(_CONFIG.validate_python(raw), source=where)
    except ValidationError as error:
        first, *rest = error.errors(include_url=False)
        more = f" (and {len(rest)} more problem{'s' * (len(rest) > 1)})" if rest else ""
        raise UserError(f"{where}: {_problem(first)}{more}") from None


def parse_overrides(overrides) -> dict[str, Any]:
    """'train.epochs=3 data.batch_size=32' (or a list / dict) -> {key: typed value}."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    items = overrides.split() if isinstance(overrides, str) else list(overrides)
    parsed = {}
    for item in items:
        where = f"override {reprlib.repr(item)}"
        item = _text(item, where)
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{where}: expected key=value, e.g. train.epochs=3")
        parsed[key.strip()] = safe_yaml.load(value, where) if value else ""
    return parsed


def _read(path) -> str:
    """The file's text, refusing what no config file is: huge, special, or not UTF-8."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, a FIFO, /dev/zero
            raise UserError(f"config file {path} is not a regular file: pass a YAML file (see configs/)")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"config file {path} not found: pass an existing YAML file (see configs/)") from None
    except OSError as error:
        raise UserError(f"config file {path}: cannot read it ({error.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"config file {path} is larger than {MAX_FILE_BYTES // 1024} KiB; "
                        "a config holds a few sections of settings (see configs/)")
    return _text(data, f"config file {path}")


def _text(data: str | bytes, where: str) -> str:
    """UTF-8 text, or a UserError (a str from argv carries undecodable bytes as surrogates)."""
    try:
        if isinstance(data, bytes):
            return data.decode("utf-8")
        data.encode("utf-8")
        return data
    except UnicodeError as error:
        raise UserError(f"{where}: not valid UTF-8 (at position {error.start}); save or type it as UTF-8") from None


def _shrink(raw: dict, where):
    """Smoke: shrink, never grow; a config already smaller keeps its value (0 stays 0).

    Values of the wrong type are left alone for validation to name.
    """
    for key, value in SMOKE.items():
        section, name = key.split(".")
        if not isinstance(raw.get(section) or {}, dict):
            continue
        current = (raw.get(section) or {}).get(name)
        if current is None or (key == "data.limit" and current == 0):  # limit 0 means all
            _set_dotted(raw, key, value, where)
        elif isinstance(current, int) and not isinstance(current, bool):
            _set_dotted(raw, key, min(current, value), where)


def _set_dotted(raw: dict, key: str, value, where):
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{where}: override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
_KINDS = {"int": "int", "float": "float", "bool": "bool (true or false)", "string": "str",
          "dict": "a mapping", "tuple": "a list", "dataclass": "a mapping"}


def _problem(error: dict) -> str:
    """One pydantic error as '<dotted key> must be ..., got ...'."""
    loc, kind, given = error["loc"], error["type"], error.get("input")
    if loc and loc[-1] == "[key]":  # a bad key of a mapping: its value is not the point
        loc = loc[:-1]
    key = ".".join(str(part) for part in loc)
    if kind in ("unexpected_keyword_argument", "invalid_key"):  # invalid_key: not a string
        return _unknown(loc)
    if kind in _BOUNDS:
        sign, name = _BOUNDS[kind]
        return f"{key} must be {sign} {error['ctx'][name]}, got {given!r}"
    if kind == "literal_error":
        return f"{key} must be one of {error['ctx']['expected']}; got {given!r}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {given!r}"
    if kind in ("string_too_short", "too_short") and isinstance(given, str):
        return f"{key} must not be empty"
    if kind == "value_error":
        return f"{key} {error['ctx']['error']}" if key else str(error["ctx"]["error"])
    stem = kind.removesuffix("_type").removesuffix("_parsing")
    if stem in _KINDS:
        return f"{key} must be {_KINDS[stem]}, got {given!r}"
    return f"{key}: {error['msg']} (got {given!r})"


def _unknown(loc) -> str:
    """'unknown key train.epochz; known keys here: ...', listing the section's fields."""
    section = Config
    for part in loc[:-1]:
        hint = typing.get_type_hints(section)[part]
        section = next(a for a in typing.get_args(hint) if a is not type(None)) if _optional(hint) else hint
    names = sorted(f.name for f in dataclasses.fields(section) if f.name != "source")
    return f"unknown key {'.'.join(map(str, loc))}; known keys here: {', '.join(names)}"


def _optional(hint) -> bool:
    return typing.get_origin(hint) is Union and type(None) in typing.get_args(hint)
