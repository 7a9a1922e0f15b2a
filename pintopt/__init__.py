"""pintopt: layer- and time-parallel training of neural networks on MPI.

The numerical kernels live in the top-level ``kernels/`` folder (the design card asks for it) and
install as ``pintopt.kernels``. See ``docs/`` for the user guide.
"""

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _map_source_kernels() -> None:
    # Run from a source checkout (cwd on sys.path shadows the installed package), the sibling
    # kernels/ folder is not inside pintopt/; map it to pintopt.kernels the way setup.cfg does.
    here = _Path(__file__).resolve().parent
    src = here.parent / "kernels"
    if (here / "kernels").is_dir() or not (src / "__init__.py").is_file():
        return
    if "pintopt.kernels" in _sys.modules:
        return
    spec = _ilu.spec_from_file_location(
        "pintopt.kernels", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    module = _ilu.module_from_spec(spec)
    _sys.modules["pintopt.kernels"] = module
    spec.loader.exec_module(module)


_map_source_kernels()


def __getattr__(name: str):
    # ``pintopt.run`` without importing the methods (and numba) at ``import pintopt``
    if name == "run":
        from pintopt.api import run

        return run
    raise AttributeError(f"module 'pintopt' has no attribute {name!r}")
