"""Run configuration: TOML sections overridden by command-line flags, validated into dataclasses.

Sections ``[data]``, ``[model]``, ``[train]``, ``[checkpoint]`` hold the options every method
shares (declared in :mod:`pintopt.options`); each method may add its own section named after it
(``[pint]``, ...), declared as an ``Options`` dataclass in its module and registered in
:mod:`pintopt.methods`. Every field carries its help text, so the CLI flags and
``docs/options.md`` are generated from this one place.

Any bad value raises :class:`ConfigError` whose message names the option and what was expected.
Values keep their TOML types: a string where a number or a boolean is expected (``lr = "0.01"``)
is refused; only command-line flags, strings by nature, are converted (:class:`FlagValue`).
:func:`ineffective_options` lists the options a user set that have no effect in the rest of the
configuration (the CLI warns about them); :func:`to_toml` writes a configuration back as a TOML
file that ``--config`` reads.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_type_hints

from pintopt.options import (  # noqa: F401 - re-exported: the configuration's vocabulary
    CORE_SECTIONS,
    ON,
    CheckpointOptions,
    Config,
    DataOptions,
    ModelOptions,
    Not,
    TrainOptions,
    opt,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class FlagValue(str):
    """A value typed on the command line: text, converted to the option's type (a value from a
    TOML file or a Python mapping keeps its type and is refused when it is the wrong one)."""


def method_sections() -> dict[str, type]:
    """Options dataclass of every registered method, by method name (imports every method)."""
    from pintopt.methods import METHODS

    return {name: cls.Options for name, cls in METHODS.items()}


def method_options(name: str) -> type:
    """Options dataclass of the registered method ``name`` (imports that method only)."""
    from pintopt.methods import METHODS

    return METHODS[name].Options


def method_ignores(name: str) -> tuple[str, ...]:
    """Shared options (``"section.key"``) the registered method ``name`` does not read
    (``Method.ignores``; imports that method only)."""
    from pintopt.methods import METHODS

    return tuple(getattr(METHODS[name], "ignores", ()))


def _typename(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the field type ``tp``: a :class:`FlagValue` from its text, anything
    else only when it already has the type (an int where a float is expected is a float)."""
    optional = type(None) in getattr(tp, "__args__", ())
    if optional:
        tp = next(a for a in tp.__args__ if a is not type(None))
        text_ok = isinstance(value, FlagValue) or (tp is str and isinstance(value, str))
        if value is None or (text_ok and value.lower() in ("none", "")):
            return None
    text = isinstance(value, FlagValue)
    if isinstance(value, str) and not text and tp is not str:
        what = {bool: "true or false", int: "an integer"}.get(tp, "a number")
        try:
            _coerce(FlagValue(value), tp, where)
            hint = " (write it without quotes)"
        except ConfigError:
            hint = ""
        raise ConfigError(f"{where}: expected {what}, got the string {value!r}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("true", "1", "yes", "on"):
            return True
        if text and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, float) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported option type {_typename(tp)}")  # pragma: no cover


def _check(section: str, obj: Any) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        meta, where = f.metadata, f"option {section}.{f.name}"
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(
                f"{where}: expected one of {', '.join(meta['choices'])}; got {value!r}"
            )
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value < low or (meta.get("low_open") and value == low)):
            rel = ">" if meta.get("low_open") else ">="
            raise ConfigError(f"{where}: expected a value {rel} {low:g}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{where}: expected a value <= {high:g}, got {value!r}")


def _shown(name: str) -> str:
    """A name from the user's input as an error shows it: as typed, or quoted with escapes when it
    holds a newline or another control character (an error is one line)."""
    return name if name.isprintable() else repr(name)


