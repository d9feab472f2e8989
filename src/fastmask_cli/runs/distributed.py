"""`fastmask propose` under torchrun: each process proposes its slice, process 0 merges them."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.files import output_lock, writable_file
from ..io.results_file import images_json_path
from .folder import ProposeSummary, finished_run, propose_folder, run_records
from .merge import MergeSummary, merge_results
from .plan import plan_images, shard_path

if TYPE_CHECKING:
    from ..inference.proposer import Proposer


def propose_torchrun(proposer: Proposer, images_dir: Path, out: Path, *, rank: int, world: int, fmt: str = "coco",
                     **options: Any) -> tuple[ProposeSummary, MergeSummary | None]:
    """Under torchrun: propose this rank's slice into its shard file, wait for every rank, and on rank 0
    merge the shards into `out` (then remove them). Returns this rank's summary and, on rank 0, the merge's."""
    out = writable_file(Path(out), "the results")  # its folder made before rank 0 puts the lock file there
    with output_lock(out) if rank == 0 else contextlib.nullcontext():  # the other ranks lock their shard files
        return _propose_ranks(proposer, images_dir, out, rank=rank, world=world, fmt=fmt, **options)


def _propose_ranks(proposer: Proposer, images_dir: Path, out: Path, *, rank: int, world: int, fmt: str,
                   **options: Any) -> tuple[ProposeSummary, MergeSummary | None]:
    import torch.distributed as dist

    if options.get("resume"):  # a finished run leaves no shards behind: recognise the merged file itself
        summary = ProposeSummary(out=str(out), file_list=str(images_json_path(out)))
        _, run = run_records(proposer, options["weights_id"], images_dir, options.get("ann"),
                             plan_images(images_dir, options.get("ann")), None, fmt)
        if finished_run(out, run, summary):
            return summary, None
    if not dist.is_initialized():  # gloo only synchronises here: no tensors travel, on GPUs or not
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        shards = [shard_path(out, k, world) for k in range(1, world + 1)]
        summary = propose_folder(proposer, images_dir, shards[rank], shard=(rank + 1, world), fmt=fmt, **options)
        dist.barrier()
        merged = None
        if rank == 0:
            merged = merge_results(shards, out, fmt=fmt)
            for path in shards:
                path.unlink()
                images_json_path(path).unlink()
        return summary, merged
    finally:
        dist.destroy_process_group()
