"""`fastmask propose` under torchrun: a split run (split.py), a shard per process, joined by process 0."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.files import output_lock
from ..io.results_file import storage_format, writable_results
from .folder import ProposeSummary, propose_folder
from .merge import MergeSummary
from .plan import plan_images
from .split import finished_split, join_shards, shard_paths

if TYPE_CHECKING:
    from ..inference.proposer import Proposer


def propose_torchrun(proposer: Proposer, images_dir: Path, out: Path, *, rank: int, world: int, fmt: str = "coco",
                     **options: Any) -> tuple[ProposeSummary, MergeSummary | None]:
    """Under torchrun: propose this rank's shard into its shard file, wait for every rank, and on rank 0
    join the shards into `out`. Returns this rank's summary and, on rank 0, the merge's."""
    out = writable_results(Path(out), fmt)  # its folder made before rank 0 puts the lock file there
    with output_lock(out) if rank == 0 else contextlib.nullcontext():  # the other ranks lock their shard files
        return _propose_ranks(proposer, images_dir, out, rank=rank, world=world, fmt=fmt, **options)


def _propose_ranks(proposer: Proposer, images_dir: Path, out: Path, *, rank: int, world: int, fmt: str,
                   **options: Any) -> tuple[ProposeSummary, MergeSummary | None]:
    import torch.distributed as dist

    if options.get("resume"):
        plan = options.get("plan") or plan_images(images_dir, options.get("ann"))
        if finished := finished_split(proposer, options["weights_id"], images_dir, options.get("ann"), plan, fmt, out):
            return finished, None
    if not dist.is_initialized():  # gloo only synchronises here: no tensors travel, on GPUs or not
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        shards = shard_paths(out, world)
        summary = propose_folder(proposer, images_dir, shards[rank], shard=(rank + 1, world), fmt=storage_format(fmt), **options)
        dist.barrier()
        return summary, join_shards(shards, out, fmt) if rank == 0 else None
    finally:
        dist.destroy_process_group()
