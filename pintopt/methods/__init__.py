"""The training methods, one module each, registered by name.

Each entry names the method's ``Options`` dataclass (its config section ``[name]``) and its
:class:`~pintopt.methods.base.Trainer`. Adding a method is one module plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pintopt.methods.pint import PintOptions, PintTrainer
from pintopt.methods.serial import (
    DataParallelOptions,
    DataParallelTrainer,
    SerialOptions,
    SerialTrainer,
)


@dataclass(frozen=True)
class MethodEntry:
    options: type
    trainer: type
    summary: str


METHODS: dict[str, MethodEntry] = {
    "serial": MethodEntry(
        SerialOptions,
        SerialTrainer,
        "serial-in-time SGD/momentum/Adam or Armijo GD (PinT Algorithm 3)",
    ),
    "dataparallel": MethodEntry(
        DataParallelOptions,
        DataParallelTrainer,
        "data-parallel SGD: gradients summed with Allreduce",
    ),
    "pint": MethodEntry(
        PintOptions,
        PintTrainer,
        "parallel-in-time: coarse global prediction, local correction with co-state regression "
        "on S = ranks slices (Parpas & Muir 2019, Algorithm 4)",
    ),
}
