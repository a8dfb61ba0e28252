"""Typed command configurations: one dataclass field makes a flag, a variable and a config-file key.

A command's configuration is a frozen dataclass whose fields are declared with `option(...)`.
From that one declaration come:

- the command-line flag `--max-batch-size` (field `max_batch_size`), with its help text and the
  default printed once;
- the environment variable `FASHIONSTREAM_MAX_BATCH_SIZE`, which suits containers, where
  configuration arrives as environment variables (see deploy/);
- the key `max_batch_size` in a TOML file given with `--config FILE` (or FASHIONSTREAM_CONFIG).

Later sources win: defaults < config file < environment < command line. Every value goes through
the field's own conversion and checks, so a bad value fails the same way wherever it came from,
and the message names where it came from (the flag, the variable or the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

ENV_PREFIX = "FASHIONSTREAM_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

C = TypeVar("C")


class OptionError(ValueError):
    """A value that does not fit its option; the message names where the value came from."""


@dataclass(frozen=True)
class OptionSpec:
    """How one configuration field is presented to users."""

    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # smallest allowed number (inclusive)
    above: float | None = None  # numbers must be greater than this
    metavar: str | None = None
    required: bool = False  # no usable default: the command refuses to start without it
    default_text: str | None = None  # how to describe a default that is not a plain value (None, computed)
    # KEY=VALUE options whose values are file names: kept as text, and shown by --print-config (a
    # file name is not a secret, even where the key is)
    file_values: bool = False


def option(
    default: Any,
    help: str,  # noqa: A002 - the argparse word for it
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    metavar: str | None = None,
    required: bool = False,
    default_text: str | None = None,
    file_values: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    spec = OptionSpec(
        help, tuple(choices) if choices else None, minimum, above, metavar, required, default_text, file_values
    )
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata={"option": spec})
    return dataclasses.field(default=default, metadata={"option": spec})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


# --------------------------------------------------------------------------- fields and kinds


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "str", "int", "float", "bool", "list" (of str), "options" (KEY=VALUE mapping)
    optional: bool  # None is allowed (and means "not set")
    default: Any
    spec: OptionSpec


def _kind(annotation: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool' | 'list' | 'options', None allowed) for a field's type annotation."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0]
    origin = typing.get_origin(annotation) or annotation
    if origin in (dict, Mapping):
        return "options", optional
    if origin in (tuple, list):
        return "list", optional
    for kind in (bool, int, float, str):  # bool first: a bool is also an int
        if origin is kind:
            return kind.__name__, optional
    raise TypeError(f"unsupported option type {annotation!r}")


def fields_of(cls: type) -> list[_Field]:
    """The option fields of a configuration dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(_Field(f.name, kind, optional, default, spec))
    return out


# --------------------------------------------------------------------------- value conversion


def parse_client_options(pairs: Sequence[str], *, text: bool = False) -> dict[str, object]:
    """`["session.timeout.ms=6000", "ack_deadline=60"]` -> {"session.timeout.ms": 6000, "ack_deadline": 60}.

    Numbers become int or float (portable options are validated as numbers; librdkafka takes
    either); anything else stays a string. With `text`, every value stays a string (file names).
    """
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"client option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value if text else _number_or_text(value)
    return options


def _number_or_text(value: str) -> object:
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            continue
    return value


def _convert(field: _Field, raw: object) -> Any:
    """`raw` (text from a flag or variable, or a TOML value) as the field's type, checked."""
    if raw is None:
        if field.optional:
            return None
        raise OptionError("a value is required")
    if field.kind == "options":
        names = field.spec.file_values  # file names stay text: "1e3" is not 1000.0
        if isinstance(raw, Mapping):
            return {str(k): str(v) if names else v for k, v in raw.items()}
        if isinstance(raw, str):  # one variable holds several pairs: "a=1 b=2"
            return parse_client_options(raw.split(), text=names)
        if isinstance(raw, list | tuple):
            return parse_client_options([str(x) for x in raw], text=names)
        raise OptionError(f"expected KEY=VALUE pairs, got {raw!r}")
    if field.kind == "list":
        items = raw.split() if isinstance(raw, str) else raw  # a variable holds several words: "a.png b.png"
        if not isinstance(items, list | tuple) or not items:
            raise OptionError(f"expected one or more values, got {raw!r}")
        return tuple(str(item) for item in items)
    if field.kind == "bool":
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise OptionError(f"{raw!r} is not true or false")
        return lowered in _TRUE
    if field.kind == "str":
        text = str(raw)
        if field.optional and text == "":
            return None
        if field.spec.choices and text not in field.spec.choices:
            raise OptionError(f"{text!r} is not one of {', '.join(field.spec.choices)}")
        return text
    return _convert_number(field, raw)


