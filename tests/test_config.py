"""Configuration: types, ranges, unknown keys, method sections."""

from __future__ import annotations

import pytest

from pintopt.config import ConfigError, make_config


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
    ({"data": {"standardize": "maybe"}}, "expected true or false"),
    ({"data": {"dataset": 3}}, "expected a string"),
    ({"model": {"colour": 1}}, "unknown option model.colour"),
    ({"modle": {}}, "unknown config section [modle]"),
    ({"train": 3}, "must be a table"),
    ({"serial": {"armijo_c": 2}}, "serial.armijo_c"),
    ({"train": {"method": "dataparallel"}, "serial": {"bogus": 1}}, "unknown option serial.bogus"),
])
def test_errors_name_the_option(raw, needle):
    with pytest.raises(ConfigError) as info:
        make_config(raw)
    assert needle in str(info.value)


def test_strings_from_flags_are_coerced():
    cfg = make_config({"model": {"depth": "32", "final_time": "2.5"},
                       "data": {"standardize": "false", "n": "none"}})
    assert cfg.model.depth == 32 and cfg.model.final_time == 2.5
    assert cfg.data.standardize is False and cfg.data.n is None
