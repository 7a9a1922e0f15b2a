"""The GPipe micro-batch pipeline of Surrogate Minimization, as data and a small executor.

Asad et al. (2023), Figure 1(b): SM runs GPipe (Huang et al. 2019) -- the batch is cut into M
micro-batches that flow through the S stages (ranks), stage s starts the forward pass of
micro-batch j+1 while stage s+1 works on j, the backward passes flow back the same way -- and then
every stage updates its own layers in parallel (the ``U`` phase: SM's inner solves), with no
bubble around the update.

Following torch.distributed.pipelining and torchgpipe (``shared/style.md``, section 5), the
schedule is *data*: :func:`gpipe_schedule` returns, for every stage, its list of
:class:`Action` per clock tick (``None`` = idle), :func:`check_schedule` verifies the
dependencies and :func:`format_schedule` draws the tick x stage grid. The schedule is tested
without any communicator. :class:`Executor` runs one stage's actions in order on a communicator:
it receives what an action needs from the neighbour stage, calls the stage's maths
(:class:`Stage`) and sends the result on; it knows nothing of layers or losses. Ticks only order
the actions -- each rank runs its list as fast as its inputs arrive (receives block), so the
measured waiting is the bubble.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pintopt.comm import CommError

FORWARD, BACKWARD, UPDATE = "F", "B", "U"

#: Message tags: activations flow forward (stage s -> s+1), gradients backward (s -> s-1). The
#: micro-batch index is added, so messages of different micro-batches never match each other.
TAG_ACTIVATION = 1000
TAG_GRADIENT = 50000


@dataclass(frozen=True)
class Action:
    """One unit of a stage's work: ``F`` (forward of a micro-batch), ``B`` (its backward) or
    ``U`` (the update of the stage's layers, ``micro = -1``). Prints as torch's ``2F0`` (stage 2,
    forward, micro-batch 0)."""

    stage: int
    kind: str
    micro: int = -1

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.micro if self.micro >= 0 else ''}"


def gpipe_schedule(stages: int, micro: int) -> list[list[Action | None]]:
    """The GPipe schedule of ``stages`` stages and ``micro`` micro-batches, then one update tick.

    Forward: stage s runs ``F(j)`` at tick ``s + j`` (torchgpipe's ``clock_cycles``). Backward, in
    reverse micro-batch order as GPipe does (the last micro-batch turns around first): stage s
    runs ``B(j)`` at tick ``M + S - 1 + (S - 1 - s) + (M - 1 - j)``. Update: every stage at tick
    ``2 (M + S - 1)``. Returns ``order[stage][tick]``; each stage idles ``2 (S - 1)`` of its
    ``2 (M + S - 1)`` pipeline ticks (the bubble, fraction ``(S - 1) / (M + S - 1)``).
    """
    if stages < 1 or micro < 1:
        raise ValueError(f"gpipe_schedule needs stages >= 1 and micro >= 1, got {stages}, {micro}")
    S, M = stages, micro
    n_ticks = 2 * (M + S - 1) + 1
    order: list[list[Action | None]] = [[None] * n_ticks for _ in range(S)]
    for s in range(S):
        for j in range(M):
            order[s][s + j] = Action(s, FORWARD, j)
            order[s][M + S - 1 + (S - 1 - s) + (M - 1 - j)] = Action(s, BACKWARD, j)
        order[s][n_ticks - 1] = Action(s, UPDATE)
    return order


def stage_actions(order: list[list[Action | None]], stage: int) -> list[Action]:
    """The actions of ``stage`` in the order it runs them (bubbles dropped)."""
    return [a for a in order[stage] if a is not None]


def check_schedule(order: list[list[Action | None]], micro: int) -> None:
    """Raise ValueError unless ``order`` is a valid pipeline schedule: every stage runs ``F(j)``
    and ``B(j)`` once for every micro-batch and ``U`` last; ``F(j)`` on stage s after ``F(j)`` on
    s-1; ``B(j)`` after ``F(j)`` on the same stage and after ``B(j)`` on s+1 (strictly later
    ticks: a stage can use a neighbour's result from an earlier tick only)."""
    S = len(order)
    when: dict[tuple[int, str, int], int] = {}
    for s, row in enumerate(order):
        for t, a in enumerate(row):
            if a is None:
                continue
            if a.stage != s:
                raise ValueError(f"action {a} is in the row of stage {s}")
            key = (s, a.kind, a.micro)
            if key in when:
                raise ValueError(f"action {a} runs twice (ticks {when[key]} and {t})")
            when[key] = t
    for s, j, kind in ((s, j, k) for s in range(S) for j in range(micro)
                       for k in (FORWARD, BACKWARD)):
        if (s, kind, j) not in when:
            raise ValueError(f"stage {s} never runs {kind}{j}")
    for s in range(S):
        for j in range(micro):
            if s > 0 and when[(s, FORWARD, j)] <= when[(s - 1, FORWARD, j)]:
                raise ValueError(f"{s}F{j} runs before its input {s - 1}F{j}")
            if when[(s, BACKWARD, j)] <= when[(s, FORWARD, j)]:
                raise ValueError(f"{s}B{j} runs before {s}F{j}")
            if s < S - 1 and when[(s, BACKWARD, j)] <= when[(s + 1, BACKWARD, j)]:
                raise ValueError(f"{s}B{j} runs before its input {s + 1}B{j}")
        last = max(t for (st, _, _), t in when.items() if st == s)
        if (s, UPDATE, -1) not in when or when[(s, UPDATE, -1)] != last:
            raise ValueError(f"stage {s} does not end with its update")


def format_schedule(order: list[list[Action | None]], mark: tuple[int, int] | None = None) -> str:
    """The tick x stage grid (torch's ``_format_pipeline_order``): one row per tick, one column per
    stage, ``.`` for a bubble; ``mark = (stage, tick)`` flags an action with ``*`` (where a
    rank stopped)."""
    S, T = len(order), len(order[0]) if order else 0
    width = max([len(str(a)) + 1 for row in order for a in row if a is not None]
                + [len(f"rank {S - 1}")]) + 1
    lines = ["tick " + "".join(f"{'rank ' + str(s):>{width + 1}}" for s in range(S))]
    for t in range(T):
        cells = []
        for s in range(S):
            a = order[s][t]
            text = "." if a is None else str(a)
            if mark == (s, t):
                text += "*"
            cells.append(f"{text:>{width + 1}}")
        lines.append(f"{t:>4} " + "".join(cells))
    return "\n".join(lines)


class Stage(Protocol):
    """The per-stage maths the executor drives (no communication inside)."""

    def input_buffer(self, micro: int) -> np.ndarray:
        """Where the activation of micro-batch ``micro`` from the previous stage is received."""

    def forward(self, micro: int) -> np.ndarray | None:
        """Forward pass of the micro-batch through the stage's layers (input already in its
        buffer); the output to send on (None on the last stage). The array must stay unchanged
        until the pass ends."""

    def gradient_buffer(self, micro: int) -> np.ndarray:
        """Where the gradient w.r.t. the stage's output of micro-batch ``micro`` is received."""

    def backward(self, micro: int) -> np.ndarray | None:
        """Backward pass (the output gradient is in its buffer, or computed from the loss on the
        last stage); the gradient w.r.t. the stage's input to send back (None on the first
        stage)."""

    def update(self) -> None:
        """The update of the stage's layers (may use collectives: every stage reaches it)."""


@dataclass
class PipelineTimes:
    """What one pass of a stage cost (seconds): ``total`` (first action to the end of the update),
    ``wait`` (blocked in receives and send completions during the pipelined forward/backward),
    ``pipeline`` (the forward/backward part, waiting included), ``update`` (the U action)."""

    total: float = 0.0
    wait: float = 0.0
    pipeline: float = 0.0
    update: float = 0.0
    per_action: dict[str, float] = field(default_factory=dict)

    @property
    def bubble(self) -> float:
        """Fraction of the pipelined forward/backward time this stage spent waiting."""
        return self.wait / self.pipeline if self.pipeline > 0 else 0.0


class Executor:
    """Runs one stage's actions of a schedule on ``comm`` (rank = stage).

    ``F(j)``: receive the activation from stage s-1 into ``stage.input_buffer(j)`` (stage 0 reads
    the data), ``stage.forward(j)``, send the output to s+1 without waiting. ``B(j)``: receive the
    output gradient from s+1 into ``stage.gradient_buffer(j)`` (the last stage has it from the
    loss), ``stage.backward(j)``, send the input gradient to s-1. ``U``: complete the pending
    sends, ``stage.update()``. Every receive has ``timeout``; when one expires the error names
    the action and shows the schedule grid with the stuck action marked.
    """

    def __init__(self, order: list[list[Action | None]], comm: Any, timeout: float | None
                 ) -> None:
        self.order, self.comm, self.timeout = order, comm, timeout
        self.stage_index = comm.rank
        self.S = len(order)
        if self.S != comm.size:
            raise ValueError(f"a schedule of {self.S} stages cannot run on {comm.size} ranks")
        self.actions = [(t, a) for t, a in enumerate(order[self.stage_index]) if a is not None]

    def _recv(self, buf: np.ndarray, source: int, tag: int, tick: int, what: Action,
              times: PipelineTimes) -> None:
        t0 = time.perf_counter()
        try:
            self.comm.recv_(buf, source, tag, timeout=self.timeout)
        except CommError as exc:
            raise CommError(
                f"{exc} (pipeline stage {self.stage_index}, action {what} at tick {tick}):\n"
                + format_schedule(self.order, mark=(self.stage_index, tick))
            ) from None
        times.wait += time.perf_counter() - t0

    def run(self, stage: Stage) -> PipelineTimes:
        """One pass of the schedule on this rank; returns its times."""
        s, S, comm = self.stage_index, self.S, self.comm
        times = PipelineTimes()
        pending: list[Any] = []
        start = time.perf_counter()
        for tick, a in self.actions:
            t0 = time.perf_counter()
            if a.kind == FORWARD:
                if s > 0:
                    self._recv(stage.input_buffer(a.micro), s - 1, TAG_ACTIVATION + a.micro,
                               tick, a, times)
                out = stage.forward(a.micro)
                if s < S - 1:
                    pending.append(comm.isend(out, s + 1, TAG_ACTIVATION + a.micro))
            elif a.kind == BACKWARD:
                if s < S - 1:
                    self._recv(stage.gradient_buffer(a.micro), s + 1, TAG_GRADIENT + a.micro,
                               tick, a, times)
                out = stage.backward(a.micro)
                if s > 0:
                    pending.append(comm.isend(out, s - 1, TAG_GRADIENT + a.micro))
            else:
                w0 = time.perf_counter()
                comm.waitall(pending, timeout=self.timeout)
                pending = []
                times.wait += time.perf_counter() - w0
                times.pipeline = time.perf_counter() - start
                stage.update()
                times.update = time.perf_counter() - t0
            times.per_action[str(a)] = time.perf_counter() - t0
        if pending:  # a schedule without U: still complete every send
            comm.waitall(pending, timeout=self.timeout)
        times.total = time.perf_counter() - start
        if not times.pipeline:
            times.pipeline = times.total
        return times


def simulate(order: list[list[Action | None]], stages: list[Stage]) -> None:
    """Run a schedule in one process, tick by tick, all stages in turn, messages handed over as
    copies: the schedule's dataflow without a communicator (for tests and for reading)."""
    S = len(order)
    mail: dict[tuple[str, int, int], np.ndarray] = {}
    for tick in range(len(order[0])):
        for s in range(S):
            a = order[s][tick]
            if a is None:
                continue
            st = stages[s]
            if a.kind == FORWARD:
                if s > 0:
                    st.input_buffer(a.micro)[...] = mail.pop(("act", s, a.micro))
                out = st.forward(a.micro)
                if s < S - 1:
                    mail[("act", s + 1, a.micro)] = np.array(out, copy=True)
            elif a.kind == BACKWARD:
                if s < S - 1:
                    st.gradient_buffer(a.micro)[...] = mail.pop(("grad", s, a.micro))
                out = st.backward(a.micro)
                if s > 0:
                    mail[("grad", s - 1, a.micro)] = np.array(out, copy=True)
            else:
                st.update()
    if mail:
        raise RuntimeError(f"messages never received: {sorted(mail)}")