def _convert_number(field: _Field, raw: object) -> int | float:
    number_type: Callable[[Any], int | float] = int if field.kind == "int" else float
    if isinstance(raw, bool):
        raise OptionError(f"expected a number, got {raw!r}")
    if isinstance(raw, float) and field.kind == "int" and not raw.is_integer():
        raise OptionError(f"expected a whole number, got {raw!r}")
    try:
        value = number_type(raw)
    except (TypeError, ValueError):
        raise OptionError(f"expected {'a whole number' if field.kind == 'int' else 'a number'}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"expected a finite number, got {raw!r}")
    spec = field.spec
    if spec.minimum is not None and value < spec.minimum:
        raise OptionError(f"must be >= {spec.minimum:g}, got {value:g}")
    if spec.above is not None and value <= spec.above:
        raise OptionError(f"must be > {spec.above:g}, got {value:g}")
    return value


# --------------------------------------------------------------------------- argparse


def _default_text(field: _Field) -> str:
    spec = field.spec
    if spec.required:
        return "required"
    if spec.default_text is not None:
        return f"default: {spec.default_text}"
    if field.kind == "bool":
        return "default: on" if field.default else ""
    if field.default is None or field.default == {} or field.default == "":
        return ""
    if isinstance(field.default, tuple):
        return f"default: {' '.join(field.default)}"
    return f"default: {field.default}"


def _help(field: _Field) -> str:
    note = _default_text(field)
    return f"{field.spec.help} ({note})" if note else field.spec.help


def _groups(cls: type) -> list[tuple[str, list[_Field]]]:
    """The option fields of `cls` in titled help sections, by the class that first declares each field.

    A class names its section with a `TITLE` class attribute (classes may share one). Sections of a
    `FIRST` class (the broker's) come first, then the command's own options, then the shared
    groups (model, batching, logging) in the order the command's bases list them.
    """
    mro = cls.__mro__
    declared_by: dict[str, type] = {}  # a field redeclared with another default stays in its first section
    for klass in reversed(mro):
        for name in vars(klass).get("__annotations__", {}):
            declared_by.setdefault(name, klass)
    sections: dict[str, list[_Field]] = {}
    rank: dict[str, tuple[int, int]] = {}
    for field in fields_of(cls):
        klass = declared_by[field.name]
        title = vars(klass).get("TITLE", "options")
        place = (0 if vars(klass).get("FIRST") else 1 if klass is cls else 2, mro.index(klass))
        rank[title] = min(rank.get(title, place), place)
        sections.setdefault(title, []).append(field)
    return sorted(sections.items(), key=lambda item: rank[item[0]])


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per option field of `cls`, in titled sections, plus --config and --print-config.

    Flags default to "not given" (argparse.SUPPRESS), so `load` can tell a flag that was given
    from one that was not and let the environment and the config file fill the rest.
    """
    for title, fields in _groups(cls):
        group = parser.add_argument_group(title)
        for field in fields:
            _add_flag(group, field)
    files = parser.add_argument_group("configuration")
    files.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                       help=f"TOML file of options (keys as the flags, with _ for -; also ${CONFIG_ENV})")  # fmt: skip
    files.add_argument("--print-config", action="store_true",
                       help="print the resolved options as a TOML config file and exit")  # fmt: skip
    parser.epilog = (
        f"Every option can also be set as {ENV_PREFIX}<OPTION> (upper case, dashes as underscores), "
        f"e.g. {ENV_PREFIX}BROKER, or as a key of the --config file. "
        "The command line wins over the environment, which wins over the file."
    )


class _Flags(Protocol):
    """What `_add_flag` needs of a parser or an argument group (argparse has no public name for the latter)."""

    def add_argument(self, *names: str, **settings: Any) -> argparse.Action: ...


def _add_flag(group: _Flags, field: _Field) -> None:
    flag, help_text = flag_name(field.name), _help(field)
    if field.kind == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
    elif field.kind == "list":
        group.add_argument(flag, nargs="+", default=argparse.SUPPRESS, metavar=field.spec.metavar, help=help_text)
    elif field.kind == "options":
        group.add_argument(flag, action="append", default=argparse.SUPPRESS, metavar=_pair_metavar(field),
                           help=help_text + "; repeatable")  # fmt: skip
    else:
        metavar = field.spec.metavar or (None if field.spec.choices else field.name.upper())
        group.add_argument(flag, default=argparse.SUPPRESS, choices=field.spec.choices, metavar=metavar,
                           help=help_text)  # fmt: skip


def _pair_metavar(field: _Field) -> str:
    return field.spec.metavar or ("KEY=FILE" if field.spec.file_values else "KEY=VALUE")


def load(
    cls: type[C],
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> C:
    """Parse `argv`, merge config file and environment under it, and build a `cls`; usage errors exit 2."""
    env = os.environ if environ is None else environ
    args = vars(parser.parse_args(list(argv)))
    fields = fields_of(cls)
    values: dict[str, Any] = {}
    try:
        config_path = args.get("config") or env.get(CONFIG_ENV)
        if config_path:
            values.update(_from_file(fields, Path(config_path)))
        for field in fields:
            name = env_name(field.name)
            if name in env:
                values[field.name] = _checked(field, env[name], f"{name}={env[name]!r}")
        for field in fields:
            if field.name in args:
                values[field.name] = _checked(field, args[field.name], flag_name(field.name))
        missing = [f for f in fields if f.spec.required and not values.get(f.name, f.default)]
        if missing:
            first = missing[0]
            raise OptionError(f"{flag_name(first.name)} (or {env_name(first.name)}) is required: {first.spec.help}")
        config = cls(**values)
    except OptionError as error:
        parser.error(str(error))
    if args.get("print_config"):
        print(to_toml(config), end="")
        parser.exit(0)
    return config


def _checked(field: _Field, raw: object, source: str) -> Any:
    try:
        return _convert(field, raw)
    except OptionError as error:
        raise OptionError(f"{source}: {error}") from None


def _from_file(fields: list[_Field], path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise OptionError(f"config file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise OptionError(f"config file {path} is not valid TOML: {error}") from None
    by_name = {f.name: f for f in fields}
    unknown = sorted(set(document) - set(by_name))
    if unknown:
        raise OptionError(f"config file {path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(by_name)}")
    return {key: _checked(by_name[key], value, f"config file {path}, key {key}") for key, value in document.items()}


# --------------------------------------------------------------------------- printing


def to_toml(config: object) -> str:
    """The option fields of `config` as a TOML document that `--config` reads back; secrets redacted."""
    from fashionstream.pubsub.urls import redact, safe_url

    scalars, tables = [], []
    for field in fields_of(type(config)):
        value = getattr(config, field.name)
        if field.kind == "options":
            if value:
                shown = value if field.spec.file_values else redact(value)
                rows = "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in shown.items())
                tables.append(f"\n[{field.name}]\n{rows}")
            continue
        if isinstance(value, tuple):
            scalars.append(f"{field.name} = [{', '.join(_toml_value(v) for v in value)}]\n")
            continue
        if value is None:
            scalars.append(f"# {field.name} is not set\n")
            continue
        if field.name == "broker":
            value = safe_url(str(value))
        scalars.append(f"{field.name} = {_toml_value(value)}\n")
    return "".join(scalars) + "".join(tables)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def options_markdown(cls: type) -> str:
    """The options of `cls` as a Markdown table for the docs (each row: flag, default, meaning)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for field in (f for _, fields in _groups(cls) for f in fields):
        note = _default_text(field)
        default = note.removeprefix("default: ") if note else ("off" if field.kind == "bool" else "")
        flag = flag_name(field.name)
        if field.kind == "bool":
            flag += f" / --no-{field.name.replace('_', '-')}"
        elif field.kind in ("options", "list"):
            flag += f" {_pair_metavar(field)}" if field.kind == "options" else " ..."
        meaning = field.spec.help.replace("|", "\\|")
        if field.spec.choices:
            meaning += f" ({', '.join(field.spec.choices)})"
        rows.append(f"| `{flag}` | {default} | {meaning} |")
    return "\n".join(rows)
