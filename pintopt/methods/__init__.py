"""The training methods, one module each, registered by name.

Each entry is a :class:`~pintopt.methods.base.Method` subclass; its ``Options`` dataclass is the
config section ``[name]``. Adding a method is one module plus one line here.
"""

from __future__ import annotations

from pintopt.methods.base import Method
from pintopt.methods.pdadmm import PdadmmTrainer
from pintopt.methods.pint import PintTrainer
from pintopt.methods.serial import DataParallelTrainer, SerialTrainer

METHODS: dict[str, type[Method]] = {
    "serial": SerialTrainer,
    "dataparallel": DataParallelTrainer,
    "pint": PintTrainer,
    "pdadmm": PdadmmTrainer,
}


def summary(name: str) -> str:
    """One line on a method: the first line of its class docstring."""
    doc = (METHODS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else name
