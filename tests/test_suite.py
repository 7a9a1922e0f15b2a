"""Rules the test suite keeps about itself (issue 14 item 9)."""

from __future__ import annotations

import importlib
import inspect

from conftest import REPO


def test_every_hypothesis_test_uses_a_fixed_seed():
    """A property test that fails must fail again on the next run: every ``@given`` test in
    tests/ runs derandomized (conftest's profile, or its own settings) or with ``@seed``."""
    checked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        if "@given" not in path.read_text():
            continue
        module = importlib.import_module(path.stem)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if not getattr(fn, "is_hypothesis_test", False):
                continue
            settings = fn._hypothesis_internal_use_settings
            seeded = getattr(fn, "_hypothesis_internal_use_seed", None) is not None
            assert settings.derandomize or seeded, f"{path.name}::{name} draws a random seed"
            checked.append(name)
    assert checked  # the suite has property tests, and this found them
