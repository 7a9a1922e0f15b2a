"""Numba kernels of pintopt, importable as ``pintopt.kernels`` without MPI.

Submodules: activations, dense, residual, losses, krylov, fista, admm, pdadmm (pdADMM's capped
step searches and smooth z update), updates (fused optimiser steps), regression (the co-state
regression of the parallel-in-time method), delay_compensation (DC-ASGD's delay-compensated
gradient). Import the one you need, e.g. ``from pintopt.kernels import residual``; this package
does not import them eagerly.

Where the compiled kernels are cached (``docs/packaging.md``): not next to the sources, as numba
does by default, but in ``cache_dir()``, a per-user directory keyed by the location of this folder
and by the contents of all its sources. Three reasons: a cache written inside an installed package
outlives ``pip uninstall`` (pip removes only the files it installed) and the leftover
``site-packages/pintopt`` folder then shadows a later editable install (issue 16); numba keys
each function on its own file only, so an edit of ``activations.py`` would leave the compiled
copies inlined into ``residual`` stale; and a read-only installation can still cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(os.path.realpath(__file__)).parent
#: Source versions kept per location (the current one included); older ones are deleted.
_KEEP_VERSIONS = 3
#: A sibling version touched this recently may be in use by another process: never deleted.
_IN_USE_SECONDS = 600.0


def _user_cache_home() -> Path:
    """The platform's per-user cache folder (XDG on Linux)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def source_tag(folder: Path | None = None) -> str:
    """Hash of the names and contents of every kernel source (of ``folder``, default this one): any
    edit of any kernel file changes it, so kernels that inline code from another file are
    recompiled too."""
    h = hashlib.sha256()
    for path in sorted((folder or _HERE).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _location() -> str:
    return f"{_HERE.name}-{hashlib.sha256(str(_HERE).encode()).hexdigest()[:16]}"


def _candidates() -> list[tuple[Path, bool]]:
    """Cache roots in order of preference, each with whether it must be private to this user."""
    from numba.core import config

    roots: list[tuple[Path, bool]] = []
    if config.CACHE_DIR:  # the user's NUMBA_CACHE_DIR
        roots.append((Path(config.CACHE_DIR) / "pintopt", False))
    else:
        try:
            roots.append((_user_cache_home() / "pintopt" / "numba", False))
        except (RuntimeError, KeyError):  # no home directory
            pass
    if hasattr(os, "getuid"):
        # Last resort (no writable home, e.g. a container or a compute node): a private folder in
        # the temporary directory. It must be ours alone: numba unpickles what it finds there.
        roots.append((Path(tempfile.gettempdir()) / f"pintopt-{os.getuid()}" / "numba", True))
    return roots


def _usable(root: Path, private: bool, path: Path) -> bool:
    try:
        if private:
            top = root.parent
            top.mkdir(mode=0o700, exist_ok=True)
            st = top.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                return False
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    try:
        os.utime(path)  # marks this version as recently used (see _prune)
    except OSError:
        pass
    return True


def _prune(current: Path) -> None:
    """Delete all but the most recently used source versions of this location."""
    try:
        others = [p for p in current.parent.iterdir() if p.is_dir() and p != current]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    now = time.time()
    for old in others[_KEEP_VERSIONS - 1:]:
        try:
            if now - old.stat().st_mtime > _IN_USE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _remove_in_tree_cache() -> None:
    """Delete the cache files that earlier versions wrote into ``__pycache__`` beside the sources:
    left in an installed package they would outlive its uninstall (see the module docstring)."""
    try:
        entries = list(os.scandir(_HERE / "__pycache__"))
    except OSError:
        return
    for entry in entries:
        if entry.name.endswith((".nbi", ".nbc")):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


_chosen: list[Path | None] = []


def cache_dir() -> Path | None:
    """The folder that holds the compiled kernels of this copy of pintopt, or None when no folder
    of ours is writable (numba then falls back to its own default locations).

    ``$NUMBA_CACHE_DIR/pintopt/<location>/<sources>`` when NUMBA_CACHE_DIR is set, else
    ``~/.cache/pintopt/numba/<location>/<sources>`` (the platform's user cache folder), else
    ``$TMPDIR/pintopt-<uid>/numba/<location>/<sources>``.
    """
    if not _chosen:
        found = None
        tail = Path(_location()) / source_tag()
        for root, private in _candidates():
            if _usable(root, private, root / tail):
                found = root / tail
                _prune(found)
                _remove_in_tree_cache()
                break
        _chosen.append(found)
    return _chosen[0]


def _install_locator() -> bool:
    """Put a numba cache locator for the files of this folder first in numba's list."""
    try:
        from numba.core import caching
    except ImportError:  # numba missing: the kernel modules will say so
        return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    base = getattr(caching, "_CacheLocator", None)
    classes = getattr(impl, "_locator_classes", None)
    if mixin is None or base is None or not isinstance(classes, list):
        return False  # unknown numba internals: numba's default (tests/test_install.py fails)
    if any(getattr(c, "_pintopt_kernels", False) for c in classes):
        return True

    class KernelCacheLocator(mixin, base):
        """Caches the functions of pintopt's kernel files in :func:`cache_dir`."""

        _pintopt_kernels = True

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(cache_dir())

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.realpath(py_file)) != str(_HERE) or cache_dir() is None:
                return None
            return super().from_function(py_func, py_file)

    classes.insert(0, KernelCacheLocator)
    return True


_install_locator()