def build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if not isinstance(values, dict):
        raise ConfigError(f"section [{section}] must be a table of options, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown option {section}.{_shown(unknown[0])} (valid: {', '.join(sorted(known))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"option {section}.{k}") for k, v in values.items()}
    obj = cls(**kwargs)
    _check(section, obj)
    return obj


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; errors name the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None


def make_config(raw: dict[str, Any], given: set[tuple[str, str]] | None = None) -> Config:
    """Validate a nested mapping ``{section: {key: value}}`` into a :class:`Config`.

    ``given``: the options the user set, as (section, key) (default: every key of ``raw``);
    recorded as ``Config.given`` for :func:`ineffective_options`."""
    from pintopt.methods import METHODS

    methods = sorted(METHODS)  # names; a method is imported when its options are needed
    if not isinstance(raw, dict):
        raise ConfigError("configuration must be a table of sections")
    unknown = sorted(set(raw) - set(CORE_SECTIONS) - set(methods))
    if unknown:
        valid = ", ".join(list(CORE_SECTIONS) + sorted(methods))
        raise ConfigError(f"unknown config section [{_shown(unknown[0])}] (valid: {valid})")
    sections = {
        name: build_section(name, cls, raw.get(name, {})) for name, cls in CORE_SECTIONS.items()
    }
    cfg = Config(**sections)
    name = cfg.train.method
    if name not in methods:
        raise ConfigError(
            f"option train.method: expected one of {', '.join(sorted(methods))}; got {name!r}"
        )
    for other in sorted(set(raw) & set(methods) - {name}):
        build_section(other, method_options(other), raw[other])  # a typo is still an error
    cfg.method = build_section(name, method_options(name), raw.get(name, {}))
    if given is None:
        given = {(sec, key) for sec, values in raw.items() if isinstance(values, dict)
                 for key in values}
    cfg.given = frozenset(given)
    return cfg


def _section_of(cfg: Config, section: str) -> Any:
    return cfg.method if section == cfg.train.method else getattr(cfg, section, None)


def _is_on(value: Any) -> bool:
    return value not in (None, 0, 0.0, False, "none", "")


def _wanted(values: Any) -> str:
    if values == ON:
        return "is set"
    if isinstance(values, Not):
        return "!= " + " and != ".join(_toml_value(v) for v in values.values)
    values = values if isinstance(values, tuple) else (values,)
    return "= " + " or ".join(_toml_value(v) for v in values)


def _requirement_met(value: Any, values: Any) -> bool:
    if values == ON:
        return _is_on(value)
    if isinstance(values, Not):
        return value not in values.values
    return value in (values if isinstance(values, tuple) else (values,))


def ineffective_options(cfg: Config) -> list[str]:
    """One line for each option the user set (``cfg.given``) to a value other than its default
    that has no effect with the rest of ``cfg``, from the ``requires`` and ``disables``
    declarations of the option table (:func:`pintopt.options.opt`) and the shared options the
    chosen method does not read (``Method.ignores``). Defaults are left out, so a complete file
    (``--print-config``) passed back raises no warning."""
    sections = {sec: _section_of(cfg, sec) for sec in [*CORE_SECTIONS, cfg.train.method]}
    disabled: dict[str, str] = {}
    for other in method_ignores(cfg.train.method):
        disabled[other] = f"train.method = {_toml_value(cfg.train.method)}"
    for sec, obj in sections.items():
        for f in fields(obj):
            value = getattr(obj, f.name)
            for other in f.metadata.get("disables", ()):
                if _is_on(value):
                    disabled.setdefault(other, f"{sec}.{f.name} = {_toml_value(value)}")
    lines = []
    for sec, obj in sections.items():
        for f in fields(obj):
            if (sec, f.name) not in cfg.given or getattr(obj, f.name) == f.default:
                continue
            where = f"{sec}.{f.name}"
            if where in disabled:
                lines.append(f"option {where} has no effect with {disabled[where]}")
                continue
            for other, values in f.metadata.get("requires", {}).items():
                osec, okey = other.split(".", 1) if "." in other else (sec, other)
                value = getattr(sections.get(osec), okey, None)
                if not _requirement_met(value, values):
                    lines.append(
                        f"option {where} has no effect unless {osec}.{okey} {_wanted(values)} "
                        f"(here {_toml_value(value)})"
                    )
                    break
    return lines


def _toml_value(value: Any) -> str:
    """A TOML literal (None, which TOML lacks, as the word none)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def to_toml(cfg: Config, header: str = "") -> str:
    """The whole configuration as a TOML file that ``--config`` reads back to the same
    configuration: every option of the shared sections and of the chosen method's section, each
    under a comment with its help text. Unset options (None) are written as comments."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, obj in [*((s, getattr(cfg, s)) for s in CORE_SECTIONS),
                         (cfg.train.method, cfg.method)]:
        if obj is None:
            continue
        lines += ["", f"[{section}]"]
        for f in fields(obj):
            meta = f.metadata
            text = meta.get("help", "")
            if meta.get("choices"):
                text += f" ({' | '.join(meta['choices'])})"
            lines += textwrap.wrap(text, 98, initial_indent="# ", subsequent_indent="# ")
            value = getattr(obj, f.name)
            if value is None:
                lines.append(f"# {f.name} = (unset)")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def all_sections() -> dict[str, type]:
    return {**CORE_SECTIONS, **method_sections()}


def flag_name(section: str, key: str) -> str:
    """Command-line flag of an option: ``--key`` for shared sections, ``--method-key`` else."""
    stem = key if section in CORE_SECTIONS else f"{section}-{key}"
    return "--" + stem.replace("_", "-")


def _have(options: tuple[str, ...]) -> str:
    return "has" if len(options) == 1 else "have"


def options_markdown() -> str:
    """The reference table of every option (docs/options.md is generated from this)."""
    lines = [
        "# Options",
        "",
        "Every option can be set in a TOML file (`--config run.toml`, section and key as "
        "below) and overridden by its flag. Generated from `pintopt/config.py` by "
        "`python -m pintopt options`; a test keeps this page in sync.",
        "",
    ]
    for section, cls in all_sections().items():
        lines += [f"## [{section}]", ""]
        ignored = method_ignores(section) if section not in CORE_SECTIONS else ()
        if ignored:
            lines += [f"With `train.method = \"{section}\"`, "
                      f"{', '.join(f'`{o}`' for o in ignored)} {_have(ignored)} no effect.", ""]
        lines += ["| key | flag | default | meaning |", "|---|---|---|---|"]
        for f in fields(cls):
            meta = f.metadata
            extra = f" One of: {', '.join(meta['choices'])}." if meta.get("choices") else ""
            needs = [f"`{o}` {_wanted(v)}" for o, v in meta.get("requires", {}).items()]
            if needs:
                extra += f" Has an effect only when {' and '.join(needs)}."
            if meta.get("disables"):
                extra += (f" When on, {', '.join(f'`{o}`' for o in meta['disables'])} "
                          f"{_have(meta['disables'])} no effect.")
            default = f.default if f.default is not MISSING else "(required)"
            lines.append(
                f"| `{f.name}` | `{flag_name(section, f.name)}` | `{default!r}` | "
                f"{meta.get('help', '')}.{extra} |"
            )
        lines.append("")
    return "\n".join(lines)
