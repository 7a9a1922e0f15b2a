"""One compiled specialisation per floating type (issue 15: float32 kernels beside float64).

numba compiles a function once per argument type, but a Python float literal in the source is
float64, so generic source promotes float32 arithmetic to float64 (half the SIMD lanes, a
conversion per entry). The kernels therefore build their elementwise functions once per dtype, by
factories whose constants are of that dtype (``activations._scalar_functions``), and
:func:`by_dtype` selects the right one where the dtype is first known.

The selection is an ``overload`` compiled as a separate function (``inline="never"``), like the
plain ``@njit`` helper it replaces; the per-dtype code inside it is inlined by numba's ordinary
``inline="always"`` mechanism. (Inlining an overload at the typed-IR level instead, with
``inline="always"``, triggered numba's ``NumbaIRAssumptionWarning`` SSA check on these functions.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from numba import types
from numba.extending import overload


def by_dtype(impl64: Callable, impl32: Callable, arg: int = 0, **jit_options: object) -> Callable:
    """A function for numba code that compiles as ``impl32`` when argument ``arg`` is a float32
    scalar or array, and as ``impl64`` otherwise, with ``jit_options`` (e.g. ``fastmath``).

    ``impl64`` and ``impl32`` are plain Python functions with the same parameters (typically
    made by one factory per dtype). The returned stub cannot be called from Python; wrap it in an
    ``@njit`` function for that.
    """
    params = list(inspect.signature(impl64).parameters)
    if params != list(inspect.signature(impl32).parameters):
        raise TypeError("by_dtype: the two implementations must have the same parameters")
    p = ", ".join(params)

    def pick(t: types.Type) -> Callable:
        return impl32 if getattr(t, "dtype", t) == types.float32 else impl64

    # numba needs the stub's and the typing function's exact parameter names (no *args).
    ns: dict[str, object] = {"pick": pick}
    exec(f"def stub({p}):\n"  # noqa: S102
         f"    raise NotImplementedError('{impl64.__name__}: for numba-compiled code only')\n"
         f"def typer({p}):\n"
         f"    return pick({params[arg]})\n", ns)
    stub = ns["stub"]
    stub.__name__ = stub.__qualname__ = impl64.__name__
    overload(stub, jit_options=jit_options)(ns["typer"])
    return stub
