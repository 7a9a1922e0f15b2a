"""The options of the parallel-in-time method: the config section ``[pint]`` and its
``--pint-*`` flags (help texts are the documentation, generated into docs/options.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pintopt.methods.pint_regression import FEATURES
from pintopt.options import opt


@dataclass
class PintOptions:
    levels: int = opt(
        0,
        "discretisation levels: 1 = single-level (no global prediction), 2 = multilevel with one "
        "coarse model (the paper), L > 2 = nested coarse models, coarsest first; 0 = automatic: "
        "the most levels (at most 4) whose coarsest model still has 4 or more layers, the depth "
        "divisible by coarsen^(levels-1) (1 when there is none)",
        low=0,
    )
    coarsen: int = opt(4, "coarsening factor between levels (must divide the depth)", low=2)
    coarse_iterations: int = opt(
        600, "iterations of Algorithm 3 on each coarse level (global prediction): with "
        "coarse_check_every and a target accuracy a maximum", low=0
    )
    coarse_check_every: int = opt(
        16,
        "every this many iterations, check whether the coarse model reaches "
        "train.target_accuracy on the validation set and if so end its level there "
        "(coarse_iterations is then a maximum; checked only when its accuracy on the recent "
        "training batches reaches the target, backing off after a miss; counts as training "
        "time); the training loop then evaluates the fine model after its first iteration. "
        "Without train.target_accuracy every level runs coarse_iterations. 0 = always run "
        "coarse_iterations",
        low=0,
    )
    coarse_lr: float = opt(0.0, "learning rate of the global prediction (0 = train.lr)", low=0.0)
    prolong_optimizer: bool = opt(
        True,
        "start the fine optimiser from the prolongated coarse optimiser state (moments scaled "
        "for the 1/coarsen smaller per-layer gradients, step count continued) instead of from "
        "zero",
    )
    coarse_parallel: str = opt(
        "auto",
        "how the ranks share the global prediction: serial (every rank trains each coarse "
        "level alone with Algorithm 3, the paper), data (the coarse batch split over the ranks, "
        "gradients summed: the serial iterates up to round-off), pint (each coarse level trained "
        "by this method on all ranks, every rank owning the same time interval), auto (per "
        "level: 8 iterations timed serially, 8 data-parallel, the faster continues; rank 0's "
        "clock decides). With regression co-states the iterations that record boundary "
        "observations run serially",
        choices=("auto", "serial", "data", "pint"),
    )
    prolong: str = opt(
        "constant",
        "prolongation of the controls to the finer grid in time: constant (each coarse step's "
        "controls on its fine steps) or linear (interpolated; trained controls are rough in "
        "time and lose accuracy)",
        choices=("constant", "linear"),
    )
    costates: str = opt(
        "delayed",
        "co-states at the slice boundaries: regression (the paper: predicted for the current "
        "batch by the regression of eq. (6), see features/window/ridge) or delayed (exact: the "
        "co-state of the batch rank r solved S-1-r iterations earlier arrives through the "
        "pipeline, and the rank applies that batch's exact gradient, taken with the controls "
        "it went forward with; no regression)",
        choices=("regression", "delayed"),
    )
    features: str = opt(
        "class",
        "co-state regression features: state (A X + B, the paper's eq. (6)), label (A X + B_y), "
        "class (A_y X + B_y, one affine model per class), quadratic (one quadratic model per "
        "class)",
        choices=FEATURES,
    )
    window: int = opt(
        20, "observation window of each boundary regression, in batches (0 = keep all)", low=0
    )
    ridge: float = opt(1e-3, "relative ridge term of the regression (times trace(G)/p)", low=0.0)
    refit_every: int = opt(
        1, "refit the regression every this many iterations (observations are always added)",
        low=1,
    )
    balance_layers: float = opt(
        0.0,
        "load balance: the cost of a boundary regression, in layers; every rank that fits one "
        "(all but the last) gets that many layers fewer than the last rank (0 = even split)",
        low=0.0,
    )
    damping: float = opt(
        0.0,
        "scale a rank's step by max(0, 1 - e), e the running mean (this many iterations) of its "
        "boundary's relative co-state error (Theorem 4.1 needs e < 1); 0 = off",
        low=0.0,
    )
    oracle: bool = opt(
        False,
        "exact co-states: wait for the true co-state of the right neighbour (serial in time; "
        "reproduces serial SGD; for testing)",
    )
    timeout: float = opt(
        300.0,
        "seconds a rank waits for a neighbour's state or co-state before failing the job (0 = "
        "wait forever with a blocking receive, whatever PINTOPT_COMM_TIMEOUT says; the "
        "watchdog still covers a stopped rank, docs/reliability.md)",
        low=0.0,
    )


#: The automatic hierarchy (``levels = 0``): at most this many levels, the coarsest with at least
#: this many layers.
AUTO_MAX_LEVELS, AUTO_MIN_COARSE_DEPTH = 4, 4


def auto_levels(depth: int, coarsen: int) -> int:
    """``levels = 0``: the most levels (at most :data:`AUTO_MAX_LEVELS`) such that
    ``coarsen^(levels-1)`` divides ``depth`` and the coarsest model has at least
    :data:`AUTO_MIN_COARSE_DEPTH` layers; 1 (single level) when not even one coarse level fits."""
    levels, d = 1, depth
    while levels < AUTO_MAX_LEVELS and d % coarsen == 0 and d // coarsen >= AUTO_MIN_COARSE_DEPTH:
        levels, d = levels + 1, d // coarsen
    return levels


def resolved(options: PintOptions, depth: int) -> PintOptions:
    """The options with ``levels = 0`` replaced by the automatic choice for ``depth``."""
    if options.levels:
        return options
    return dataclasses.replace(options, levels=auto_levels(depth, options.coarsen))


#: Options that only the regression co-states read, and those only the global prediction reads.
REGRESSION_ONLY = ("features", "window", "ridge", "refit_every", "damping")
PREDICTION_ONLY = ("coarsen", "coarse_iterations", "coarse_check_every", "coarse_lr",
                   "prolong_optimizer", "coarse_parallel", "prolong")


def ineffective(options: PintOptions, depth: int, target_accuracy: float, size: int
                ) -> list[str]:
    """Options set to something other than their default that have no effect with the others
    (issue 16: warn when an option does nothing), one line each, for the caller to show. A default
    value never produces a line: the defaults are meant to work together."""
    o, default = resolved(options, depth), PintOptions()
    changed = {f.name for f in dataclasses.fields(o)
               if getattr(options, f.name) != getattr(default, f.name)}
    why: dict[str, str] = {}
    if o.oracle:
        why["costates"] = "pint.oracle uses the exact co-states"
    if o.oracle or o.costates == "delayed":
        for name in REGRESSION_ONLY:
            why[name] = ("pint.oracle uses the exact co-states" if o.oracle else
                         "pint.costates = delayed uses no regression")
    if o.levels == 1 or o.coarse_iterations == 0:
        for name in PREDICTION_ONLY:
            why[name] = ("pint.coarse_iterations = 0: no global prediction" if o.levels > 1
                         else f"one level (no global prediction) at depth {depth}")
    elif not target_accuracy:
        why.setdefault("coarse_check_every", "without train.target_accuracy every coarse level "
                       "runs pint.coarse_iterations")
    if size == 1:
        for name in ("balance_layers", "coarse_parallel", "timeout", "costates"):
            why.setdefault(name, "one rank: nothing to split or send")
    return [f"option pint.{name} has no effect: {why[name]}" for name in sorted(changed)
            if name in why]
