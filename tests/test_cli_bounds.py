"""Every numeric option at its boundary values (issue 14 item 3): refused with exit 2 and one line
naming the option, or run cleanly (exit 0, a final line) -- never a traceback. The cases come from
the option table itself (``low``/``high``/``low_open`` and, for the context an option needs to have
an effect, its ``requires``), so an option added later is covered without editing this file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
from conftest import subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pintopt.cli import main
from pintopt.config import all_sections, flag_name
from pintopt.options import CORE_SECTIONS, ON, Not

#: Every run is small: two iterations (or a twentieth of an epoch when iterations is the option
#: under test and set to 0), a tiny network, a memory cap that refuses a huge one.
BASE = ["--depth", "4", "--width", "3", "--batch-size", "4", "--iterations", "2", "--epochs",
        "0.05", "--eval-every", "1", "--quiet", "--memory-limit-gb", "0.05"]


def _kind(cls: type, name: str) -> type | None:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args[0] in (int, float) else None


def boundary_values(meta: dict, kind: type) -> list[typing.Any]:
    low, high = meta.get("low"), meta.get("high")
    tiny = 1 if kind is int else 1e-9
    values = []
    if low is not None:
        values += [low - tiny, low] + ([low + tiny] if meta.get("low_open") else [])
    else:
        values += [-1, 0]
    if high is not None:
        values += [high, high + tiny]
    return [kind(v) if kind is int else float(v) for v in values]


def _context(section: str, field: dataclasses.Field, method: str, tmp: str) -> list[str]:
    """Flags that give ``section.field`` an effect (its ``requires``), where they can be given."""
    out = []
    for other, values in field.metadata.get("requires", {}).items():
        osec, okey = other.split(".", 1) if "." in other else (section, other)
        if isinstance(values, Not):  # "anything but": the other option's default is left alone
            continue
        if values == ON:
            value = {"checkpoint": f"{tmp}/ck.h5", "target_accuracy": "0.5"}.get(okey, "1")
        else:
            value = str((values if isinstance(values, tuple) else (values,))[0]).lower()
        out += [flag_name(osec, okey), value]
    return out


def cases() -> list[tuple[str, str, typing.Any]]:
    out = []
    for section, cls in all_sections().items():
        for f in dataclasses.fields(cls):
            kind = _kind(cls, f.name)
            if kind is None:
                continue
            for v in boundary_values(f.metadata, kind):
                out.append((section, f.name, v))
    return out


def argv_for(section: str, key: str, value: typing.Any, tmp: str) -> list[str]:
    method = section if section not in CORE_SECTIONS else "serial"
    field = {f.name: f for f in dataclasses.fields(all_sections()[section])}[key]
    extra = ["--depth", "8"] if method == "pint" else []  # pint's default hierarchy needs 8
    return ["train", *BASE, "--method", method, *extra, *_context(section, field, method, tmp),
            flag_name(section, key), repr(value) if isinstance(value, float) else str(value)]


def check_outcome(status: int, out: str, err: str, section: str, key: str,
                  value: typing.Any) -> None:
    assert "Traceback" not in err, err
    assert status in (0, 2), (status, err)
    lines = [x for x in err.strip().splitlines() if not x.startswith("pintopt: warning:")]
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith("pintopt: error: "), err
    else:
        assert out.strip().splitlines()[-1].startswith("final: "), out
        assert not lines, err


def out_of_range(section: str, key: str, value: typing.Any) -> bool:
    meta = {f.name: f for f in dataclasses.fields(all_sections()[section])}[key].metadata
    low, high = meta.get("low"), meta.get("high")
    return bool((low is not None and (value < low or (meta.get("low_open") and value == low)))
                or (high is not None and value > high))


@pytest.mark.parametrize("section,key,value", cases(),
                         ids=[f"{s}.{k}={v!r}" for s, k, v in cases()])
def test_boundary_value(section, key, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(argv_for(section, key, value, str(tmp_path)))
    captured = capsys.readouterr()
    check_outcome(status, captured.out, captured.err, section, key, value)
    if out_of_range(section, key, value):  # refused, naming the option
        assert status == 2 and f"option {section}.{key}" in captured.err, captured.err


def test_the_table_yields_cases_for_every_numeric_option():
    names = {f"{s}.{k}" for s, k, _ in cases()}
    assert {"train.epochs", "train.iterations", "train.lr", "model.depth", "data.n",
            "checkpoint.keep_last", "train.eval_every"} <= names
    assert ("train", "epochs", 0.0) in cases()  # issue 14 item 3: refused, see below


def test_epochs_zero_is_refused_with_one_line(capsys):
    assert main(["train", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pintopt: error: option train.epochs: expected a value > 0, got 0.0"]


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=st.lists(st.sampled_from([c for c in cases() if c[0] in CORE_SECTIONS]),
                      min_size=2, max_size=4, unique_by=lambda c: (c[0], c[1])))
def test_boundary_values_together(picks, tmp_path_factory, capsys):
    """Several shared options at their boundaries at once (a fixed seed: reproducible)."""
    tmp = tmp_path_factory.mktemp("b")
    argv = ["train", *BASE]
    for section, key, value in picks:
        argv += [flag_name(section, key), repr(value) if isinstance(value, float) else str(value)]
    capsys.readouterr()
    status = main(argv + ["--checkpoint", str(tmp / "ck.h5")]
                  if any(k == "checkpoint_every" for _, k, _ in picks) else argv)
    captured = capsys.readouterr()
    check_outcome(status, captured.out, captured.err, "", "", None)
    if any(out_of_range(*p) for p in picks):
        assert status == 2


def test_epochs_zero_under_mpiexec_is_one_line(mpiexec):
    """Issue 14 item 3: under ``mpiexec -n 2 ... --method pint`` it was 56 lines and 4
    tracebacks."""
    out = subprocess.run(
        ["timeout", "300", mpiexec, "-n", "2", sys.executable, "-m", "pintopt", "train",
         "--method", "pint", "--epochs", "0"],
        capture_output=True, text=True, timeout=330, env=subprocess_env())
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "pintopt: error: option train.epochs: expected a value > 0, got 0.0"]
