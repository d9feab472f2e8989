"""Weights by name or path: the shipped ones (`weights/`, listed with their sha256 in `manifest.json`),
checkpoint files, training run folders and untrained presets; `load_model` turns any of them into a
network (checkpoint.py reads the files).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FastMaskError, ParameterError
from .bodies import LoadReport, initialise
from .checkpoint import load_checkpoint, network_of
from .config import PRESETS, FastMaskConfig, preset
from .model import FastMask

UNTRAINED_SEED = 0
MANIFEST = "manifest.json"


def weights_dir() -> Path:
    """Where shipped weights are: $FASTMASK_WEIGHTS_DIR, else `shipped_dir()`."""
    if os.environ.get("FASTMASK_WEIGHTS_DIR"):
        return Path(os.environ["FASTMASK_WEIGHTS_DIR"])
    return shipped_dir()


def shipped_dir() -> Path:
    """The weights that came with fastmask: inside the installed package, else the repo."""
    package = Path(__file__).resolve().parents[1]  # fastmask_cli/, where the wheel puts weights/
    for candidate in (package / "weights", package.parents[1] / "weights"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return package.parents[1] / "weights"


def read_manifest(directory: Path | None = None) -> list[dict[str, Any]]:
    """The shipped models, as listed in `manifest.json` (an empty list when nothing is shipped)."""
    path = (directory or weights_dir()) / MANIFEST
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["models"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FastMaskError(f"weights manifest {path} is malformed: {exc}") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelInfo:
    """Where a loaded model came from, and whether it was trained."""

    name: str
    trained: bool
    path: str | None = None
    sha256: str | None = None
    body_init: LoadReport | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        """What determines the weights: a file's sha256, or the preset, its seed and the body's init."""
        if self.sha256:
            return self.sha256
        body = f"imagenet-{sha256_of(Path(self.body_init.path))[:16]}" if self.body_init else "random"
        return f"untrained:{self.name}:seed{UNTRAINED_SEED}:{body}"

    def describe(self) -> str:
        if self.path:
            state = "" if self.trained else "UNTRAINED (random) weights "
            return f"{state}{self.name} ({self.path}, sha256 {self.sha256[:12]})"
        body = f"ImageNet body from {self.body_init.path}" if self.body_init else "random body"
        return f"UNTRAINED {self.name} configuration: {body}, random neck and head"


def load_model(weights: str | None = None, init: str | Path | None = None) -> tuple[FastMask, ModelInfo]:
    """Load a model by shipped name, checkpoint path, training run folder, or preset name (untrained: "fast", "accurate").

    With no `weights`, the shipped default is used; while none is shipped, the untrained "fast"
    preset, whose body takes `init` ("imagenet" for its pip package, or a state-dict file) when given.
    """
    shipped = read_manifest()
    if weights is None:
        defaults = [m for m in shipped if m.get("default")] or shipped
        weights = defaults[0]["name"] if defaults else "fast"
    if weights in PRESETS:
        with torch.random.fork_rng():  # same random weights every run, so runs compare and resume
            torch.manual_seed(UNTRAINED_SEED)
            model = FastMask(preset(weights))
        report = initialise(model.body, model.config.body, init)[0] if init else None
        return model.eval(), ModelInfo(weights, trained=False, body_init=report)
    found = find_weights(weights, shipped)
    if found is None:
        raise ParameterError("weights", unknown_weights(weights, [m["name"] for m in shipped] + list(PRESETS)))
    path, digest = found
    config, state, meta, options = load_checkpoint(path)
    model = FastMask(config)
    model.proposer_options = options
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise FastMaskError(f"{path} does not fit its own config: {first}") from None
    trained = not meta.get("untrained", False)  # tests and smoke runs save random models too
    return model.eval(), ModelInfo(weights, trained, path=str(path), sha256=digest or sha256_of(path), meta=meta)


def find_weights(weights: str | Path, shipped: list[dict[str, Any]] | None = None) -> tuple[Path, str | None] | None:
    """The checkpoint file named by `weights`, and its sha256 when already checked: a shipped name (its
    file hashed against the manifest), a `fastmask train` run folder (its best.pt, else model.pt, else
    checkpoint.pt), or a file; None when it names nothing known or existing. A shipped file that is
    missing or damaged is a FastMaskError."""
    shipped = read_manifest() if shipped is None else shipped
    path = Path(weights).expanduser()  # "~/fm/mine.pt" quoted, or after "=", reaches us with its "~"
    if not path.exists():  # a shipped name in any case, or with its file's ".pt"
        key = str(weights).lower().removesuffix(".pt")
        entry = next((m for m in shipped if m["name"].lower() == key), None)
    else:
        entry = next((m for m in shipped if m["name"] == str(weights)), None)
    if entry is not None:
        path = weights_dir() / entry["file"]
        if not path.is_file():
            raise FastMaskError(f"shipped weights {weights!r} are listed but their file is missing: {path}")
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise FastMaskError(f"shipped weights {path} do not match their sha256 in {MANIFEST}: damaged file")
        return path, digest
    if path.is_dir():  # best, else latest; an interrupted run has only its training checkpoint
        path = next((path / f for f in ("best.pt", "model.pt", "checkpoint.pt") if (path / f).is_file()), path / "model.pt")
    return (path, None) if path.exists() else None


def unknown_weights(weights: str | Path, names: list[str]) -> str:
    """Why `weights` names no weights, in one line for a ParameterError on "weights" ({} is the option)."""
    text, path = str(weights), Path(weights).expanduser()
    if "://" in text:
        return f"{{}} {text!r}: URLs are not downloaded; download the file and give its path"
    if path.is_dir():
        files = sorted(p.name for p in path.glob("*.pt"))
        listed = f"give one of its .pt files: {', '.join(files[:5])}" if files else "it holds no .pt file"
        return f"{{}} {text!r} is a folder, not a training run's: {listed}"
    close = difflib.get_close_matches(text.lower().removesuffix(".pt"), [n.lower() for n in names], n=1, cutoff=0.6)
    hint = f"; did you mean {next(n for n in names if n.lower() == close[0])}?" if close else f" ({', '.join(names)})"
    return f"{{}} {text!r} is neither a file nor a known name{hint}"


def starting_checkpoint(weights: str | Path) -> tuple[Path, str, FastMaskConfig, dict[str, torch.Tensor]] | None:
    """The whole trained network `weights` names (a shipped name, a run folder, a fastmask checkpoint or
    a run's checkpoint.pt), as `train --finetune` starts from it: its path, sha256, config and weights;
    None where it names no such network (a body's state dict, say). A shipped name whose file is missing
    is a FastMaskError."""
    found = find_weights(weights)
    if found is None or not found[0].is_file():
        return None
    path, digest = found
    network = network_of(path)
    if network is None:
        return None
    return path, digest or sha256_of(path), *network


def fine_tune_start(finetune: str | Path) -> tuple[Path, str, FastMaskConfig, dict[str, torch.Tensor]]:
    """`starting_checkpoint(finetune)`, or a ParameterError (on `--finetune`) saying what it takes."""
    start = starting_checkpoint(finetune)
    if start is None:
        raise ParameterError("finetune", f"{{}} {str(finetune)!r} is not a trained fastmask network: give shipped weights' "
                             "name (fastmask weights), a run folder or a checkpoint it wrote")
    return start
