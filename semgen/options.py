"""Command options as dataclasses: one generator turns a dataclass into flags, and back (DESIGN.md
convention 3: flags become a dataclass at once and are written beside the outputs as JSON).

    @dataclass(frozen=True, kw_only=True)
    class EvalThing:
        models: str = opt("artifacts", "the model bundle")
        shots: tuple[int, ...] = opt((1, 4), "few-shot sizes")      # --shots 1,4,8
        image: str = opt(REQUIRED, "input PNG")                      # --image is required
        json: bool = opt(False, "print JSON")                        # --json / --no-json

    command(subparsers.add_parser("thing"), EvalThing, run)          # run(EvalThing(...)) on dispatch
    write_options(options, "reports/thing", "thing_options")         # reports/thing/thing_options.json

Field → flag: `--field-name`; bool → --flag/--no-flag; int/float/str typed from the annotation
(`from __future__ import annotations` is fine); `X | None` defaults to None; tuple[int|float|str, ...]
is one comma-separated value (or, with nargs/append, several values). Help shows the default.
No heavy imports here: clients parse their flags with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable

REQUIRED: Any = dataclasses.MISSING  # opt(REQUIRED, ...): the flag must be given (use kw_only dataclasses)
SCALARS = (int, float, str)
_KINDS = {int: "integers", float: "numbers", str: "strings"}


def opt(default: Any = REQUIRED, help: str = "", *, choices: tuple | None = None, metavar: str | None = None,
        parse: Callable[[str], Any] | None = None, nargs: str | None = None, append: bool = False,
        group: str | None = None, required: bool = False, positional: bool = False, flag: str | None = None,
        aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with what its flag needs. `parse`: str -> value instead of the annotation's type;
    `nargs` ("+", "?"): several values (or an optional one); `append`: repeat the flag to add values;
    `group`: fields of one group are mutually exclusive, and `required` makes one of them required;
    `positional`: an argument without `--`; `flag`: the flag's name if not --field-name (e.g. --seed for
    `seeds` with append); `aliases`: more flag names."""
    meta = dict(help=help, choices=choices, metavar=metavar, parse=parse, nargs=nargs, append=append, group=group,
                required=required, positional=positional, flag=flag, aliases=tuple(aliases))
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


PLAIN = opt(None).metadata  # what a field declared without `opt` gets


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_kind(hint: Any) -> tuple[type | None, bool]:
    """(scalar type, whether a tuple of it) of a resolved annotation, `X | None` read as X; None if no flag type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    if hint is bool or hint in SCALARS:
        return hint, False
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in SCALARS:
            return args[0], True
        return None, True  # a tuple of something else: needs `parse`
    return None, False


def comma_separated(kind: type) -> Callable[[str], tuple]:
    """'1,4,16' -> (1, 4, 16); '' -> ()."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",")) if text else ()
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {_KINDS[kind]}, got {text!r}") from None
    parse.__name__ = f"comma-separated {_KINDS[kind]}"  # argparse names the type in its errors
    return parse


def shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls: type,
                help: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """One flag per field of the dataclass `cls`; `help` gives help text to fields declared without `opt`."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = {**PLAIN, **f.metadata}
        kind, many = field_kind(hints[f.name])
        if kind is None and meta["parse"] is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for {hints[f.name]!r}; give opt(..., parse=...)")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        required = default is dataclasses.MISSING
        text = (help or {}).get(f.name, meta["help"]).replace("%", "%%")
        if not required and default not in (None, "", ()):
            text = f"{text} (default: {shown(default).replace('%', '%%')})".lstrip()
        kwargs: dict[str, Any] = {"help": text or None}
        if kind is bool and not many:
            kwargs.update(action=argparse.BooleanOptionalAction, default=False if required else default)
        else:
            kwargs["type"] = meta["parse"] or (comma_separated(kind) if many and not (meta["nargs"] or meta["append"])
                                              else kind)
            kwargs["default"] = None if required or meta["append"] else default
            for key in ("choices", "metavar", "nargs"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if meta["append"]:
                kwargs["action"] = "append"
        target: Any = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
            target.required = target.required or meta["required"]
        elif required and not meta["positional"]:
            kwargs["required"] = True
        if meta["positional"]:
            target.add_argument(f.name, **kwargs)
        else:
            target.add_argument(meta["flag"] or flag_name(f.name), *meta["aliases"], dest=f.name, **kwargs)
    return parser


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass from parsed flags (lists become tuples; an unrepeated append flag keeps the default)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if value is None and f.default is not dataclasses.MISSING:
            value = f.default
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Command:
    """What a parsed command line runs (args.func(args)): run(options), the options made from the flags."""
    options: type
    run: Callable[[Any], int | None]

    def __call__(self, args: argparse.Namespace) -> int | None:
        return self.run(options_from_args(self.options, args))


def command(parser: argparse.ArgumentParser, cls: type, run: Callable[[Any], int | None],
            help: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """`parser` takes the flags of the dataclass `cls`; args.func(args) then calls run(cls(...))."""
    add_options(parser, cls, help)
    parser.set_defaults(func=Command(cls, run))
    return parser


def subcommands(parser: argparse.ArgumentParser, dest: str = "what") -> argparse._SubParsersAction:
    """The parser's subcommands, made on first use (layers add to a shared word, e.g. `bench`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=dest, required=True)


def write_options(options: Any, folder: str | Path, name: str = "options") -> Path:
    """<folder>/<name>.json: the options a command ran with, beside its outputs."""
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(options), indent=2, default=str) + "\n")
    return path


def print_result(result: dict, as_json: bool) -> None:
    """A command's result: one JSON line (`--json`, for scripts), else a `key: value` line each."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
