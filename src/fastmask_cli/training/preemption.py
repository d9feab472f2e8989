"""Preemption (Slurm's SIGTERM before a job is stopped, SIGUSR1 at its time limit): every process stops
at the same step after a checkpoint, and DataLoader workers leave the stopping to the main process.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist


class StopSignals:
    """SIGTERM and SIGUSR1 noted, not obeyed at once: the loop stops at the next step that every process
    agrees on, after writing a checkpoint. Installed only from the main thread (signals go there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def worker_init(worker_id: int) -> None:
    """DataLoader workers leave stopping to the main process (a worker killed by Slurm's SIGTERM would
    fail the main process before it checkpoints), and die with it however it ends (PR_SET_PDEATHSIG)."""
    for sig in (*StopSignals.SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)


class SkipBatches(torch.utils.data.Sampler):
    """`sampler` without its first `skip` indices: the rest of an epoch that a checkpoint interrupted."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def stop_agreed(stop: StopSignals, world: int, device: torch.device) -> bool:
    """Whether any process has been asked to stop; every process gets the same answer at the same step."""
    asked = stop.received is not None
    if world == 1:
        return asked
    flag = torch.tensor([float(asked)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and stop.received is None:
        stop.received = "another process's signal"
    return bool(flag.item())
