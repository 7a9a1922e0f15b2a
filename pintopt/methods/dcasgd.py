"""Asynchronous SGD with delay compensation on a parameter server (Zheng et al. 2017).

Roles (``dcasgd.mode = "server"``, the method's shape is ASYNC): rank 0 is the parameter server
and runs the shared training loop on a communicator of its own (``loop_comm``, a
:class:`~pintopt.comm.SerialComm`: the loop's agreement, evaluation and checkpoints never wait for
a worker); ranks 1..M are the workers. One ``step()`` of the server is one update of its weights:

- asynchronous rules (``asgd``, ``dcasgd_c``, ``dcasgd_a``): receive the next gradient from
  whichever worker pushes first (:meth:`Comm.recv_any_`), apply it -- compensated with that
  worker's backup, the weights it pulled (:mod:`pintopt.methods.dcasgd_rules`) -- and answer that
  worker's next pull with the new weights, which become its backup. No barrier: the other workers
  keep computing;
- synchronous rules (``ssgd``, ``ssgd_dc``): one round -- a gradient from every worker at the
  same weights, one update, the new weights to every worker.

A worker pulls the weights, computes the gradient of the next mini-batch of its own stream
(``BatchSampler(..., stream=rank)``) and pushes it with a small header (the weights' version, the
batch's number in its stream, the loss, its compute time); it waits (with ``dcasgd.timeout``) for
the answer, which is either new weights or a release. The server checks every push: it must come
from a worker that owes one, carry the version of that worker's backup and the next batch number
of that worker's stream, so every pushed gradient is accounted for exactly once -- applied, or
discarded and counted (the pushes still in flight when the budget is spent, when the loop stops
early, or at a rollback). Memory: the server keeps one weight copy per worker (the backups, which
are also the send buffers of the answers); the synchronous rules add one gradient per worker.

``dcasgd.mode = "replay"`` runs in one process and applies a given delay schedule: the gradient
of step t is computed at ``w_{t - tau_t}`` (a window of the last ``max tau + 1`` weights) and
compensated with ``w_t - w_{t - tau_t}``; a constant delay 0 is serial SGD, and a schedule
recorded by a server run (the history's ``sources`` and ``staleness``) replays that run bitwise
(:meth:`DCASGDTrainer.set_schedule`).

Decision points of the shared loop on the server (``docs/methods/dcasgd.md``): divergence is
checked after every update (a NaN pushed gradient is a NaN received message, a NaN loss is the
pushing worker's); a rollback discards the gradients in flight and restarts every worker from its
backup of the restored state; a signal reaches every rank under mpiexec: a worker that sees it
pushes its last gradient marked as such, and the server stops at its next decision point
(:meth:`DCASGDTrainer.stop_requested`), evaluates, writes its checkpoint and releases everyone.
Checkpoints hold the server's weights, optimiser and mean squares, every worker's backup (with
its version) and every worker's stream position: a resume restarts each worker from its backup
on the batch it was computing, so no gradient is lost or applied twice across a restart.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import pintopt.faults as faults
from pintopt.comm import FOREVER, CommError, SerialComm
from pintopt.data import BatchSampler
from pintopt.methods.base import ASYNC, Method, Problem, activation_bytes, n_params
from pintopt.methods.dcasgd_rules import RULES, SYNC_RULES, DelayLog, DelaySchedule, UpdateRule
from pintopt.methods.serial import make_optimizer
from pintopt.optim import Optimizer
from pintopt.options import opt

TAG_GRAD = 51  # worker -> server: gradient + push header
TAG_PARAMS = 52  # server -> worker: weights + answer header

# push header, after the P gradient entries
H_KIND, H_VERSION, H_SEQ, H_LOSS, H_COMPUTE = range(5)
PUSH_HEADER = 5
KIND_GRADIENT, KIND_LAST = 0, 1  # LAST: the worker was asked to stop (a signal)

# answer header, after the P weights
A_COMMAND, A_VERSION, A_SEQ = range(3)
ANSWER_HEADER = 3
COMPUTE, STOP, DIVERGED, FAILED = 0, 1, 2, 3

# what the server knows of a worker
IDLE, BUSY, RELEASED = 0, 1, 2  # IDLE: waits for an answer; BUSY: owes a push


@dataclass
class DCASGDOptions:
    rule: str = opt(
        "dcasgd_a",
        "update rule: asgd (plain asynchronous SGD), dcasgd_c (delay-compensated, constant "
        "lambda), dcasgd_a (adaptive lambda), ssgd (synchronous SGD over the workers), ssgd_dc "
        "(synchronous SGD with delay-compensated large mini-batches, supplement Section H)",
        choices=RULES,
    )
    lam: float = opt(0.04, "lambda of dcasgd_c and ssgd_dc (0 = no compensation)", low=0.0)
    lam0: float = opt(
        2.0, "dcasgd_a: lambda_t = lam0 / sqrt(meansquare_t + eps), elementwise", low=0.0)
    meansquare_momentum: float = opt(
        0.95, "dcasgd_a: meansquare_t = m * meansquare_{t-1} + (1 - m) * g * g", low=0.0,
        high=1.0)
    eps: float = opt(
        1e-7, "dcasgd_a: eps under the square root (> 0: a coordinate whose gradient has always "
        "been 0 would divide by zero)", low=0.0, low_open=True)
    meansquare: str = opt(
        "global",
        "dcasgd_a: one mean square on the server (the paper's formula) or one per worker (the "
        "authors' code; one more weight-sized array per worker)",
        choices=("global", "worker"),
    )
    ssgd_scale: str = opt(
        "sum",
        "ssgd, ssgd_dc: apply the sum of the M gradients (the mean with learning rate M * lr, "
        "the linear scaling of Section H) or their mean (learning rate lr)",
        choices=("sum", "mean"),
    )
    ssgd_order: str = opt(
        "norm",
        "ssgd_dc: order of the virtual sequential walk: increasing ||g||^2 (the paper's "
        "increasing ||w~ - w_t||^2) or by worker rank",
        choices=("norm", "rank"),
    )
    mode: str = opt(
        "server",
        "server: parameter server on rank 0, workers on the other ranks (needs >= 2 ranks); "
        "replay: one process applies the delay schedule dcasgd.delays (deterministic)",
        choices=("server", "replay"),
    )
    delays: str = opt(
        "0",
        "replay: delay of each applied gradient: K (constant), a comma-separated list (cycled) or "
        "uniform:K (i.i.d. on 0..K); clamped to the number of updates applied so far",
    )
    replay_workers: int = opt(
        0,
        "replay: 0 = one mini-batch stream (delay 0 is serial SGD); M = gradients from M "
        "workers' streams in turn (worker k's stream as on rank k), the M workers of a round "
        "for ssgd and ssgd_dc",
        low=0,
    )
    timeout: float = opt(
        300.0,
        "seconds the server waits for a gradient before failing the job with a message naming "
        "the workers it waits for; a worker waits twice as long for the server's answer (0 = "
        "wait forever)",
        low=0.0,
    )
    slow_rank: int = opt(
        0, "tests and benchmarks: this worker rank sleeps slow_seconds before each gradient "
        "(0 = none)", low=0)
    slow_seconds: float = opt(0.0, "the injected sleep of slow_rank, in seconds", low=0.0)


def param_views(template: Any, flat: np.ndarray) -> Any:
    """A parameter set of ``template``'s type and shapes whose arrays are views of ``flat``
    (a message buffer's weight or gradient part)."""
    arrays, pos = {}, 0
    for name, a in template.as_dict().items():
        arrays[name] = flat[pos : pos + a.size].reshape(a.shape)
        pos += a.size
    if pos != flat.size:
        raise ValueError(f"buffer of {flat.size} values for {pos} parameters")
    return template._new(arrays)


class DCASGDTrainer(Method):
    """Asynchronous SGD with delay compensation on a parameter server: ASGD, DC-ASGD-c,
    DC-ASGD-a, SSGD and SSGD-DC (Zheng et al. 2017; see the module docstring)."""

    name = "dcasgd"
    float64_only = "its delay-compensation kernels and parameter-server messages are float64 only"
    #: One line for ``pintopt info`` (read by the main branch's registry listing).
    summary = ("asynchronous SGD on a parameter server with delay compensation (DC-ASGD-c/-a), "
               "ASGD, SSGD, SSGD-DC (Zheng et al. 2017)")
    Options = DCASGDOptions
    shape = ASYNC
    resume_any_ranks = False  # one backup and one stream per worker
    rollback_policy = "halved step size, gradients in flight discarded"
    driver_rank = 0

    def __init__(self, problem: Problem, train: Any, options: Any, comm: Any) -> None:
        super().__init__(problem, train, options, comm)
        o = self.options
        self.replay = o.mode == "replay"
        self.sync = o.rule in SYNC_RULES
        if self.replay and comm.size > 1:
            raise ValueError(f"option dcasgd.mode: replay runs in one process, not on "
                             f"{comm.size} ranks (set dcasgd.mode = server under mpiexec)")
        if not self.replay and comm.size < 2:
            raise ValueError("option dcasgd.mode: the parameter server needs at least 2 ranks "
                             "(a server and a worker); run under mpiexec -n N with N >= 2, or "
                             "set dcasgd.mode = replay")
        if o.slow_rank and not (self.replay or 1 <= o.slow_rank < comm.size):
            raise ValueError(f"option dcasgd.slow_rank: {o.slow_rank} is not a worker rank "
                             f"(1..{comm.size - 1})")
        if self.replay:
            self.M = max(o.replay_workers, 1)
        else:
            self.M = comm.size - 1
        self.is_server = self.replay or comm.rank == 0
        # A worker's wait for its answer legitimately includes the server's own waits (for the
        # other workers of a round, for a stuck worker at the final drain) and its evaluations:
        # workers wait twice as long, so a stuck worker is named by the server first.
        self.timeout = o.timeout if o.timeout > 0 else FOREVER
        self.worker_timeout = 2 * o.timeout if o.timeout > 0 else FOREVER
        self.params = self.model.init_params(train.seed)
        self.P = self.params.flat.size
        self._loop_comm = comm if self.replay else SerialComm()
        self._stop_request = False
        if self.is_server:
            self._init_server()
        else:
            self._init_worker()

    # ------------------------------------------------------------------------------ roles
    @property
    def driver(self) -> bool:
        return self.is_server

    @property
    def loop_comm(self) -> Any:
        return self._loop_comm

    @property
    def grads_per_update(self) -> int:
        return self.M if self.sync else 1

    @property
    def steps_per_epoch(self) -> int:
        """Updates per pass over the training set (a synchronous update consumes M batches), so
        the loop's ``epoch`` column counts effective passes for every rule."""
        return max(self.data.x_train.shape[0] // (self.batch_size * self.grads_per_update), 1)

    def optimizers(self) -> list[Optimizer]:
        return [self.opt] if self.is_server else []

    def stop_requested(self) -> bool:
        """A worker pushed its last gradient because it was asked to stop (a signal)."""
        return self._stop_request

    def _stream(self, source: int) -> BatchSampler:
        """The mini-batch stream of worker rank ``source`` (0: the shared stream of serial SGD)."""
        m = self.data.x_train.shape[0]
        if source == 0:
            return BatchSampler(m, self.batch_size, seed=self.train.seed)
        return BatchSampler(m, self.batch_size, seed=self.train.seed, stream=source)

    def _gradient(self, params: Any, idx: np.ndarray, grads: Any) -> float:
        loss, _ = self.model.loss_and_grad(params, self.data.x_train[idx],
                                           self.data.y_train[idx], grads)
        return float(loss)

    # ------------------------------------------------------------------------------ server
    def _init_server(self) -> None:
        o, M, P = self.options, self.M, self.P
        self.opt = make_optimizer(self.train)
        self.rule = UpdateRule(o.rule, o, self.opt, self.params, M)
        self.log = DelayLog(M)
        self.seq = np.zeros(M, dtype=np.int64)  # batches of each worker's stream applied
        self.samples = 0  # training samples in the applied gradients
        self.received = np.zeros(M, dtype=np.int64)  # pushes received per worker (this process)
        self.bytes_received = 0
        # seconds in receives (idle + copy), applying the rule, answering (backup copy and send)
        self.wait_time = self.apply_time = self.answer_time = 0.0
        if self.replay:
            self._init_replay()
            return
        # one row per worker: its backup weights and the answer header (the send buffer)
        self.backup = np.empty((M, P + ANSWER_HEADER))
        self.backup[:, :P] = self.params.flat
        self.backup_version = np.zeros(M, dtype=np.int64)
        self.status = [IDLE] * M
        self.leaving = [False] * M
        self.sends: list[Any] = [None] * M
        self.inbuf = np.empty(P + PUSH_HEADER)
        self.round = np.empty((M, P)) if self.sync else None
        self.need_restart = True  # workers wait for their first weights

    def _init_replay(self) -> None:
        o = self.options
        self.schedule = DelaySchedule(o.delays, self.train.seed)
        self.sources: np.ndarray | None = None  # explicit sources (set_schedule)
        self._window(self.schedule.max_delay)
        n = self.M if (self.sync or o.replay_workers) else 0
        self.streams = {k: self._stream(k) for k in (range(1, n + 1) if n else [0])}
        self.grads = self.params.zeros_like()
        self.round = np.empty((self.M, self.P)) if self.sync else None

    def _window(self, depth: int) -> None:
        self.D = int(depth)
        self.window = np.empty((self.D + 1, self.P))
        self.window[self.iteration % (self.D + 1)] = self.params.flat

    def set_schedule(self, delays: Any, sources: Any = None) -> None:
        """Replay an explicit schedule: the delay of every step and (optionally) the worker rank
        whose stream supplies its batch -- e.g. the concatenated ``staleness`` and ``sources``
        columns of a server run's history, which this mode then reproduces bitwise. Call before
        training starts."""
        if not self.replay or self.sync:
            raise ValueError("set_schedule needs dcasgd.mode = replay and an asynchronous rule")
        self.schedule = DelaySchedule(delays)
        if sources is not None:
            self.sources = np.asarray(sources, dtype=np.int64).ravel()
            if self.sources.size != self.schedule.explicit.size:
                raise ValueError(f"{self.sources.size} sources for "
                                 f"{self.schedule.explicit.size} delays")
            if (self.sources < 1).any():
                raise ValueError("replay sources are worker ranks (>= 1)")
            self.M = int(self.sources.max())
            self.rule = UpdateRule(self.options.rule, self.options, self.opt, self.params, self.M)
            self.log = DelayLog(self.M)
            self.seq = np.zeros(self.M, dtype=np.int64)
            self.streams = {k: self._stream(k) for k in range(1, self.M + 1)}
        self._window(self.schedule.max_delay)

    def step(self) -> float:
        if self.replay:
            loss = self._replay_round() if self.sync else self._replay_step()
        else:
            if self.need_restart:
                self._restart()
            loss = self._round() if self.sync else self._async_step()
        self.iteration += 1
        if not self.replay:
            # every idle worker's next pull is the new weights: sent, or -- when the budget is
            # spent or the worker is leaving -- kept as its backup for a resume
            spent = self.iteration >= self.total_iterations()
            t0 = time.perf_counter()
            for k in range(self.M):
                if self.status[k] == IDLE:
                    self._answer(k, COMPUTE, weights=True, send=not (spent or self.leaving[k]))
            self.answer_time += time.perf_counter() - t0
            if spent:
                self._drain()  # the pushes in flight are discarded (and counted)
        return loss

    def _async_step(self) -> float:
        k = self._receive()
        h = self.inbuf[self.P:]
        t0 = time.perf_counter()
        self.rule.apply(self.inbuf[: self.P], self.backup[k, : self.P], k)
        self.apply_time += time.perf_counter() - t0
        self._applied(k, self.iteration - int(h[H_VERSION]))
        return float(h[H_LOSS])

    def _round(self) -> float:
        """One synchronous update from the gradients of every busy worker (all M, unless one
        pushed its last gradient before a rollback), computed at the current weights."""
        losses, got = {}, []
        while any(s == BUSY for s in self.status):
            k = self._receive()
            version = int(self.inbuf[self.P + H_VERSION])
            if version != self.iteration:
                raise RuntimeError(f"dcasgd server: worker {k + 1} pushed a gradient of version "
                                   f"{version} in round {self.iteration}")
            self.round[k] = self.inbuf[: self.P]
            losses[k] = float(self.inbuf[self.P + H_LOSS])
            got.append(k)
        if not got:
            raise RuntimeError("dcasgd server: no worker left for a synchronous round")
        got.sort()
        t0 = time.perf_counter()
        self.rule.apply_round(self.round if len(got) == self.M else self.round[got])
        self.apply_time += time.perf_counter() - t0
        for k in got:
            self._applied(k, 0)
        return float(np.mean([losses[k] for k in got]))

    def _applied(self, k: int, delay: int) -> None:
        self.seq[k] += 1
        self.samples += self.batch_size
        self.log.record(k + 1, k, delay)

    def _receive(self) -> int:
        """The next push from any worker that owes one (checked); returns its worker index."""
        t0 = time.perf_counter()
        try:
            src, _ = self.comm.recv_any_(self.inbuf, TAG_GRAD, timeout=self.timeout)
        except CommError:
            busy = [k + 1 for k in range(self.M) if self.status[k] == BUSY]
            raise CommError(
                f"dcasgd server: no gradient from worker rank(s) {busy} within "
                f"{self.options.timeout:g} s (dcasgd.timeout; a worker has probably failed or is "
                "stuck)") from None
        self.wait_time += time.perf_counter() - t0
        self.bytes_received += self.inbuf.nbytes
        k = src - 1
        if 0 <= k < self.M:
            self.received[k] += 1
        h = self.inbuf[self.P:]
        if not (0 <= k < self.M and self.status[k] == BUSY):
            raise RuntimeError(f"dcasgd server: a gradient from rank {src}, which owes none")
        seq, version = int(h[H_SEQ]), int(h[H_VERSION])
        if seq != self.seq[k] or version != self.backup_version[k]:
            raise RuntimeError(
                f"dcasgd server: worker {src} pushed batch {seq} computed at version {version}, "
                f"expected batch {self.seq[k]} at version {self.backup_version[k]} (a lost or "
                "repeated message)")
        self.status[k] = IDLE
        self.log.compute.append(float(h[H_COMPUTE]))
        if int(h[H_KIND]) == KIND_LAST:
            self.leaving[k] = True
            self._stop_request = True
        return k

    def _answer(self, k: int, command: int, weights: bool, send: bool = True) -> None:
        """Answer worker index ``k`` with its row: with ``weights`` the current weights become
        its backup first; a release (``command != COMPUTE``) sends the row as it is. Without
        ``send`` only the backup is updated (the worker stays idle)."""
        self._complete(k)
        row, P = self.backup[k], self.P
        if weights:
            row[:P] = self.params.flat
            self.backup_version[k] = self.iteration
        if not send:
            return
        row[P + A_COMMAND] = command
        row[P + A_VERSION] = self.backup_version[k]
        row[P + A_SEQ] = self.seq[k]
        self.sends[k] = self.comm.isend(row, k + 1, TAG_PARAMS)
        self.status[k] = BUSY if command == COMPUTE else RELEASED

    def _complete(self, k: int) -> None:
        if self.sends[k] is not None:
            self.comm.waitall([self.sends[k]], timeout=self.timeout)
            self.sends[k] = None

    def _restart(self) -> None:
        """Every idle worker resumes from its backup (at the start, after a resume or a
        rollback): its weights, version and stream position come from the state."""
        self._drain()
        for k in range(self.M):
            if self.status[k] == IDLE and not self.leaving[k]:
                self._answer(k, COMPUTE, weights=False)
        self.need_restart = False

    def _drain(self) -> None:
        """Receive the push every busy worker owes and discard it (counted)."""
        while any(s == BUSY for s in self.status):
            k = self._receive()
            self.log.discarded[k] += 1

    def finish(self) -> None:
        """Release the workers: drain the pushes in flight (discarded, counted), then tell every
        worker to stop -- or that the server diverged, so it raises the same error."""
        if not self.is_server or self.replay:
            return
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, FloatingPointError):
            # another failure: the abort hook ends the job; release whom we can without waiting
            for k in range(self.M):
                if self.status[k] == IDLE:
                    self._answer(k, FAILED, weights=False)
            return
        self._drain()
        command = DIVERGED if exc is not None else STOP  # Divergence is a FloatingPointError
        for k in range(self.M):
            if self.status[k] == IDLE:
                self._answer(k, command, weights=False)
        for k in range(self.M):
            self._complete(k)

    # ------------------------------------------------------------------------------ replay
    def _replay_source(self, t: int) -> int:
        if self.sources is not None:
            return int(self.sources[t])
        if len(self.streams) == 1 and 0 in self.streams:
            return 0
        return 1 + t % self.M

    def _replay_step(self) -> float:
        t = self.iteration
        tau = self.schedule(t)
        if tau > t:
            if self.schedule.explicit is not None:
                raise ValueError(f"replay schedule: delay {tau} at step {t + 1}, after only {t} "
                                 "updates")
            tau = t
        src = self._replay_source(t)
        k = max(src - 1, 0)
        backup = self.window[(t - tau) % (self.D + 1)]
        idx = self.streams[src].next()
        t0 = time.perf_counter()
        loss = self._gradient(param_views(self.params, backup), idx, self.grads)
        self.log.compute.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        self.rule.apply(self.grads.flat, backup, k)
        self.apply_time += time.perf_counter() - t0
        self.window[(t + 1) % (self.D + 1)] = self.params.flat
        self.seq[k] += 1
        self.samples += self.batch_size
        self.log.record(src, k, tau)
        return loss

    def _replay_round(self) -> float:
        losses = np.empty(self.M)
        for k in range(self.M):
            idx = self.streams[k + 1].next()
            losses[k] = self._gradient(self.params, idx, self.grads)
            self.round[k] = self.grads.flat
        self.rule.apply_round(self.round)
        for k in range(self.M):
            self._applied(k, 0)
        self.window[(self.iteration + 1) % (self.D + 1)] = self.params.flat
        return float(np.mean(losses))

    # ------------------------------------------------------------------------------ worker
    def _init_worker(self) -> None:
        P = self.P
        self.wbuf = np.empty(P + ANSWER_HEADER)
        self.wparams = param_views(self.params, self.wbuf[:P])
        self.gbuf = np.empty(P + PUSH_HEADER)
        self.gparams = param_views(self.params, self.gbuf[:P])
        self.sampler = self._stream(self.comm.rank)
        self.drawn = 0  # batches of this worker's stream drawn so far
        self.pushes = 0  # gradients pushed by this process
        self._send: Any = None

    def _seek(self, n: int) -> None:
        """Position this worker's stream before its batch ``n`` (the server's count of this
        worker's applied gradients: differs from ours after a resume or a rollback)."""
        if n < self.drawn:
            self.sampler, self.drawn = self._stream(self.comm.rank), 0
        while self.drawn < n:
            self.sampler.next()
            self.drawn += 1

    def work(self, should_stop: Any = None) -> None:
        """Worker ranks: pull, compute, push until the server releases this worker."""
        o, P, rank = self.options, self.P, self.comm.rank
        self.warmup()
        last = False
        while True:
            try:
                self.comm.recv_(self.wbuf, 0, TAG_PARAMS, timeout=self.worker_timeout)
            except CommError:
                raise CommError(
                    f"dcasgd worker rank {rank}: no answer from the server (rank 0) within "
                    f"{2 * o.timeout:g} s (twice dcasgd.timeout; the server has probably failed "
                    "or is stuck)") from None
            self._complete_push()
            command = int(self.wbuf[P + A_COMMAND])
            if command == STOP:
                return
            if command == DIVERGED:
                raise _divergence(f"training diverged (reported by the dcasgd server to worker "
                                  f"rank {rank})")
            if command == FAILED:
                raise RuntimeError(f"dcasgd worker rank {rank}: the server failed")
            if last:
                raise RuntimeError(f"dcasgd worker rank {rank}: new weights after its last push")
            self._seek(int(self.wbuf[P + A_SEQ]))
            if o.slow_rank == rank and o.slow_seconds > 0:
                time.sleep(o.slow_seconds)
            if faults.ACTIVE:
                faults.iteration = self.drawn
                faults.before_step(rank, self.drawn)
            idx = self.sampler.next()
            t0 = time.perf_counter()
            loss = self._gradient(self.wparams, idx, self.gparams)
            compute = time.perf_counter() - t0
            if faults.ACTIVE:
                loss = faults.poison_loss(loss, rank, self.drawn)
            last = bool(should_stop is not None and should_stop())
            h = self.gbuf[P:]
            h[H_KIND] = KIND_LAST if last else KIND_GRADIENT
            h[H_VERSION] = self.wbuf[P + A_VERSION]
            h[H_SEQ] = self.drawn
            h[H_LOSS] = loss
            h[H_COMPUTE] = compute
            self.drawn += 1
            self.pushes += 1
            self._send = self.comm.isend(self.gbuf, 0, TAG_GRAD)

    def _complete_push(self) -> None:
        if self._send is not None:
            self.comm.waitall([self._send], timeout=self.worker_timeout)
            self._send = None

    # ------------------------------------------------------------------------------ state
    def global_params(self) -> Any:
        return self.params

    def warmup(self) -> None:
        super().warmup()
        from pintopt.kernels import delay_compensation as dc

        a = np.zeros(2)
        dc.compensate(a, a, a, 0.0, a.copy())
        dc.compensate_adaptive(a, a, a, a.copy(), 1.0, 0.5, 1.0, a.copy())
        dc.compensate_walk(a, a.copy(), a, 0.0, 0.0, a.copy())

    def history_columns(self) -> dict[str, Any]:
        """The delay of every gradient applied since the last evaluation (``staleness``, with
        the worker rank that sent it in ``sources``; replay: the stream, 0 = the shared one), its
        mean and maximum, the cumulative distribution ``staleness_counts[d]``, gradients applied
        and discarded so far (``in_flight``: pushes owed at this evaluation, which an early stop
        discards after it), effective passes (``passes``: samples in applied gradients /
        training set), the server's traffic (the loop's ``bytes`` column counts ``loop_comm``,
        the server's private communicator) and its time split (seconds so far: in receives,
        applying, answering)."""
        cols = self.log.columns()
        cols.update({
            "passes": self.samples / self.data.x_train.shape[0],
            "server_bytes_sent": int(self.comm.bytes_sent) if not self.replay else 0,
            "server_bytes_received": int(self.bytes_received),
            "server_wait_time": self.wait_time,
            "server_apply_time": self.apply_time,
            "server_answer_time": self.answer_time,
            # pushes owed now: discarded if the run stops here, recomputed by a resume
            "in_flight": 0 if self.replay else sum(s == BUSY for s in self.status),
        })
        return cols

    def state(self) -> dict[str, Any]:
        arrays = {f"params/{k}": v.copy() for k, v in self.params.as_dict().items()}
        opt_state = self.opt.state_dict()
        arrays.update({f"opt/{i}": s for i, s in enumerate(opt_state["slots"])})
        if self.rule.meansquare is not None:
            arrays["meansquare"] = self.rule.meansquare.copy()
        meta: dict[str, Any] = {
            "iteration": self.iteration, "opt_k": opt_state["k"], "lr": self.opt.lr,
            "n_slots": len(opt_state["slots"]), "rule": self.options.rule,
            "mode": self.options.mode, "workers": self.M, "seq": self.seq.tolist(),
            "samples": self.samples, "log": self.log.state(),
        }
        if self.replay:
            arrays["window"] = self.window.copy()
            meta["window"] = self.D
        else:
            for k in range(self.M):
                arrays[f"backup/{k + 1}"] = self.backup[k, : self.P].copy()
            meta["backup_version"] = self.backup_version.tolist()
        return {"arrays": arrays, "meta": meta}

    def load_state(self, state: dict[str, Any]) -> None:
        """Server: the weights, optimiser, mean squares, backups and stream positions (the pushes
        in flight are drained and discarded first; every worker restarts from its backup at the
        next step). Workers: nothing -- the server's first answer positions them."""
        arrays, meta = state["arrays"], state["meta"]
        if not self.is_server:
            return
        for key in ("rule", "mode", "workers"):
            mine = getattr(self.options, key) if key != "workers" else self.M
            if meta[key] != mine:
                raise ValueError(f"the checkpoint's dcasgd {key} is {meta[key]!r}, this run's "
                                 f"{mine!r}")
        if self.replay and int(meta["window"]) != self.D:
            raise ValueError(f"option dcasgd.delays: the checkpoint's replay window holds delays "
                             f"up to {meta['window']}, this run's up to {self.D}")
        if not self.replay:
            self._drain()
            for k in range(self.M):
                self._complete(k)
        params = self.model.params_from_dict(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")})
        self.params.flat[...] = params.flat
        self.opt.load_state_dict(
            {"k": meta["opt_k"], "slots": [arrays[f"opt/{i}"] for i in range(meta["n_slots"])]})
        self.opt.lr = float(meta["lr"])
        if self.rule.meansquare is not None:
            self.rule.meansquare[...] = arrays["meansquare"]
        self.iteration = int(meta["iteration"])
        self.seq = np.asarray(meta["seq"], dtype=np.int64)
        self.samples = int(meta["samples"])
        self.log.load(meta["log"])
        if self.replay:
            self.window[...] = arrays["window"]
            for src in list(self.streams):
                self.streams[src] = self._stream(src)
                for _ in range(int(self.seq[max(src - 1, 0)])):
                    self.streams[src].next()
        else:
            for k in range(self.M):
                self.backup[k, : self.P] = arrays[f"backup/{k + 1}"]
            self.backup_version = np.asarray(meta["backup_version"], dtype=np.int64)
            self.need_restart = True  # (a worker that pushed its last gradient stays away)

    @classmethod
    def memory_estimate(cls, spec: Any, train: Any, options: Any, size: int, m_train: int,
                        m_val: int) -> dict[str, int]:
        """Bytes on the server (the largest rank): weights, direction, receive buffer and optimiser
        moments; one backup per worker; the mean squares and the round's gradients where the rule
        needs them; the checkpoint/rollback copies of all that; a gradient and evaluation."""
        o = options if isinstance(options, DCASGDOptions) else DCASGDOptions()
        P = n_params(spec)
        M = max(o.replay_workers, 1) if o.mode == "replay" else max(size - 1, 1)
        slots = {"sgd": 0, "momentum": 1, "adam": 2}.get(train.optimizer, 2)
        ms = (M if o.meansquare == "worker" else 1) if o.rule == "dcasgd_a" else 0
        rows = M + (M if o.rule in SYNC_RULES else 0) + ms
        if o.mode == "replay":  # the weight window instead of backups
            rows = (M if o.rule in SYNC_RULES else 0) + ms + _max_delay(o) + 1
        state = (1 + slots + ms + (M if o.mode != "replay" else _max_delay(o) + 1)) * P
        batch = train.batch_size or m_train
        return {
            "params": 8 * P * (4 + slots),
            "backups": 8 * P * rows,
            "copies": 8 * state * (2 if train.on_divergence == "rollback" else 1),
            "training": activation_bytes(spec, batch, training=True),
            "evaluation": activation_bytes(spec, max(m_train, m_val), training=False),
        }


def _divergence(message: str) -> Exception:
    """The loop's :class:`~pintopt.loop.Divergence` (the CLI turns it into exit status 3 on every
    rank), imported here: the loop imports the methods' base module at its own import."""
    from pintopt.loop import Divergence

    return Divergence(message)


def _max_delay(o: DCASGDOptions) -> int:
    try:
        return DelaySchedule(o.delays).max_delay
    except ValueError:
        return 0
