"""Argument checks of the public kernel entry points (issue 14, item 6).

Every public kernel ``f`` that a NumPy user calls is a small Python function that checks its
arguments once, here, and then calls the compiled kernel ``f_jit`` (a numba dispatcher). A wrong
argument raises a one-line ``TypeError`` (wrong kind of object, dtype, mixed dtypes) or
``ValueError`` (shape, layout, read-only output, aliasing, activation code) naming the argument
and, for shapes, the shape expected from the other arguments -- instead of numba's page-long
``TypingError`` or, worse, a silent wrong result.

The fast path (all arguments valid) costs about a microsecond per call (measured in
``docs/benchmarks.md#kernels``): identity tests of dtypes, tuple comparisons of shapes and one
flags lookup per array. Only when something is wrong does :func:`diagnose` walk the arguments
again to say what.

:func:`jit_twin` makes the checked name usable from numba code as well: a call of ``f`` inside
an ``@njit`` function compiles to ``f_jit`` (no checks, no Python), so code written against the
public names keeps working in both worlds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import numpy as np
from numba.core.dispatcher import Dispatcher
from numba.extending import overload

F64 = np.dtype(np.float64)
F32 = np.dtype(np.float32)
#: dtypes of the training kernels (activations, residual, dense, losses, updates, regression)
FLOATS = (F64, F32)
#: dtypes of the solver kernels (krylov, fista, admm): float64 only
F64_ONLY = (F64,)

_ND = np.ndarray
_I64 = np.dtype(np.int64)
Shape = tuple[int, ...]


class Spec:
    """Name of a kernel, names and symbolic shapes of its array arguments, for the messages.

    ``arrays`` is a sequence of ``(name, shape)``, ``shape`` a tuple of symbols such as
    ``("L+1", "m", "n")`` or None for any shape; ``outputs`` names the arrays the kernel writes;
    ``dtypes`` are the dtypes it is compiled for.
    """

    __slots__ = ("fn", "names", "syms", "outputs", "dtypes")

    def __init__(self, fn: str, arrays: Sequence[tuple[str, tuple[str, ...] | None]],
                 outputs: Sequence[str] = (), dtypes: tuple[np.dtype, ...] = FLOATS) -> None:
        self.fn = fn
        self.names = tuple(a[0] for a in arrays)
        self.syms = tuple(a[1] for a in arrays)
        self.outputs = frozenset(outputs)
        self.dtypes = dtypes


def _sym(s: tuple[str, ...]) -> str:
    return "(" + ", ".join(s) + (",)" if len(s) == 1 else ")")


def diagnose(spec: Spec, arrs: Sequence[object], shapes: Sequence[Shape | None],
              start: int = 0, dtype: np.dtype | None = None, first: str = "") -> None:
    """Raise the error describing the first invalid array of ``arrs`` (the spec's arrays
    ``start, start + 1, ...``); return if there is none (e.g. a read-only input, or an ndarray
    subclass, which the fast path sends here)."""
    fn = spec.fn
    for k, (a, shape) in enumerate(zip(arrs, shapes)):
        name, sym = spec.names[start + k], spec.syms[start + k]
        if not isinstance(a, _ND):
            raise TypeError(f"{fn}: {name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in spec.dtypes:
            allowed = " or ".join(str(d) for d in spec.dtypes)
            raise TypeError(f"{fn}: {name} has dtype {a.dtype}; this kernel takes {allowed} "
                            f"arrays (np.ascontiguousarray({name}, dtype=np.{spec.dtypes[0]}))")
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(f"{fn}: {name} is {a.dtype} but {first} is {dtype}: the arrays of a "
                            f"call must share one dtype (no mixed precision)")
        if sym is not None and a.ndim != len(sym):
            raise ValueError(f"{fn}: {name} must be {len(sym)}-D, shape {_sym(sym)}; got shape "
                             f"{a.shape}")
        if shape is not None and a.shape != shape:
            want = f"{_sym(sym)} = {shape}" if sym is not None \
                else f"{shape}, the shape of {spec.names[0]}"
            raise ValueError(f"{fn}: shapes do not agree: {name} has shape {a.shape}, expected "
                             f"{want}")
        if not a.flags.c_contiguous:
            why = "an output written through a copy would be lost" if name in spec.outputs \
                else "the kernel reads it row-major"
            raise ValueError(f"{fn}: {name} must be C-contiguous ({why}); pass "
                             f"np.ascontiguousarray({name})")
        if name in spec.outputs and not a.flags.writeable:
            raise ValueError(f"{fn}: {name} is written by the kernel but is read-only")


def shape_of(spec: Spec, i: int, a: object) -> Shape:
    """Shape of array argument ``i`` after checking that it is an array of the spec's ndim, so
    that the other arguments' expected shapes can be computed from it."""
    if a.__class__ is not _ND or a.ndim != len(spec.syms[i]):
        diagnose(spec, (a,), (None,), start=i)
    return a.shape


