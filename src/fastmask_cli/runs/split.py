"""A run split into shards and joined into the very file one process writes: the one mechanism behind
`propose --jobs` (worker processes taking shards in turn, `jobs.py`) and torchrun (a shard per rank,
`distributed.py`). `--shard K/N` runs one shard of a job array; `fastmask merge` joins those.

Shard k of n of a run into `out` is `plan.shard_path(out, k, n)`: an ordinary resumable
`propose_folder` run over `ImagePlan.shard(k, n)`. A split run ends by `join_shards`: the shards merged
into `out` in file order (`merge_results`), then removed with their image lists. A finished run leaves
no shards behind, so a resume recognises the merged file itself (`finished_split`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ParameterError
from ..io.results_file import images_json_path
from .folder import ProposeSummary, finished_run, run_records
from .merge import MergeSummary, merge_results
from .partial import partial_path
from .plan import ImagePlan, shard_path

if TYPE_CHECKING:
    from ..inference.proposer import Proposer


def shard_paths(out: Path, n: int) -> list[Path]:
    """The n shard files of a run into `out`, in order."""
    return [shard_path(out, k, n) for k in range(1, n + 1)]


def leftover_shards(out: Path) -> dict[Path, int]:
    """Files that split runs left beside `out` (shards, their partial logs and image lists) -> their shard count."""
    stem, suffix = (out.stem, out.suffix) if out.suffix else (out.name, "")
    pattern = re.compile(rf"{re.escape(stem)}\.shard-\d+-of-(\d+){re.escape(suffix)}(\.partial|\.images\.json)?|"
                         rf"{re.escape(stem)}\.shard-\d+-of-(\d+)\.images\.json")
    found = {}
    for path in out.parent.glob(f"{stem}.shard-*"):
        match = pattern.fullmatch(path.name)
        if match:
            found[path] = int(match.group(1) or match.group(3))
    return found


def split_to_resume(out: Path) -> int | None:
    """How the interrupted run into `out` split the images: 1 (one process), its count of shards, or None.
    Raises ParameterError where runs split several ways were interrupted."""
    found = leftover_shards(out)
    counts = {n for path, n in found.items() if path.name.endswith(".partial")}
    if len(counts) > 1:
        raise ParameterError("resume", f"runs split {len(counts)} ways were interrupted into {out}; run without {{}} "
                             "to start over")
    if counts:
        return counts.pop()
    finished = set(found.values())  # every shard done, the join interrupted
    return finished.pop() if len(finished) == 1 else (1 if partial_path(out).exists() else None)


def finished_split(proposer: Proposer, weights_id: str, images_dir: Path, ann: Path | None, plan: ImagePlan, fmt: str,
                   out: Path) -> ProposeSummary | None:
    """The summary of this very run where `out` holds it finished (a resume then redoes nothing), else None."""
    summary = ProposeSummary(out=str(out), ignored=plan.ignored, file_list=str(images_json_path(out)))
    _, run = run_records(proposer, weights_id, images_dir, ann, plan, None, fmt)
    return summary if finished_run(out, run, summary) else None


def join_shards(shards: list[Path], out: Path, fmt: str, as_one_run: bool = False) -> MergeSummary:
    """Merge `shards` into `out` in order (`as_one_run`: recorded as one unsplit run, byte for byte what one
    process writes), then remove them and their image lists."""
    merged = merge_results(shards, out, fmt=fmt, as_one_run=as_one_run)
    for path in shards:
        path.unlink()
        images_json_path(path).unlink()
    return merged
