"""The options of the parallel-in-time method: the config section ``[pint]`` and its
``--pint-*`` flags (help texts are the documentation, generated into docs/options.md)."""

from __future__ import annotations

from dataclasses import dataclass

from pintopt.methods.pint_regression import FEATURES
from pintopt.options import ON, opt


@dataclass
class PintOptions:
    levels: int = opt(
        2,
        "discretisation levels: 1 = single-level (no global prediction), 2 = multilevel with one "
        "coarse model (the paper), L > 2 = nested coarse models, coarsest first",
        low=1,
    )
    coarsen: int = opt(2, "coarsening factor between levels (must divide the depth)", low=2)
    coarse_iterations: int = opt(
        200, "iterations of serial Algorithm 3 on each coarse level (global prediction)", low=0
    )
    coarse_check_every: int = opt(
        0,
        "every this many iterations, check whether the coarse model reaches "
        "train.target_accuracy on the validation set and if so end its level there "
        "(coarse_iterations is then a maximum; checked only when its accuracy on the recent "
        "training batches reaches the target, backing off after a miss; counts as training "
        "time); the training loop then evaluates the fine model after its first iteration. "
        "0 = always run coarse_iterations",
        low=0,
        requires={"train.target_accuracy": ON},
    )
    coarse_lr: float = opt(0.0, "learning rate of the global prediction (0 = train.lr)", low=0.0)
    prolong_optimizer: bool = opt(
        True,
        "start the fine optimiser from the prolongated coarse optimiser state (moments scaled "
        "for the 1/coarsen smaller per-layer gradients, step count continued) instead of from "
        "zero",
    )
    coarse_parallel: bool = opt(
        False,
        "train each coarse level with this method on all ranks too (every rank owns the same "
        "time interval on every level); false = serial Algorithm 3 on every rank (the paper)",
    )
    prolong: str = opt(
        "constant",
        "prolongation of the controls to the finer grid in time: constant (each coarse step's "
        "controls on its fine steps) or linear (interpolated; trained controls are rough in "
        "time and lose accuracy)",
        choices=("constant", "linear"),
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
