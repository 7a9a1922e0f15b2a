"""Memory: refuse a run that cannot fit before anything large is allocated.

The budget per rank is ``train.memory_limit_gb`` or 80% of the machine's memory (or of the
cgroup limit a batch system or container sets), divided by the ranks sharing a node; the need is
the method's estimate from shapes alone (``Method.memory_estimate``) plus the dataset every rank
holds. See docs/reliability.md, "Memory".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pintopt.config import Config, ConfigError


def _cgroup_limit() -> float | None:
    """The memory limit of this process's cgroup (v2 or v1), if any: batch systems and containers
    set one below the machine's memory."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                path = path.lstrip("/")
                if controllers == "":  # v2 unified hierarchy
                    candidates.append(Path("/sys/fs/cgroup", path, "memory.max"))
                elif "memory" in controllers.split(","):
                    candidates.append(Path("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes"))
    except (OSError, ValueError):
        pass
    candidates += [
        Path("/sys/fs/cgroup/memory.max"),
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ]
    limits = []
    for f in candidates:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            limits.append(float(text))
    return min(limits) if limits else None


def memory_budget(cfg: Config, comm: Any) -> tuple[float, str]:
    """Bytes one rank may use, and where the figure comes from (collective: the smallest over
    ranks, so every rank takes the same decision)."""
    if cfg.train.memory_limit_gb:
        return cfg.train.memory_limit_gb * 2**30, "train.memory_limit_gb"
    node = comm.node_size()
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = math.inf
    limit = _cgroup_limit()
    mem = min(total, limit) if limit else total
    budget = comm.allreduce(0.8 * mem / node, op="min")
    where = "80% of the memory limit" if limit and limit < total else "80% of the machine's memory"
    return budget, f"{where} shared by {node} rank(s) on a node"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _data_bytes_estimate(cfg: Config) -> tuple[int, str] | None:
    """Peak bytes of generating a synthetic dataset (arrays, split and standardised copies, the
    broadcast), from the options alone; None for file sources (their size is the file's)."""
    d = cfg.data
    if d.dataset == "swissroll":
        n = d.n or 256
        rows, cols = 2 * (2 * n + 1), 2
    elif d.dataset == "ellipses":
        n = d.n or 1000
        rows, cols = 2 * n, 2
    elif d.dataset == "overparam":
        rows, cols = d.n or 80, d.n_features or 2000
    else:
        return None
    return 8 * rows * (cols + 1) * 4, "data.n" if d.dataset != "overparam" else "data.n/n_features"


def check_data_memory(cfg: Config, comm: Any, budget: float, source: str) -> None:
    est = _data_bytes_estimate(cfg)
    if est is not None and est[0] > budget:
        raise ConfigError(
            f"option {est[1]}: dataset {cfg.data.dataset} would need about {gib(est[0])} per "
            f"rank, more than {gib(budget)} ({source}); use a smaller {est[1]}"
        )


def memory_need(cfg: Config, spec: Any, data: Any, size: int) -> dict[str, int]:
    """Bytes per rank, by item: the method's estimate (see ``Trainer.memory_estimate``) plus the
    dataset every rank holds."""
    from pintopt.methods import METHODS

    cls = METHODS[cfg.train.method]
    need = dict(cls.memory_estimate(spec, cfg.train, cfg.method, size, data.m_train, data.m_val))
    need["data"] = sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return need


def check_memory(cfg: Config, spec: Any, data: Any, comm: Any, budget: float, source: str):
    """Refuse, before allocating, a model and batch that cannot fit in memory on a rank."""
    try:
        need = memory_need(cfg, spec, data, comm.size)
    except ValueError as exc:  # an estimate may validate the layout (more ranks than layers)
        raise ConfigError(str(exc)) from None
    total = sum(need.values())
    if total > budget:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in sorted(need.items(), key=lambda kv: -kv[1]))
        raise ConfigError(
            f"options model.depth/model.width/train.batch_size: the run needs about "
            f"{gib(total)} per rank ({parts}), more than {gib(budget)} ({source}); reduce "
            "depth, width or batch_size, use more ranks or set train.memory_limit_gb"
        )


# ---------------------------------------------------------------------------------------------
# setup
