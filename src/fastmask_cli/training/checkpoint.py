"""A training run's folder and its `checkpoint.pt`: everything needed to resume, mid-epoch too.

`checkpoint.pt` is a `fastmask-train` file (modeling/checkpoint.py reads and writes it): the model,
its config and the settings, the optimiser and grad scaler, the epochs and iterations done, the best
validation so far and, when a stop interrupted an epoch, where it stood (`midway`: batches read,
steps taken, the random state and loss totals of every process).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import FastMaskError
from ..io.files import atomic_path
from ..modeling.checkpoint import TRAINING_FORMAT, UnreadableCheckpoint, load_payload, save_payload
from ..modeling.model import FastMask
from .settings import TrainSettings

CHECKPOINT, MODEL, BEST, LOG = "checkpoint.pt", "model.pt", "best.pt", "log.jsonl"


def save_training_state(path: Path, model: FastMask, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                         settings: TrainSettings, epoch: int, iteration: int, best: dict | None, init: str | None,
                         midway: dict | None = None, last_record: dict | None = None) -> None:
    """`epoch` epochs finished; `midway` (steps, world, rng per rank, loss totals) where the next one is under way;
    `last_record` the last finished epoch's log line, restored on resume where a kill lost it (`restore_log`)."""
    payload = {"format": TRAINING_FORMAT, "version": 1, "config": model.config.to_dict(), "settings": settings.to_dict(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict() if scaler is not None else None,
               "epoch": epoch, "iteration": iteration, "best": best, "init": init, "midway": midway,
               "last_record": last_record}
    save_payload(path, payload)


def restore_log(path: Path, record: dict | None) -> bool:
    """Append `record` (an epoch's line, from checkpoint.pt) to the log at `path` unless a line of its epoch is
    there: the checkpoint is written before the log line, so a kill between the two lost only that line.
    A last line cut short by the kill is dropped first. Returns whether the log was changed."""
    if record is None:
        return False
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    kept, changed = [], False
    for line in lines:
        try:
            kept.append((json.loads(line), line if line.endswith("\n") else line + "\n"))
        except ValueError:
            changed = True  # half a line: what the kill interrupted
    if not any(entry.get("type") == "epoch" and entry.get("epoch") == record["epoch"] for entry, _ in kept):
        kept.append((record, json.dumps(record) + "\n"))
        changed = True
    if changed:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line for _, line in kept))
    return changed


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = load_payload(path)
    except UnreadableCheckpoint:  # any unreadable file is the same failure for the user
        raise FastMaskError(f"{path} is not a readable training checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask training checkpoint")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
