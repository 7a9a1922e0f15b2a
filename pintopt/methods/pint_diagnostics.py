"""What the parallel-in-time method measures about itself, in bounded memory.

Per-phase timers of the local correction (summed), the time spent waiting for neighbours, the
global prediction's time, loss and iterations, and the co-state regression error at this rank's
right boundary: a bounded trace of the newest per-iteration errors (for plots and benchmarks),
running sums since the last evaluation (for the history columns ``reg_mse``/``reg_rel_mse``,
Theorem 4.1's condition made visible) and the running mean that ``pint.damping`` uses.
"""

from __future__ import annotations

from collections import deque

#: Phases of one local-correction iteration, in order (pintopt.methods.pint.PintTrainer.step).
PHASES = ("head_or_predict", "backward", "update", "receive", "forward", "regression")


class PintDiagnostics:
    """Timers and co-state error records of one rank (``trace_len`` newest errors kept)."""

    def __init__(self, trace_len: int = 10_000) -> None:
        self.timers = dict.fromkeys(PHASES, 0.0)
        self.steps = 0  # local-correction iterations timed
        self.wait_time = 0.0  # seconds in receives from neighbours
        self.coarse_time = 0.0
        self.coarse_loss = float("nan")
        self.coarse_steps = 0  # iterations of the global prediction, all levels
        #: how each coarse level ran (serial, data, pint), coarsest first
        self.coarse_modes: list[str] = []
        self.coarse_level_steps: list[int] = []  # iterations of each coarse level, same order
        #: newest (iteration, MSE, relative error) of the regression at this rank's boundary
        self.trace: deque[tuple[int, float, float]] = deque(maxlen=trace_len)
        self.observed = 0  # errors recorded in all
        self.err_avg = 1.0  # running mean of the relative error (pint.damping)
        self._n = 0
        self._sum_mse = self._sum_rel = 0.0

    def add_times(self, **seconds: float) -> None:
        for k, v in seconds.items():
            self.timers[k] += v

    def reset_timers(self) -> None:
        self.timers = dict.fromkeys(PHASES, 0.0)
        self.steps = 0

    def record_error(self, iteration: int, mse: float, rel: float, damping: float) -> None:
        """One iteration's co-state error; ``damping`` is the running mean's length in
        iterations (0, or at most 1: the newest error alone)."""
        self.trace.append((iteration, mse, rel))
        # a weight above 1 would extrapolate: the mean could turn negative and the damped step
        # exceed the undamped one
        w = min(1.0, 1.0 / damping) if damping else 1.0
        self.err_avg = rel if self.observed == 0 else (1 - w) * self.err_avg + w * rel
        self.observed += 1
        self._n += 1
        self._sum_mse += mse
        self._sum_rel += rel

    def since_evaluation(self) -> tuple[int, float, float]:
        """(count, sum of MSE, sum of relative errors) since the previous call; resets them."""
        out = (self._n, self._sum_mse, self._sum_rel)
        self._n, self._sum_mse, self._sum_rel = 0, 0.0, 0.0
        return out
