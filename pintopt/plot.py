"""Pictures of a run's history: ``pintopt plot RUN.h5 -o curves.png`` (issue 15 item 5, issue 16
item 4).

:func:`plot_history` draws the columns of a history (:data:`pintopt.loop.COLUMNS`, one row per
evaluation) in one PNG: the losses (mean batch loss, training and validation loss) and the
accuracies (training and validation) against the iteration and against the wall time, then one
panel per method-specific column (e.g. pint's co-state regression error ``reg_rel_mse``, on a log
scale when positive) and the bytes sent when a method sent any. A panel without a finite value is
left out: a regression run (``n_classes = 0``) records NaN accuracies, and empty accuracy panels
would read as a failed run. matplotlib comes from the ``plot`` extra
(``pip install 'pintopt[plot]'``); without it :class:`MissingMatplotlib` says so.
"""

from __future__ import annotations

import math
import os
from typing import Any

#: Columns drawn in the loss and accuracy panels (the others of ``pintopt.loop.COLUMNS`` are axes).
LOSSES = ("batch_loss", "train_loss", "val_loss")
ACCURACIES = ("train_acc", "val_acc")
_AXES = ("iteration", "epoch", "train_time", "wall_time")


class MissingMatplotlib(ImportError):
    """matplotlib is not installed (the message says how to install it)."""


def _floats(values: list[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def method_columns(history: dict[str, list]) -> list[str]:
    """Columns beyond the shared ones that hold numbers (``bytes`` when any were sent)."""
    out = []
    for name, values in history.items():
        if name in _AXES or name in LOSSES or name in ACCURACIES or not isinstance(values, list):
            continue
        nums = [v for v in _floats(values) if math.isfinite(v)]
        if not nums or (name == "bytes" and not any(nums)):
            continue
        out.append(name)
    return out


def plot_history(history: dict[str, list], out: str | os.PathLike, title: str = "") -> list[str]:
    """Draw ``history`` into the image file ``out`` (format from its suffix, e.g. ``.png``);
    returns the panel titles (panels without a finite value are left out). Raises
    :class:`MissingMatplotlib` without matplotlib and ``ValueError`` for a history without
    evaluations or without a finite value to draw."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingMatplotlib(
            "the plot command needs matplotlib: pip install 'pintopt[plot]' (or pip install "
            "matplotlib)"
        ) from None
    its = _floats(history.get("iteration", []))
    if not its:
        raise ValueError(f"history {title or ''}: no evaluations to draw".replace("  ", " "))
    n = len(its)

    def column(name: str) -> list[float]:
        values = _floats(history.get(name, []))
        return [math.nan] * (n - len(values)) + values[-n:] if values else []

    def drawn(name: str) -> bool:
        return any(math.isfinite(v) for v in column(name))

    wall = column("wall_time")
    extra = method_columns(history)
    panels = [(LOSSES, "loss", its, "iteration"), (ACCURACIES, "accuracy", its, "iteration")]
    if wall:
        panels += [(LOSSES, "loss", wall, "wall time (s)"),
                   (ACCURACIES, "accuracy", wall, "wall time (s)")]
    panels = [p for p in panels if any(drawn(name) for name in p[0])]
    if not panels and not extra:
        raise ValueError(f"history {title or ''}: no finite values to draw".replace("  ", " "))
    rows = (len(panels) + len(extra) + 1) // 2
    fig = Figure(figsize=(11, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    titles = []
    for ax, (names, what, x, xlabel) in zip(axes.flat, panels):
        for name in names:
            if drawn(name):
                ax.plot(x, column(name), marker="." if n < 50 else None, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
        ax.set_title(f"{what} against {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        titles.append(ax.get_title())
    for ax, name in zip(list(axes.flat)[len(panels):], extra):
        y = column(name)
        ax.plot(its, y, marker="." if n < 50 else None, color="tab:purple")
        finite = [v for v in y if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.set_title(f"{name} against iteration")
        ax.grid(alpha=0.3)
        titles.append(ax.get_title())
    for ax in list(axes.flat)[len(panels) + len(extra):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(str(title))
    fig.savefig(out, dpi=100)
    return titles
