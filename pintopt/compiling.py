"""Noticing numba compiling the kernels (issue 16: "say once when kernels are being compiled and how
long that takes").

The first run after an install or an update of the kernel sources compiles every kernel it calls
(tens of seconds); later runs load the machine code from the cache (``pintopt.kernels.cache_dir()``)
and compile nothing. numba announces each real compilation -- not a load from its cache -- with the
event ``numba:compile``; :class:`CompileWatch` listens to it for the duration of a run, calls
``on_first`` when the first compilation starts, and adds up the time spent compiling (nested
compilations of the functions a kernel calls are counted once, inside their caller's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class CompileWatch:
    """Context manager: ``seconds`` spent compiling and ``count`` of kernels compiled while it is
    active, in any thread (numba compiles under one global lock, so compilations never overlap)."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.on_first = on_first
        self.seconds = 0.0
        self.count = 0
        self._depth = 0
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._listener: Any = None

    @property
    def active(self) -> bool:
        """A compilation is in progress."""
        return self._depth > 0

    def _start(self) -> None:
        first = False
        with self._lock:
            if self._depth == 0:
                self._t0 = time.perf_counter()
                first = self.count == 0
                self.count += 1
            self._depth += 1
        if first and self.on_first is not None:
            self.on_first()

    def _end(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._t0

    def __enter__(self) -> CompileWatch:
        from numba.core import event

        watch = self

        class _Listener(event.Listener):
            def on_start(self, ev: Any) -> None:
                watch._start()

            def on_end(self, ev: Any) -> None:
                watch._end()

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc: Any) -> None:
        from numba.core import event

        event.unregister("numba:compile", self._listener)
