"""The training methods, one module each, registered by name.

Each entry is a :class:`~pintopt.methods.base.Method` subclass; its ``Options`` dataclass is the
config section ``[name]``. Adding a method is one module plus one line here.
"""

from __future__ import annotations

from pintopt.methods.base import Method
from pintopt.methods.dcasgd import DCASGDTrainer
from pintopt.methods.pint import PintTrainer
from pintopt.methods.serial import DataParallelTrainer, SerialTrainer

METHODS: dict[str, type[Method]] = {
    "serial": SerialTrainer,
    "dataparallel": DataParallelTrainer,
    "pint": PintTrainer,
    "dcasgd": DCASGDTrainer,
}
