"""TOML values to the typed fields of a spec dataclass, and ``--set KEY=VALUE`` overrides.

Every error names where the value came from (the file, or the ``--set`` option)
and the key, and shows how to write it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from tuner.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["build", "origin_of", "parse_override", "set_dotted", "toml_text"]

# A dataclass whose fields are not fixed (the [search.NAME] tables) brings its own builder.
Builder = Callable[[Any, str, str, dict[str, str]], Any]


def parse_override(text: str, root: type | None = None) -> tuple[str, Any]:
    """Parse one ``--set KEY=VALUE``; the value is read as TOML, else kept as a string.

    A string key keeps the text as given: ``data.dir=2024`` names a folder, not a number.
    ``root`` is the spec dataclass that says which keys are strings.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set {text!r} is not KEY=VALUE; write it like --set train.epochs=2")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw
    is_str = root is not None and _hint_at(root, key) is str
    return key, raw if is_str and not isinstance(value, str) else value


def _hint_at(root: type, key: str) -> Any:
    """The type of the spec field at a dotted key, or None when there is none."""
    node: Any = root
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints or part == "spec_file":
            return None
        node = hints[part]
    return node


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put ``value`` at the dotted ``key`` of nested TOML tables, making tables as needed."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"{where}: {part!r} is a value, not a section; check the key")
        node = child
    node[parts[-1]] = value


def origin_of(key: str, origins: dict[str, str], where: str) -> str:
    """Where the value at ``key``, or any key inside it, came from."""
    if key in origins:
        return origins[key]
    return next((o for k, o in origins.items() if k.startswith(key + ".")), where)


def build(
    cls: type,
    raw: Any,
    where: str,
    prefix: str,
    origins: dict[str, str] | None = None,
    builders: dict[type, Builder] | None = None,
) -> Any:
    """A ``cls`` instance from TOML data; missing keys keep the dataclass defaults.

    Args:
        cls: the dataclass to build.
        raw: its TOML table.
        where: the file, named in errors.
        prefix: the dotted key of ``raw`` followed by a dot (``""`` at the top).
        origins: the ``--set`` option behind each dotted key that one set.
        builders: dataclasses that build themselves from their table.
    """
    origins, builders = origins or {}, builders or {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{origins.get(prefix.rstrip('.'), where)}: [{prefix.rstrip('.')}] must be a table "
            f"of keys; set its keys one by one, like --set {prefix}KEY=VALUE"
        )
    if cls in builders:
        return builders[cls](raw, where, prefix, origins)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "spec_file"}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = prefix + key
        here = origins.get(dotted, where)
        if key not in fields:
            allowed = ", ".join(prefix + f for f in sorted(fields))
            here = origin_of(dotted, origins, where)  # a --set of a key inside it
            raise SpecError(f"{here}: unknown key {dotted!r}; allowed keys here: {allowed}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build(hints[key], value, here, dotted + ".", origins, builders)
        else:
            example = f"{dotted}={toml_text(getattr(defaults, key))}"
            kwargs[key] = convert(hints[key], value, here, dotted, example)
    return cls(**kwargs)


def toml_text(value: Any) -> str:
    """A value as it is written after ``--set KEY=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return str(value) if value != "" else '""'


def convert(hint: Any, value: Any, where: str, key: str, example: str) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        item = args[0]
        if not isinstance(value, list) or (args[-1] is not Ellipsis and len(value) != len(args)):
            of = (
                "strings"
                if item is str or typing.get_origin(item) is typing.Literal
                else "numbers"
            )
            shape = f"a list of {of}" if args[-1] is Ellipsis else f"a list of {len(args)}"
            raise SpecError(
                f"{where}: {key} must be {shape}, got {value!r}; write it like {example}"
            )
        return tuple(convert(item, v, where, key, example) for v in value)
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional keys yet
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if origin is typing.Literal:  # a kind: its type here, its choices in tuner.config.checks
        hint = type(typing.get_args(hint)[0])
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise SpecError(
            f"{where}: {key} must be {kind[hint]}, got {value!r}; write it like {example}"
        )
    return float(value) if hint is float else value