def arrays(spec: Spec, arrs: Sequence[object], shapes: Sequence[Shape | None],
           dtype: np.dtype | None = None, first: str = "") -> np.dtype:
    """Check the spec's arrays: each a C-contiguous ndarray of the given shape (None: any),
    outputs writeable, all of one dtype among ``spec.dtypes`` (``dtype``, the dtype of the
    argument named ``first``, if given). Returns the dtype."""
    a0 = arrs[0]
    dt = dtype if dtype is not None else a0.dtype if a0.__class__ is _ND else None
    ok = dt is F64 or (dt is F32 and F32 in spec.dtypes)
    if ok:
        for a, s in zip(arrs, shapes):
            if a.__class__ is not _ND or a.dtype is not dt or (s is not None and a.shape != s):
                ok = False
                break
            f = a.flags
            if not (f.c_contiguous and f.writeable):  # read-only inputs: fine, slow path says so
                ok = False
                break
    if not ok:
        if dtype is not None and dtype not in spec.dtypes:
            dtype = None
        diagnose(spec, arrs, shapes, 0, dtype, first)
        dt = arrs[0].dtype if dtype is None else dtype
    return dt


def rows_at_least(a: object, r: int, n: int) -> Shape:
    """The shape a scratch array ``(>= r, n)`` must have to be accepted: its own if it has at
    least ``r`` rows of ``n``, else ``(r, n)`` (for :func:`arrays`)."""
    if isinstance(a, _ND) and a.ndim == 2 and a.shape[0] >= r:
        return (a.shape[0], n)
    return (r, n)


def distinct(fn: str, out: str, a: np.ndarray, others: Sequence[tuple[str, np.ndarray]]) -> None:
    """ValueError if output ``a`` overlaps one of ``others`` (``(name, array)``) where the kernel
    needs them apart. Cheap: arrays can only overlap if they are views of one owner (NumPy points
    ``base`` at the owner), and only then are the memory bounds compared."""
    oa = a.base
    if oa is None:
        oa = a
    for name, b in others:
        ob = b.base
        if (ob is oa or ob is a or b is oa) and np.may_share_memory(a, b):
            raise ValueError(f"{fn}: {out} must not share memory with {name} (it would be "
                             f"overwritten while still being read)")


def act_code(fn: str, act: object, valid: dict[int, str]) -> int:
    """An activation code as an int; ValueError naming the valid codes otherwise."""
    if act.__class__ is int and act in valid:
        return act
    if isinstance(act, Integral) and not isinstance(act, bool) and int(act) in valid:
        return int(act)
    codes = ", ".join(f"{c} ({n})" for c, n in sorted(valid.items()))
    raise ValueError(f"{fn}: unknown activation code {act!r}; valid codes: {codes} "
                     f"(activations.code(name) converts a name)")


def real(fn: str, name: str, v: object) -> float:
    """A real scalar argument as a Python float (TypeError otherwise): the kernels cast it to the
    arrays' dtype once, and one float signature means one compiled specialisation."""
    if v.__class__ is float:
        return v
    if isinstance(v, Real) and not isinstance(v, bool):
        return float(v)
    raise TypeError(f"{fn}: {name} must be a real number, got {type(v).__name__}")


def integer(fn: str, name: str, v: object, lo: int | None = None) -> int:
    """An integer scalar argument (TypeError otherwise; ValueError if below ``lo``)."""
    if v.__class__ is not int:
        if not isinstance(v, Integral) or isinstance(v, bool):
            raise TypeError(f"{fn}: {name} must be an integer, got {type(v).__name__}")
        v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{fn}: {name} must be >= {lo}, got {v}")
    return v


def labels(fn: str, y: object, m: int) -> None:
    """``y`` must be a 1-D integer array of ``m`` labels (their range is checked by the compiled
    kernel, in the loop that reads them, before anything is written)."""
    if y.__class__ is _ND and (y.dtype is _I64 or y.dtype.kind in "iu") and y.shape == (m,):
        return
    if not isinstance(y, _ND):
        raise TypeError(f"{fn}: y must be a NumPy array of integer labels, got {type(y).__name__}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{fn}: y must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (m,):
        raise ValueError(f"{fn}: shapes do not agree: y has shape {y.shape}, expected (m,) = "
                         f"({m},)")


def jitted(fn: str, name: str, f: object) -> None:
    """TypeError unless ``f`` is a numba-compiled function (an operator argument)."""
    if not isinstance(f, Dispatcher):
        raise TypeError(f"{fn}: {name} must be a @numba.njit function, got "
                        f"{type(f).__name__} (see docs/kernels.md, 'Passing operators')")


def args_tuple(fn: str, args: object) -> None:
    """TypeError unless the operator arguments ``args`` are a tuple."""
    if args.__class__ is not tuple and not isinstance(args, tuple):
        raise TypeError(f"{fn}: args must be a tuple (of the operator's arrays), got "
                        f"{type(args).__name__}")


def positive(fn: str, name: str, v: object, strict: bool = True) -> float:
    """A real scalar that must be > 0 (``strict``) or >= 0."""
    v = real(fn, name, v)
    if not (v > 0.0 if strict else v >= 0.0):
        raise ValueError(f"{fn}: {name} must be {'>' if strict else '>='} 0, got {v}")
    return v


def jit_twin(py_fn: Callable, jit_fn: Dispatcher, inline: str = "never") -> None:
    """Let numba compile calls of the checked ``py_fn`` in ``@njit`` code to ``jit_fn``.

    ``inline="always"`` for the kernels that take functions as arguments (krylov, fista): the
    caller then contains the kernel and stays cacheable. The overload needs a function with the
    kernel's exact parameter names (numba rejects ``*args`` there), hence the generated source.
    """
    params = ", ".join(inspect.signature(jit_fn.py_func).parameters)
    ns: dict[str, object] = {"jit_fn": jit_fn}
    exec(f"def impl({params}):\n    return jit_fn({params})\n"  # noqa: S102
         f"def typer({params}):\n    return impl\n", ns)
    overload(py_fn, inline=inline)(ns["typer"])
