"""pintopt: layer- and time-parallel training of neural networks on MPI.

The numerical kernels live in the top-level ``kernels/`` folder (the design card asks for it) and
install as ``pintopt.kernels``. See ``docs/`` for the user guide.
"""

import importlib as _importlib
import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


class _SourceKernelsFinder:
    """Finds ``pintopt.kernels`` in the checkout's top-level ``kernels/`` folder.

    Run from a source checkout (the current directory on ``sys.path`` shadows any installed
    pintopt), ``kernels/`` is not inside ``pintopt/``; this maps it the way ``package_dir`` in
    setup.cfg does. It is first on ``sys.meta_path`` so that an editable install of another
    checkout cannot answer instead, and lazy so that ``import pintopt`` does not load numba.
    """

    def __init__(self, src: _Path) -> None:
        self.src = src

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "pintopt.kernels":
            return None
        return _ilu.spec_from_file_location(
            fullname, self.src / "__init__.py", submodule_search_locations=[str(self.src)]
        )


def _map_source_kernels() -> None:
    here = _Path(__file__).resolve().parent
    src = here.parent / "kernels"
    if (here / "kernels").is_dir() or not (src / "__init__.py").is_file():
        return  # an installed copy: pintopt/kernels/ is a real subpackage
    if any(type(f).__name__ == _SourceKernelsFinder.__name__ for f in _sys.meta_path):
        return  # importlib.reload(pintopt)
    _sys.meta_path.insert(0, _SourceKernelsFinder(src))


_map_source_kernels()


def __getattr__(name: str):
    # ``pintopt.run`` is loaded on first use, so ``import pintopt`` stays cheap (no numba); by
    # name, so the package root does not import the modules that import it
    if name == "run":
        return _importlib.import_module("pintopt.api").run
    if name == "load":  # a trained network from its checkpoint (pintopt.trained)
        return _importlib.import_module("pintopt.trained").load
    raise AttributeError(f"module 'pintopt' has no attribute {name!r}")
