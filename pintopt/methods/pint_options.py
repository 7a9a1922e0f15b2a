"""The options of the parallel-in-time method: the config section ``[pint]`` and its
``--pint-*`` flags (help texts are the documentation, generated into docs/options.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pintopt.methods.pint_regression import FEATURES
from pintopt.options import ON, Not, opt

# When an option has an effect (``requires``/``disables``: pintopt.config.ineffective_options warns
# about the options a user set to no effect). Only the global prediction reads these when there is
# one (levels != 1; levels = 0 may also resolve to 1 on a shallow network, which the table cannot
# see), and only the regression co-states read those.
_PREDICTION = {"levels": Not(1), "coarse_iterations": ON}
_REGRESSION = {"costates": "regression"}
_DELAYED = {"costates": "delayed"}


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
    coarsen: int = opt(4, "coarsening factor between levels (must divide the depth)", low=2,
                       requires=_PREDICTION)
    coarse_iterations: int = opt(
        600, "iterations of Algorithm 3 on each coarse level (global prediction): with "
        "coarse_check_every and a target accuracy a maximum", low=0,
        requires={"levels": Not(1)},
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
        requires={**_PREDICTION, "train.target_accuracy": ON},
    )
    coarse_lr: float = opt(0.0, "learning rate of the global prediction (0 = train.lr)", low=0.0,
                           requires=_PREDICTION)
    prolong_optimizer: bool = opt(
        True,
        "start the fine optimiser from the prolongated coarse optimiser state (moments scaled "
        "for the 1/coarsen smaller per-layer gradients, step count continued) instead of from "
        "zero",
        requires=_PREDICTION,
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
        requires=_PREDICTION,
    )
    prolong: str = opt(
        "constant",
        "prolongation of the controls to the finer grid in time: constant (each coarse step's "
        "controls on its fine steps) or linear (interpolated; trained controls are rough in "
        "time and lose accuracy)",
        choices=("constant", "linear"),
        requires=_PREDICTION,
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
    delay_damping: float = opt(
        1.0,
        "with delayed co-states: a rank whose gradients are d = S-1-r iterations old steps with "
        "lr / (1 + delay_damping * d) (delayed-gradient SGD needs a step that shrinks with the "
        "delay; 1 halves rank 0's step on 2 ranks); 0 = the same step on every rank",
        low=0.0,
        requires=_DELAYED,
    )
    features: str = opt(
        "class",
        "co-state regression features: state (A X + B, the paper's eq. (6)), label (A X + B_y), "
        "class (A_y X + B_y, one affine model per class), quadratic (one quadratic model per "
        "class)",
        choices=FEATURES,
        requires=_REGRESSION,
    )
    window: int = opt(
        20, "observation window of each boundary regression, in batches (0 = keep all)", low=0,
        requires=_REGRESSION,
    )
    ridge: float = opt(1e-3, "relative ridge term of the regression (times trace(G)/p)", low=0.0,
                       requires=_REGRESSION)
    refit_every: int = opt(
        1, "refit the regression every this many iterations (observations are always added)",
        low=1,
        requires=_REGRESSION,
    )
    balance_layers: float = opt(
        0.0,
        "load balance, in layers: every rank but the last gets that many layers fewer than the "
        "last rank, which fits no regression and has no opening layer (about the cost of a "
        "boundary regression, or of the opening layer on wide inputs; 0 = even split)",
        low=0.0,
    )
    damping: float = opt(
        0.0,
        "scale a rank's step by max(0, 1 - e), e the running mean (this many iterations) of its "
        "boundary's relative co-state error (Theorem 4.1 needs e < 1); 0 = off",
        low=0.0,
        requires=_REGRESSION,
    )
    oracle: bool = opt(
        False,
        "exact co-states: wait for the true co-state of the right neighbour (serial in time; "
        "reproduces serial SGD; for testing)",
        disables=("pint.costates", "pint.balance_layers") + tuple(
            f"pint.{k}" for k in ("features", "window", "ridge", "refit_every", "damping")),
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

