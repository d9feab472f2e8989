"""Where work runs: the device, the float precision, and this process's place in a torchrun launch.

One home for each: `resolve_device` (what --device means), `autocast` (the one precision switch of
inference and training) and `launch` (torchrun's environment variables, read nowhere else).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import FastMaskError, ParameterError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA where PyTorch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N" as a torch.device.
    Raises ParameterError for CUDA without a GPU, FastMaskError for an unknown name."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device", "{0} cuda asked for, but PyTorch sees no CUDA GPU here; use {0} cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise FastMaskError(f"unknown device {device!r}; use auto, cpu or cuda") from None


def check_precision(precision: str, device: torch.device) -> None:
    """Raises FastMaskError unless `precision` is one of PRECISIONS and runs on `device` (fp16: CUDA only)."""
    if precision not in PRECISIONS:
        raise FastMaskError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise FastMaskError("fp16 needs a CUDA device; on the CPU use bf16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for `precision` on `device`: nothing for fp32, else torch.autocast to bf16 / fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@dataclass(frozen=True)
class Launch:
    """This process in a torchrun launch: `rank` of `world` processes, `local_rank` of `local_world` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch() -> Launch:
    """What torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) says of this process;
    a plain process is rank 0 of 1."""
    env = os.environ
    return Launch(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")),
                  int(env.get("LOCAL_WORLD_SIZE", "1")))


def rank_device(device: str, local_rank: int) -> str:
    """This rank's own GPU (`cuda:LOCAL_RANK`, wrapping when ranks outnumber GPUs), or `device` as given."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


ONEDNN_CACHE = 128  # compiled primitives oneDNN keeps: every layer of one input shape


def limit_onednn_cache() -> None:
    """Cap oneDNN's cache of compiled primitives (PyTorch's CPU convolutions; default 1024, one per layer and
    input shape). Photos of many sizes, or training's scale jitter, fill it: RSS grew by 1.1 GB over 60 shapes
    at size 800 in inference. 128 holds every layer of one shape, so same-size inputs run as fast. oneDNN
    reads it at the process's first convolution: called before one (the Proposer, training), not on import,
    so that importing us changes nothing; a value the user set is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))

