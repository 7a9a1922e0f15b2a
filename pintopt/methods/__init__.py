"""The training methods, one module each, registered by name.

Each entry is a :class:`~pintopt.methods.base.Method` subclass; its ``Options`` dataclass is the
config section ``[name]``. Adding a method is one module plus one line here.
"""

from __future__ import annotations

from pintopt.methods.base import Method
from pintopt.methods.dcasgd import DCASGDTrainer
from pintopt.methods.local_sgd import LocalSGDTrainer
from pintopt.methods.pint import PintTrainer
from pintopt.methods.serial import DataParallelTrainer, SerialTrainer
from pintopt.methods.surrogate import SurrogateTrainer
from pintopt.methods.surrogate_baselines import CGBlockTrainer, DDGTrainer, SSOTrainer

METHODS: dict[str, type[Method]] = {
    "serial": SerialTrainer,
    "dataparallel": DataParallelTrainer,
    "pint": PintTrainer,
    "dcasgd": DCASGDTrainer,
    "localsgd": LocalSGDTrainer,
    "surrogate": SurrogateTrainer,
    "cgblock": CGBlockTrainer,
    "sso": SSOTrainer,
    "ddg": DDGTrainer,
}
