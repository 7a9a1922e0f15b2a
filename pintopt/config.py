"""Run configuration: TOML sections overridden by command-line flags, validated into dataclasses.

Sections ``[data]``, ``[model]``, ``[train]``, ``[checkpoint]`` hold the options every method
shares (declared in :mod:`pintopt.options`); each method may add its own section named after it
(``[pint]``, ...), declared as an ``Options`` dataclass in its module and registered in
:mod:`pintopt.methods`. Every field carries its help text, so the CLI flags and
``docs/options.md`` are generated from this one place.

Any bad value raises :class:`ConfigError` whose message names the option and what was expected.
"""

from __future__ import annotations

import math
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_type_hints

from pintopt.options import (  # noqa: F401 - re-exported: the configuration's vocabulary
    CORE_SECTIONS,
    CheckpointOptions,
    Config,
    DataOptions,
    ModelOptions,
    TrainOptions,
    opt,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def method_sections() -> dict[str, type]:
    """Options dataclass of every registered method, by method name."""
    from pintopt.methods import METHODS

    return {name: cls.Options for name, cls in METHODS.items()}


def _typename(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or a flag string) to the field type ``tp``."""
    text = isinstance(value, str)
    optional = type(None) in getattr(tp, "__args__", ())
    if optional:
        if value is None or (text and value.lower() in ("none", "")):
            return None
        tp = next(a for a in tp.__args__ if a is not type(None))
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
        return value
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


def build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if not isinstance(values, dict):
        raise ConfigError(f"section [{section}] must be a table of options, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown option {section}.{unknown[0]} (valid: {', '.join(sorted(known))})"
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


def make_config(raw: dict[str, Any]) -> Config:
    """Validate a nested mapping ``{section: {key: value}}`` into a :class:`Config`."""
    methods = method_sections()
    if not isinstance(raw, dict):
        raise ConfigError("configuration must be a table of sections")
    unknown = sorted(set(raw) - set(CORE_SECTIONS) - set(methods))
    if unknown:
        valid = ", ".join(list(CORE_SECTIONS) + sorted(methods))
        raise ConfigError(f"unknown config section [{unknown[0]}] (valid: {valid})")
    sections = {
        name: build_section(name, cls, raw.get(name, {})) for name, cls in CORE_SECTIONS.items()
    }
    cfg = Config(**sections)
    name = cfg.train.method
    if name not in methods:
        raise ConfigError(
            f"option train.method: expected one of {', '.join(sorted(methods))}; got {name!r}"
        )
    for other in set(raw) & set(methods) - {name}:
        build_section(other, methods[other], raw[other])  # still validated: a typo is an error
    cfg.method = build_section(name, methods[name], raw.get(name, {}))
    return cfg


def all_sections() -> dict[str, type]:
    return {**CORE_SECTIONS, **method_sections()}


def flag_name(section: str, key: str) -> str:
    """Command-line flag of an option: ``--key`` for shared sections, ``--method-key`` else."""
    stem = key if section in CORE_SECTIONS else f"{section}-{key}"
    return "--" + stem.replace("_", "-")


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
        lines += [f"## [{section}]", "", "| key | flag | default | meaning |", "|---|---|---|---|"]
        for f in fields(cls):
            meta = f.metadata
            extra = f" One of: {', '.join(meta['choices'])}." if meta.get("choices") else ""
            default = f.default if f.default is not MISSING else "(required)"
            lines.append(
                f"| `{f.name}` | `{flag_name(section, f.name)}` | `{default!r}` | "
                f"{meta.get('help', '')}.{extra} |"
            )
        lines.append("")
    return "\n".join(lines)
