"""The training methods, one module each, registered by name.

Each entry names a :class:`~pintopt.methods.base.Method` subclass as ``"module:Class"``; its
``Options`` dataclass is the config section ``[name]``. Adding a method is one module plus one
line here. A method's module is imported the first time its class is looked up
(``METHODS[name]``), so a run imports the code of its own method only, not every method's
dependencies (a serial run does not load scipy.linalg for pint's regression). Looking at every
method (``METHODS.items()``, the option table, ``--help``) imports them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pintopt.methods.base import Method


class Registry(Mapping):
    """Method classes by name, each imported on first lookup from its ``"module:Class"`` (a class
    object is accepted too). Iterating gives the names without importing anything."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> type[Method]:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            if getattr(entry, "name", name) != name:
                raise RuntimeError(f"method registry: {name!r} names {entry.__qualname__}, whose "
                                   f"name is {entry.name!r}")
            self._entries[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


METHODS: Registry = Registry({
    "serial": "pintopt.methods.serial:SerialTrainer",
    "dataparallel": "pintopt.methods.serial:DataParallelTrainer",
    "pint": "pintopt.methods.pint:PintTrainer",
    "dcasgd": "pintopt.methods.dcasgd:DCASGDTrainer",
    "localsgd": "pintopt.methods.local_sgd:LocalSGDTrainer",
    "surrogate": "pintopt.methods.surrogate:SurrogateTrainer",
    "cgblock": "pintopt.methods.surrogate_baselines:CGBlockTrainer",
    "sso": "pintopt.methods.surrogate_baselines:SSOTrainer",
    "ddg": "pintopt.methods.surrogate_baselines:DDGTrainer",
    "pdadmm": "pintopt.methods.pdadmm:PdadmmTrainer",
})
