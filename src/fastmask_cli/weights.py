"""Checkpoints and shipped weights: saving, safe loading, and finding a model by name or path.

A checkpoint is a dict of plain tensors and settings, loaded with `torch.load(weights_only=True)`:
a file that carries pickled code is refused. It holds the model config, so the network is rebuilt
exactly. Shipped weights live in `weights/` with `manifest.json` listing name, file and sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bodies import LoadReport, initialise
from .config import PRESETS, FastMaskConfig, preset
from .errors import FastMaskError
from .files import atomic_path, writable_folder
from .model import FastMask

CHECKPOINT_FORMAT = "fastmask"
TRAINING_FORMAT = "fastmask-train"  # a run's checkpoint.pt (engine.py): the model plus the optimiser and where it stands
UNTRAINED_SEED = 0
MANIFEST = "manifest.json"


def weights_dir() -> Path:
    """Where shipped weights are: $FASTMASK_WEIGHTS_DIR, else inside the installed package, else the repo."""
    if os.environ.get("FASTMASK_WEIGHTS_DIR"):
        return Path(os.environ["FASTMASK_WEIGHTS_DIR"])
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights", here.parents[1] / "weights"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return here.parents[1] / "weights"


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


def save_checkpoint(path: Path, model: FastMask, meta: dict[str, Any] | None = None) -> None:
    """Write weights + config atomically (temporary file, then rename)."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "config": model.config.to_dict(),
               "model": model.state_dict(), "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> tuple[FastMaskConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a FastMask checkpoint safely; every failure is a one-line FastMaskError."""
    path = Path(path)
    if not path.is_file():
        raise FastMaskError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a class or function, i.e. code, not data
            raise FastMaskError(
                f"refusing to load {path}: it carries pickled Python objects, which could run code "
                "(only tensors and plain settings are accepted)"
            ) from None
        raise FastMaskError(f"{path} is not a readable checkpoint (corrupt or not a PyTorch file)") from None
    except Exception:  # noqa: BLE001 - torch raises many types for a damaged file
        raise FastMaskError(f"{path} is not a readable checkpoint (corrupt or not a PyTorch file)") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask checkpoint (no fastmask config inside)")
    return FastMaskConfig.from_dict(payload["config"]), payload["model"], dict(payload.get("meta", {}))


def ship_weights(model: FastMask, meta: dict[str, Any], name: str, directory: Path, *,
                 default: bool = False, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model` to `directory/NAME.pt` (weights and config only) and list it in the manifest.

    `entry` adds what the manifest should say besides name, file, sha256 and config: metrics,
    training data, the commands that reproduce it. A default model displaces the previous default.
    """
    directory = Path(directory)
    writable_folder(directory, "the weights")
    path = directory / f"{name}.pt"
    save_checkpoint(path, model, meta)
    record = {"name": name, "file": path.name, "sha256": sha256_of(path), "default": default,
              "config": model.config.to_dict(), **(entry or {})}
    models = [m for m in read_manifest(directory) if m["name"] != name]
    if default:
        for m in models:
            m["default"] = False
    models.append(record)
    with atomic_path(directory / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"models": models}, indent=2) + "\n")
    return record


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
        names = ", ".join([m["name"] for m in shipped] + list(PRESETS))
        raise FastMaskError(f"--weights {weights!r} is neither a file nor a known name ({names})")
    path, digest = found
    config, state, meta = load_checkpoint(path)
    model = FastMask(config)
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
    entry = next((m for m in shipped if m["name"] == str(weights)), None)
    if entry is not None:
        path = weights_dir() / entry["file"]
        if not path.is_file():
            raise FastMaskError(f"shipped weights {weights!r} are listed but their file is missing: {path}")
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise FastMaskError(f"shipped weights {path} do not match their sha256 in {MANIFEST}: damaged file")
        return path, digest
    path = Path(weights)
    if path.is_dir():  # best, else latest; an interrupted run has only its training checkpoint
        path = next((path / f for f in ("best.pt", "model.pt", "checkpoint.pt") if (path / f).is_file()), path / "model.pt")
    return (path, None) if path.exists() else None


def starting_checkpoint(init: str | Path) -> tuple[Path, str, FastMaskConfig, dict[str, torch.Tensor]] | None:
    """What `train --init` names when it is a whole trained network (a shipped name, a run folder, a
    fastmask checkpoint or a run's checkpoint.pt) rather than a body's state dict: its path, sha256,
    config and weights; else None. A shipped name whose file is missing is a FastMaskError."""
    if str(init) in ("auto", "imagenet", "none"):
        return None
    found = find_weights(init)
    if found is None or not found[0].is_file():
        return None
    path, digest = found
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours to judge: the body loader names the problem
        return None
    if not isinstance(payload, dict) or payload.get("format") not in (CHECKPOINT_FORMAT, TRAINING_FORMAT):
        return None
    return path, digest or sha256_of(path), FastMaskConfig.from_dict(payload["config"]), payload["model"]


def load_network(model: FastMask, state: dict[str, torch.Tensor], source: Path) -> list[str]:
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
