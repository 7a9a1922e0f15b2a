"""Configuration: types, ranges, unknown keys, method sections; TOML types kept (issue 14 item 5);
options without effect (issue 16 item 2); the configuration written back as TOML (issue 16
item 2)."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pintopt.config import (
    ConfigError,
    FlagValue,
    all_sections,
    ineffective_options,
    load_toml,
    make_config,
    options_markdown,
    to_toml,
)
from pintopt.options import ON

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_defaults_and_method_section():
    cfg = make_config({})
    assert cfg.train.method == "serial" and cfg.model.depth == 16
    assert cfg.to_dict()["serial"]["line_search"] is False


@pytest.mark.parametrize("raw,needle", [
    ({"model": {"width": 2.5}}, "model.width: expected an integer"),
    ({"model": {"width": True}}, "model.width: expected an integer"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"lr": float("nan")}}, "finite"),
    ({"train": {"lr": 0}}, "train.lr: expected a value > 0"),
    ({"train": {"momentum": 1.5}}, "train.momentum: expected a value <= 1"),
    ({"train": {"epochs": 0}}, "train.epochs: expected a value > 0"),
    ({"data": {"standardize": "maybe"}}, "expected true or false"),
    ({"data": {"dataset": 3}}, "expected a string"),
    ({"model": {"colour": 1}}, "unknown option model.colour"),
    ({"modle": {}}, "unknown config section [modle]"),
    ({"checkpoi\nt": {}}, "unknown config section ['checkpoi\\nt']"),  # one line, escaped
    ({"model": {"wid\tth": 1}}, "unknown option model.'wid\\tth'"),
    ({"train": 3}, "must be a table"),
    ({"serial": {"armijo_c": 2}}, "serial.armijo_c"),
    ({"train": {"method": "dataparallel"}, "serial": {"bogus": 1}}, "unknown option serial.bogus"),
])
def test_errors_name_the_option(raw, needle):
    with pytest.raises(ConfigError) as info:
        make_config(raw)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text,needle", [
    ('[train]\nlr = "0.01"\n', "option train.lr: expected a number, got the string '0.01'"),
    ('[model]\ndepth = "8"\n', "option model.depth: expected an integer, got the string '8'"),
    ('[data]\nstandardize = "false"\n', "option data.standardize: expected true or false"),
    ('[data]\nn = "none"\n', "option data.n: expected an integer, got the string 'none'"),
    ('[serial]\nline_search = "true"\n', "option serial.line_search: expected true or false"),
])
def test_strings_in_toml_where_numbers_are_expected_are_refused(tmp_path, text, needle):
    """Issue 14 item 5: a TOML file keeps its types; "0.01" is a string, not a number."""
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        make_config(load_toml(path))
    assert needle in str(info.value)
    assert ("without quotes" in str(info.value)) == ("none" not in text)


def test_strings_from_flags_are_coerced():
    cfg = make_config({"model": {"depth": FlagValue("32"), "final_time": FlagValue("2.5")},
                       "data": {"standardize": FlagValue("false"), "n": FlagValue("none")}})
    assert cfg.model.depth == 32 and cfg.model.final_time == 2.5
    assert cfg.data.standardize is False and cfg.data.n is None
    assert type(make_config({"data": {"dataset": FlagValue("ellipses")}}).data.dataset) is str


def test_typed_values_are_kept():
    cfg = make_config({"train": {"lr": 1, "epochs": 2}, "data": {"data_dir": "none"}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.data_dir is None  # a string option: "none" unsets it, from anywhere


# ---- options that have no effect -------------------------------------------------------------

@pytest.mark.parametrize("raw,option", [
    ({"train": {"momentum": 0.5}}, "train.momentum"),
    ({"train": {"decay": 0.1}}, "train.decay"),
    ({"train": {"schedule": "invtime", "step_size": 10}}, "train.step_size"),
    ({"train": {"gamma": 0.1}}, "train.gamma"),
    ({"train": {"iterations": 10, "epochs": 5}}, "train.epochs"),
    ({"train": {"max_rollbacks": 1}}, "train.max_rollbacks"),
    ({"model": {"architecture": "mlp", "scheme": "euler"}}, "model.scheme"),
    ({"model": {"architecture": "mlp", "final_time": 2.0}}, "model.final_time"),
    ({"data": {"pool_size": 4}}, "data.pool_size"),
    ({"data": {"noise": 0.1, "dataset": "mnist"}}, "data.noise"),
    ({"data": {"path": "x.npz"}}, "data.path"),
    ({"data": {"val_fraction": 0.3}}, "data.val_fraction"),
    ({"checkpoint": {"keep_last": 3}}, "checkpoint.keep_last"),
    ({"checkpoint": {"checkpoint_every": 5}}, "checkpoint.checkpoint_every"),
    ({"train": {"method": "pint"}, "pint": {"coarse_check_every": 4}}, "pint.coarse_check_every"),
    ({"serial": {"armijo_grow": 3.0}}, "serial.armijo_grow"),
    ({"serial": {"line_search": True}, "train": {"optimizer": "sgd"}}, "train.optimizer"),
    ({"train": {"method": "dataparallel"}, "dataparallel": {"armijo_c": 0.1}},
     "dataparallel.armijo_c"),
])
def test_an_option_without_effect_is_named(raw, option):
    lines = ineffective_options(make_config(raw))
    assert len(lines) == 1 and lines[0].startswith(f"option {option} has no effect"), lines


@pytest.mark.parametrize("raw", [
    {},
    {"train": {"optimizer": "momentum", "momentum": 0.5}},
    {"train": {"schedule": "step", "step_size": 10, "gamma": 0.1}},
    {"train": {"target_accuracy": 0.9, "method": "pint"}, "pint": {"coarse_check_every": 4}},
    {"model": {"architecture": "resnet", "scheme": "euler"}},
    {"checkpoint": {"checkpoint": "ck.h5", "keep_last": 3}},
    {"data": {"dataset": "mnist", "pool": "max", "pool_size": 4}},
    {"train": {"momentum": 0.9}},  # set to its default: not worth a warning
])
def test_effective_options_are_not_named(raw):
    assert ineffective_options(make_config(raw)) == []


def test_only_options_the_user_gave_are_named():
    raw = {"train": {"momentum": 0.5}}
    assert ineffective_options(make_config(raw, given=set())) == []
    assert ineffective_options(make_config(raw, given={("train", "momentum")}))


def test_every_requirement_names_a_real_option():
    """The declarations are data: every ``requires``/``disables`` target exists."""
    sections = all_sections()
    for name, cls in sections.items():
        for f in dataclasses.fields(cls):
            targets = list(f.metadata.get("requires", {})) + list(f.metadata.get("disables", ()))
            for t in targets:
                sec, key = t.split(".", 1) if "." in t else (name, t)
                assert key in {g.name for g in dataclasses.fields(sections[sec])}, (name, f, t)
            for values in f.metadata.get("requires", {}).values():
                assert values == ON or values is not None


def test_options_page_says_when_an_option_applies():
    page = options_markdown()
    row = next(x for x in page.splitlines() if x.startswith("| `momentum`"))
    assert 'Has an effect only when `optimizer` = "momentum"' in row
    row = next(x for x in page.splitlines() if x.startswith("| `keep_last`"))
    assert "in all" in row and "keep_last - 1 older copies" in row


# ---- the configuration as TOML ---------------------------------------------------------------

def _roundtrip(cfg):
    text = to_toml(cfg, header="a header\nof two lines")
    back = make_config(tomllib.loads(text))
    return text, back


@pytest.mark.parametrize("raw", [
    {},
    {"train": {"method": "pint", "target_accuracy": 0.99}, "pint": {"levels": 3, "coarsen": 2}},
    {"train": {"method": "dataparallel"}, "dataparallel": {"line_search": True}},
    {"data": {"dataset": "mnist", "data_dir": 'a "quoted" dir\\x', "n": 100, "pool": "avg"},
     "checkpoint": {"checkpoint": "run é.h5", "history": "h.csv", "keep_last": 2}},
    {"train": {"lr": 1e-7, "weight_decay": 1e-12, "epochs": 0.5}, "model": {"final_time": 1e300}},
])
def test_configuration_round_trips_through_toml(raw):
    cfg = make_config(raw)
    text, back = _roundtrip(cfg)
    assert back.to_dict() == cfg.to_dict()
    assert text.startswith("# a header\n# of two lines\n")
    assert ineffective_options(make_config(tomllib.loads(text))) == \
        ineffective_options(make_config(raw))  # the file adds no warning of its own


FLOATS = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(lr=FLOATS, decay=FLOATS, gamma=st.floats(1e-9, 1.0), depth=st.integers(1, 10**9),
       seed=st.integers(0, 2**63 - 1), text=st.text(max_size=12))
def test_any_values_round_trip(lr, decay, gamma, depth, seed, text):
    cfg = make_config({"train": {"lr": lr, "decay": decay, "gamma": gamma, "seed": seed},
                       "model": {"depth": depth}, "data": {"path": text or "x"}})
    _, back = _roundtrip(cfg)
    assert back.to_dict() == cfg.to_dict()
    assert math.copysign(1, back.train.lr) == 1
