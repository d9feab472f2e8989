"""`propose --jobs N`: one folder proposed by N worker processes on the CPU, joined into the very file one
process writes.

Why: on the CPU the network's threads keep every core busy only while the network runs; decoding,
pasting and encoding masks run on one core in between. N processes of cores/N threads each keep every
core busy (docs/speed.md: 2 processes x 1 thread against 1 x 2 on 2 cores).

How: a split run (split.py): the sorted image list is cut into 4N contiguous shards (so that a fast
worker takes more of them), and forked workers take them in order, each proposing one shard at a time with
`propose_folder` into `<out stem>.shard-K-of-S<suffix>`: resumable and never half-written as any run.
When all are done, `join_shards` streams the shards into `out` in file order (byte for byte what one
process writes, `.images.json` included) and removes them. Workers are forked, not spawned: they
inherit the loaded weights and the image list instead of importing PyTorch and reading the folder
again (about a second each).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from ..errors import FastMaskError, ParameterError
from ..io.files import output_lock
from ..io.results_file import check_format, images_json_path, storage_format, writable_results
from .folder import ProposeSummary, finished_run, propose_folder, run_records
from .partial import PartialLog, partial_path
from .plan import ImagePlan, plan_images
from .split import finished_split, join_shards, leftover_shards, shard_paths, split_to_resume

if TYPE_CHECKING:
    from ..inference.proposer import Proposer

SHARDS_PER_JOB = 4
MAX_AUTO_JOBS = 8  # each worker holds its own buffers (about 0.5 GB at top-1000): a bound on memory


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's share), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_jobs(jobs: str | int, device_type: str, *, torchrun: bool = False, shard: tuple[int, int] | None = None) -> int:
    """What `--jobs` means: a number, or "auto" (one per core, at most MAX_AUTO_JOBS, on the CPU; one on a
    GPU, where torchrun runs one process per GPU; one where torchrun's ranks or a job array's `shard`
    already split the images). The one rule for which splits combine: any one of the three, or `--jobs`
    within each `--shard`. Raises ParameterError (FastMaskError for torchrun's) for anything else."""
    if torchrun and shard:
        raise FastMaskError("--shard and torchrun both split the images: use one of them")
    if jobs == "auto":
        return 1 if torchrun or shard else min(cpu_cores(), MAX_AUTO_JOBS) if device_type == "cpu" else 1
    try:
        count = int(jobs)
    except ValueError:
        raise ParameterError("jobs", f"{{}} must be a number or auto, not {jobs!r}") from None
    if count < 1:
        raise ParameterError("jobs", f"{{}} must be at least 1, not {count}")
    if count > 1 and device_type != "cpu":
        raise ParameterError("jobs", f"{{}} {count} runs worker processes on the CPU; on GPUs run one process per GPU "
                             "with torchrun (docs/cli.md, \"Whole datasets\")")
    if count > 1 and "fork" not in mp.get_all_start_methods():
        raise ParameterError("jobs", "{} needs processes started by fork (Linux, macOS); use 1 here")
    if count > 1 and torchrun:
        raise FastMaskError("--jobs and torchrun both start processes: use one of them (--jobs 1 under torchrun)")
    if count > 1 and shard:
        raise ParameterError("jobs", "{} and --shard both split the images: use one of them (or --jobs 1 in each shard)")
    return count


def worker_threads(jobs: int) -> int:
    """Threads of each of `jobs` workers: the cores shared among them."""
    return max(1, cpu_cores() // jobs)


def propose_jobs(proposer: Proposer, images_dir: Path, out: Path, *, jobs: int, weights_id: str,
                 ann: Path | None = None, resume: bool = False, fmt: str = "coco",
                 threads: int | None = None, plan: ImagePlan | None = None, on_start: Callable[[int], None] | None = None,
                 on_image: Callable[[str], None] | None = None, **options: Any) -> ProposeSummary:
    """`propose_folder` over `images_dir` in `jobs` forked worker processes of `threads` threads each
    (default: the cores over `jobs`), merged into `out`: the same results file and `.images.json` as one
    process writes. `options` are propose_folder's (vis_dir, batch_size, max_pixels, workers); `plan`, the images
    as `plan_images` found them (default: every image under `images_dir`).
    on_start(images to do) and on_image(file) report progress as propose_folder's do. Raises what
    propose_folder raises; a worker's error stops the others and is raised here."""
    out = Path(out)
    check_format(fmt)
    jobs = resolve_jobs(jobs, proposer.device.type, shard=options.get("shard"))
    plan = plan or plan_images(images_dir, ann)
    writable_results(out, fmt)
    with output_lock(out):  # before anything is cleared: another run may be writing these files
        return _propose_jobs(proposer, images_dir, out, plan, jobs=jobs, weights_id=weights_id, ann=ann, resume=resume,
                             fmt=fmt, threads=threads, on_start=on_start, on_image=on_image, **options)


def _propose_jobs(proposer: Proposer, images_dir: Path, out: Path, plan: ImagePlan, *, jobs: int, weights_id: str,
                  ann: Path | None, resume: bool, fmt: str, threads: int | None, on_start: Callable[[int], None] | None,
                  on_image: Callable[[str], None] | None, **options: Any) -> ProposeSummary:
    """`propose_jobs`' work, its output locked."""
    count = split_to_resume(out) if resume else None  # a resumed run keeps its split, whatever `jobs` is now
    if count is None:
        count = 1 if min(jobs, len(plan.files)) <= 1 else min(SHARDS_PER_JOB * jobs, len(plan.files))
    if not resume and out.parent.is_dir():  # the files of interrupted runs, which this one starts over
        for path in [*leftover_shards(out), partial_path(out)]:
            path.unlink(missing_ok=True)
    if count == 1:  # one process (a one-process log cannot be split)
        return propose_folder(proposer, images_dir, out, weights_id=weights_id, ann=ann, resume=resume, fmt=fmt,
                              plan=plan, on_start=on_start, on_image=on_image, **options)
    if resume and (finished := finished_split(proposer, weights_id, images_dir, ann, plan, fmt, out)):
        return finished
    shards = shard_paths(out, count)
    jobs = min(jobs, count)

    records = dict(weights_id=weights_id, ann=ann, resume=resume, fmt=storage_format(fmt))  # the shards'

    todo = _left_to_do(proposer, images_dir, plan, shards, records) if resume else len(plan.files)
    threads = threads or worker_threads(jobs)
    started = time.perf_counter()
    done = _run_workers(proposer, images_dir, shards, plan, jobs, threads, lambda: on_start and on_start(todo),
                        on_image, {**options, **records})
    summary = ProposeSummary(out=str(out), ignored=plan.ignored, file_list=str(images_json_path(out)))
    summary.seconds = time.perf_counter() - started
    merged = join_shards(shards, out, fmt, as_one_run=True)
    summary.images, summary.proposals, summary.skipped = merged.images, merged.proposals, merged.skipped
    summary.resumed = sum(part.resumed for part in done)
    summary.notes = [note for part in done for note in part.notes]
    return summary


def _left_to_do(proposer: Proposer, images_dir: Path, plan: ImagePlan, shards: list[Path], records: dict[str, Any]) -> int:
    """Images that the shards' partial logs and finished shard files do not hold yet (what a resume redoes).
    Raises as propose_folder's resume would, before any worker starts."""
    left = 0
    for k, path in enumerate(shards, 1):
        mine = plan.shard(k, len(shards))
        header, run = run_records(proposer, records["weights_id"], images_dir, records["ann"], plan, (k, len(shards)),
                                  records["fmt"])
        if finished_run(path, run, ProposeSummary(out=str(path))):
            continue
        log = PartialLog(partial_path(path), header)
        log.resume(plan.ids)
        left += len(log.todo(mine))
    return left


def _run_workers(proposer: Proposer, images_dir: Path, shards: list[Path], plan: ImagePlan, jobs: int, threads: int,
                 started: Callable[[], Any], on_image: Callable[[str], None] | None,
                 options: dict[str, Any]) -> list[ProposeSummary]:
    """Fork `jobs` workers that take the shards in order; relay their progress; the shards' summaries in order."""
    context = mp.get_context("fork")
    next_shard = context.Value("i", 0)
    events = context.Queue()
    workers = [context.Process(target=_work, args=(proposer, images_dir, shards, plan, next_shard, events, threads, options),
                               name=f"fastmask-job-{j + 1}") for j in range(jobs)]
    # OpenCV's thread pool does not survive a fork (a forked worker hung in it): stopped for the fork, then restored
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for worker in workers:
            worker.start()
    finally:
        cv2.setNumThreads(opencv_threads)
    started()  # after the fork: a progress display's thread must not be running when it happens
    done: dict[int, ProposeSummary] = {}
    try:
        while len(done) < len(shards):
            try:
                kind, value = events.get(timeout=0.5)
            except queue.Empty:
                if any(w.exitcode not in (None, 0) for w in workers) or not any(w.is_alive() for w in workers):
                    raise FastMaskError("a worker process stopped before its shard was done (out of memory?); "
                                        "rerun with --resume to continue") from None
                continue
            if kind == "image" and on_image:
                on_image(value)
            elif kind == "shard":
                done[value[0]] = value[1]
            elif kind == "error":
                raise value
            elif kind == "interrupted":
                raise KeyboardInterrupt
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too, `kill -INT` only this process: pass it on
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGINT)
        for worker in workers:  # each stops at its next image and keeps what it finished
            worker.join(timeout=10)
        raise
    finally:
        for worker in workers:  # each shard's partial log keeps what it finished (a cut line is dropped on resume)
            if worker.is_alive():
                worker.terminate()
            worker.join()
    return [done[k] for k in sorted(done)]


def _work(proposer: Proposer, images_dir: Path, shards: list[Path], plan: ImagePlan, next_shard: Any, events: Any,
          threads: int, options: dict[str, Any]) -> None:
    """One worker: `threads` threads; shards taken in turn until none are left, progress sent as events."""
    import torch

    from ..inference.backend import set_session_threads

    # PyTorch's OpenMP pool did not come with the fork, and a forked OpenMP program that starts threads can
    # hang in it: PyTorch's share (mask decoding) runs on one thread, the network on `threads`
    torch.set_num_threads(1)
    set_session_threads(threads)
    try:
        while True:
            with next_shard.get_lock():
                k, next_shard.value = next_shard.value, next_shard.value + 1
            if k >= len(shards):
                return
            part = propose_folder(proposer, images_dir, shards[k], shard=(k + 1, len(shards)), plan=plan,
                                  on_image=lambda rel: events.put(("image", rel)), **options)
            events.put(("shard", (k, part)))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the group; the parent stops the run
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes it on too: once is enough
        events.put(("interrupted", None))
    except Exception as exc:  # noqa: BLE001 - raised again in the parent, which turns it into one line
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - an exception that does not travel: its type and first line do
            first = str(exc).splitlines()[0] if str(exc) else ""
            exc = FastMaskError(f"a worker failed: {type(exc).__name__}: {first}")
        events.put(("error", exc))
    finally:
        events.close()
        events.join_thread()  # everything sent reaches the parent before this process exits

