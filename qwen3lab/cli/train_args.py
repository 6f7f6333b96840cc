"""Command-line options generated from a training config dataclass (``SFTConfig``, ``GRPOConfig``).

One ``--flag`` per field, named after it (``lora_r`` -> ``--lora-r``), typed from its default:
booleans get ``--x/--no-x``, tuples take several values. Fields without a default are required.
The help text is the comment of the field in the dataclass source, so config and CLI cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re


def _field_help(cls) -> dict[str, str]:
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)", line)
        if m:
            helps[m.group(1)] = m.group(2)
    return helps


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        h = helps.get(f.name, "")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=f.name != "model", default=None, metavar="X", help=h or "required")
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=(h + " " if h else "") + "(default: %(default)s)")
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="+", default=f.default, metavar="X",
                                help=(h + " " if h else "") + f"(default: {' '.join(map(str, f.default))})")
        else:
            kind = type(f.default) if f.default is not None else str
            if f.type in ("int | None",):
                kind = int
            parser.add_argument(flag, type=kind, default=f.default, metavar="X",
                                help=(h + " " if h else "") + "(default: %(default)s)")


def config_from_args(cls, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    return cls(**values)
