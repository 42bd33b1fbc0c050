"""Step options as dataclasses: one declaration gives the flag, its help, its default and its place in the manifest.

A step's options are a dataclass whose fields are made with `option(...)`. The command line is generated from
it (`--<prefix>-<field>`, the default and unit in the help), the step is built from the filled dataclass, and the
output's manifest records every field that changes what the output holds, so a new option cannot be left out
of the resume check by forgetting to list it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from filters.errors import UsageError

__all__ = ["UsageError", "option", "at_least", "add_arguments", "from_args", "output_options", "normalise_path"]


def option(default: Any, help: str, *, changes_output: bool = True, path: bool = False, unit: str = "",
           choices: tuple | None = None, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, minimum: float | None = None, switch: bool = False) -> Any:
    """A dataclass field that is also a command-line flag.

    `changes_output`: recorded in the manifest and checked on resume (False for threads, batch sizes, retries);
    `path`: normalised to an absolute path (local) before it is recorded; `flag`: the full flag name when the
    prefixed field name is not the right one; `parse`: converts the flag's text (default: from the type);
    `minimum`: smaller values are refused by the parser, with one line naming the flag; `switch`: a flag that
    takes no value and turns a False default on.
    """
    meta = {"help": help, "changes_output": changes_output, "path": path, "unit": unit, "choices": choices,
            "flag": flag, "parse": parse, "metavar": metavar, "minimum": minimum, "switch": switch}
    return dataclasses.field(default=default, metadata={"option": meta})


def _base_type(annotation: Any) -> type:
    """`int` for `int`, `int | None` and `Optional[int]`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _fields(config_class: type) -> list[tuple[dataclasses.Field, dict, type]]:
    hints = typing.get_type_hints(config_class)
    return [(f, f.metadata["option"], _base_type(hints[f.name]))
            for f in dataclasses.fields(config_class) if "option" in f.metadata]


def flag_name(prefix: str, field: dataclasses.Field) -> str:
    meta = field.metadata["option"]
    return meta["flag"] or f"--{prefix}-{field.name}".replace("_", "-").replace("---", "--")


def dest(prefix: str, field: dataclasses.Field) -> str:
    return flag_name(prefix, field).lstrip("-").replace("-", "_")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def at_least(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    """An argparse `type` that reads `kind` and refuses values under `minimum`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {getattr(kind, '__name__', 'value')}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser, title: str, config_class: type, prefix: str) -> None:
    """One argument group with a flag per option of `config_class`."""
    group = parser.add_argument_group(title)
    for field, meta, kind in _fields(config_class):
        default = field.default
        if meta.get("switch"):
            group.add_argument(flag_name(prefix, field), dest=dest(prefix, field), action="store_true",
                               help=meta["help"].replace("%", "%%"))
            continue
        shown = "" if default is None else f"{default}{(' ' + meta['unit']) if meta['unit'] else ''}"
        help_text = meta["help"] + (f" (default: {shown})" if shown != "" else "")
        parse = meta["parse"] or (_parse_bool if kind is bool else kind)
        if meta["minimum"] is not None:
            parse = at_least(parse, meta["minimum"])
        group.add_argument(flag_name(prefix, field), dest=dest(prefix, field), type=parse, default=default,
                           choices=meta["choices"], metavar=meta["metavar"], help=help_text.replace("%", "%%"))


def from_args(config_class: type, args: argparse.Namespace, prefix: str):
    """The config filled from parsed flags."""
    return config_class(**{f.name: getattr(args, dest(prefix, f)) for f, _, _ in _fields(config_class)})


def normalise_path(value: str | None) -> str | None:
    """The same folder given relative or absolute, or with a trailing slash, is the same. URLs, Hub ids and words
    such as `download` (anything that is not an existing local path) are kept as they are, so the record does not
    depend on the folder a command is run from."""
    if value is None or "://" in value:
        return value.rstrip("/") if value else value
    return os.path.abspath(value) if os.path.exists(value) else value


def output_options(config: Any, prefix: str) -> dict[str, Any]:
    """The options of `config` that change what the output holds, by flag name: the manifest's record."""
    recorded = {}
    for field, meta, _ in _fields(type(config)):
        if meta["changes_output"]:
            value = getattr(config, field.name)
            value = normalise_path(value) if meta["path"] else value
            recorded[flag_name(prefix, field)] = json.loads(json.dumps(value))  # as the manifest reads it back
    return recorded
