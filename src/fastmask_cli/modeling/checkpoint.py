"""Checkpoint files: the one place that reads (`torch.load`) and writes them.

A checkpoint is a dict of plain tensors and settings, read with `torch.load(weights_only=True)`: a
file that carries pickled code is refused. Two formats carry a FastMask network with its config, so
the network is rebuilt exactly: `fastmask` (weights, config and how they were trained: what
`--weights` takes and `weights/` ships) and `fastmask-train` (a run's `checkpoint.pt`: the same plus
the optimiser and where the run stands; training/checkpoint.py). A body's ImageNet state dict is read
here too (bodies/imagenet.py).
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import FastMaskError
from ..io.files import NoRoom, atomic_path
from .config import INFERENCE_KEYS, FastMaskConfig

CHECKPOINT_FORMAT = "fastmask"
TRAINING_FORMAT = "fastmask-train"


class UnreadableCheckpoint(FastMaskError):
    """A file `torch.load` cannot read safely: `code` when it carries pickled Python objects (which
    could run code), `damaged` when its bytes fail the zip's own checks (`check_crc`), else corrupt or not
    a PyTorch file; `reason` is the loader's first line, or what failed."""

    def __init__(self, path: Path, code: bool, reason: str, damaged: bool = False) -> None:
        self.path, self.code, self.reason, self.damaged = path, code, reason, damaged
        super().__init__(f"{path} is damaged: {reason}" if damaged else
                         f"{path} is not a readable checkpoint (corrupt or not a PyTorch file)" if not code else
                         f"refusing to load {path}: it carries pickled Python objects, which could run code "
                         "(only tensors and plain settings are accepted)")


def check_crc(path: Path) -> None:
    """Refuse a zip checkpoint (what `torch.save` writes) whose bytes changed after it was written:
    `torch.load` does not check the CRC-32 the zip keeps of every entry, so a flipped bit in a tensor
    would load silently as other weights. Reading the file once more costs little beside loading it."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format, or not a checkpoint at all: torch.load names the problem
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as exc:
        detail = f"its zip structure is broken ({exc})"
    else:
        detail = f"{bad} fails its CRC-32 check (its bytes changed after it was written)" if bad else None
    if detail:
        raise UnreadableCheckpoint(Path(path), False, f"{detail}; use an intact copy", damaged=True)


def load_payload(path: Path) -> Any:
    """What the file at `path` holds, as tensors and plain values, on the CPU, its CRC checked first
    (`check_crc`). Raises UnreadableCheckpoint."""
    check_crc(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = "Unsupported global" in str(exc)  # a class or function, i.e. code, not data
        raise UnreadableCheckpoint(Path(path), code, str(exc).splitlines()[0] if str(exc) else "") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UnreadableCheckpoint(Path(path), False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with `torch.save`, atomically (temporary file, then rename). torch reports a write
    that the disk cut short (full, or a file size limit) as a RuntimeError: that is a NoRoom too."""
    with atomic_path(Path(path)) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:
            if "unexpected pos" not in str(exc) and "write failed" not in str(exc):
                raise
            raise NoRoom(Path(path), "the write was cut short") from None


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Write `model`'s weights, config and stored inference settings (a `fastmask` checkpoint) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "config": model.config.to_dict(),
               "model": model.state_dict(), "meta": meta or {}}
    if getattr(model, "proposer_options", None):  # none for a training run's model: earlier versions read it
        payload["proposer"] = dict(model.proposer_options)
    save_payload(path, payload)


def load_checkpoint(path: Path) -> tuple[FastMaskConfig, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Config, weights, meta and stored inference settings (`FastMask.proposer_options`) of a `fastmask`
    checkpoint; every failure is a one-line FastMaskError."""
    path = Path(path)
    if not path.is_file():
        raise FastMaskError(f"weights file not found: {path}")
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask checkpoint (no fastmask config inside)")
    meta = payload.get("meta")
    config, state = _network(path, payload)
    stored = payload.get("proposer")
    options = {k: v for k, v in payload["config"].items() if k in INFERENCE_KEYS}  # where older versions kept them
    return config, state, dict(meta) if isinstance(meta, dict) else {}, options | (stored if isinstance(stored, dict) else {})


def _network(path: Path, payload: dict[str, Any]) -> tuple[FastMaskConfig, dict[str, torch.Tensor]]:
    """The config and weights a checkpoint of either format must carry; a FastMaskError naming what lacks."""
    for key, what in (("config", "its config"), ("model", "its weights")):
        if not isinstance(payload.get(key), dict):
            raise FastMaskError(f"{path} is a {payload['format']} checkpoint without {what} (no '{key}' entry): "
                                "the network cannot be rebuilt; use the file that fastmask train or export wrote")
    try:
        return FastMaskConfig.from_dict(payload["config"]), payload["model"]
    except TypeError as exc:  # a value of the wrong type in the config
        raise FastMaskError(f"{path}: invalid model config ({exc})") from None


def network_of(path: Path) -> tuple[FastMaskConfig, dict[str, torch.Tensor]] | None:
    """Config and weights of a whole network in either format, or None where `path` holds none
    (a body's state dict, say, or a file that is not a checkpoint)."""
    try:
        payload = load_payload(path)
    except UnreadableCheckpoint as exc:  # not ours to judge (the body loader names the problem), unless damaged
        if exc.damaged:
            raise
        return None
    if not isinstance(payload, dict) or payload.get("format") not in (CHECKPOINT_FORMAT, TRAINING_FORMAT):
        return None
    return _network(path, payload)


def load_network(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> list[str]:
    """Fine-tuning start: load a trained network's `state` into `model`, whose config may add parts
    (a stride-8 level's reduction). Returns the modules that start fresh; a weight whose shape differs,
    or one `model` has no place for, is a FastMaskError naming it."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    hint = "drop the --config, --body, --streams, --neck or --head that changed the architecture"
    if unknown:
        raise FastMaskError(f"{source} has weights this configuration has no place for ({unknown[0]}, ...): {hint}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise FastMaskError(f"{source}: {key} is {tuple(value.shape)}, this configuration's is "
                                f"{tuple(own[key].shape)}: {hint}")
    model.load_state_dict(state, strict=False)
    return sorted({key.rsplit(".", 1)[0] for key in set(own) - set(state)})
