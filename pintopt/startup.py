"""What the command line does before anything else to start faster (``docs/benchmarks.md``,
section "Startup").

numba finds BLAS (``np.dot``, and the GEMM of :mod:`pintopt.kernels.dense`) in
``scipy.linalg.cython_blas``, a Cython extension module whose table ``__pyx_capi__`` holds the
function pointers. numba imports it when the first compiled kernel is loaded
(``numba.np.arraymath`` checks for BLAS), and importing ``scipy.linalg.cython_blas`` first runs
``scipy/linalg/__init__.py``, which loads all of scipy.linalg and its array-API layer: about a
quarter of a one-iteration run. The extension module needs nothing from that package (it imports
the top-level ``scipy`` only), so :func:`preload_cython_blas` loads it from its file under its
own name; every later ``import scipy.linalg.cython_blas`` -- numba's included -- then finds it in
``sys.modules``.

One side effect keeps this out of ``import pintopt``: until something imports ``scipy.linalg``
the package does not exist, and afterwards it lacks the attribute ``cython_blas`` (``from
scipy.linalg import cython_blas`` and ``import scipy.linalg.cython_blas as m`` still work;
``scipy.linalg.cython_blas.x`` after a bare ``import scipy.linalg`` does not). Only
:func:`pintopt.cli.main` calls it, in a process that runs pintopt's code alone.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_NAME = "scipy.linalg.cython_blas"


def preload_cython_blas() -> bool:
    """Load ``scipy.linalg.cython_blas`` without ``scipy.linalg``; True when it did. Does
    nothing (False) when either is loaded already, or when scipy is missing or laid out
    differently (the ordinary import then happens when numba asks)."""
    if _NAME in sys.modules or "scipy.linalg" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("scipy")  # finds the package without running it
        if spec is None or not spec.submodule_search_locations:
            return False
        folder = Path(list(spec.submodule_search_locations)[0]) / "linalg"
        path = next((folder / f"cython_blas{suffix}"
                     for suffix in importlib.machinery.EXTENSION_SUFFIXES
                     if (folder / f"cython_blas{suffix}").is_file()), None)
        if path is None:
            return False
        loader = importlib.machinery.ExtensionFileLoader(_NAME, str(path))
        module_spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
        if module_spec is None:
            return False
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[_NAME] = module
        try:
            loader.exec_module(module)
            if not hasattr(module, "__pyx_capi__"):  # not the table numba reads
                raise ImportError(f"{path} has no __pyx_capi__")
        except BaseException:
            del sys.modules[_NAME]
            raise
    except Exception:  # noqa: BLE001 - an optimisation: any failure leaves the ordinary import
        return False
    return True
