"""Export: trained weights shipped into `weights/` (manifest, sha256, precise BN, measured AR), or the
network written as ONNX for other runtimes. One module for every format, as ultralytics' `Exporter`;
the CLI's `fastmask export` only calls it.

    record = ship_run("runs/x", "my-model", Path("weights"), ann=val_gt, images=val_dir)
    export_onnx(model, Path("model.onnx"), scales=5)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .coco.evaluate import Evaluation
from .errors import FastMaskError, ParameterError
from .inference.backend import write_onnx
from .inference.options import ProposerOptions
from .io.files import atomic_path, writable_folder
from .modeling.bodies.pretrained import packaged, packaged_weights
from .modeling.checkpoint import save_checkpoint
from .modeling.config import MASK_THRESHOLDS
from .modeling.model import FastMask
from .modeling.weights import MANIFEST, load_model, read_manifest, sha256_of
from .modeling.weights import weights_dir as default_weights_dir
from .training.validation import precise_bn_of_run, validate


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


def body_source(body: str, init: str | None) -> dict[str, str] | None:
    """Where a run's packaged body weights came from, for the manifest: package, version, file, sha256 and
    licence; None when `init` (the run's label: "imagenet (...)", "coco-ssd (...)") names no package of
    the body's (its `BodySpec.pretrained`) or that package is not installed here."""
    source = packaged(body)
    if source is None or not str(init).startswith(source.init):
        return None
    try:
        path = packaged_weights(body, source.init)[0]
    except FastMaskError:
        return None
    return {"package": source.package, "version": version(source.package), "file": path.name,
            "sha256": sha256_of(path), "licence": source.licence}


def inherited_body_source(init: str | None, directories: Sequence[Path]) -> dict[str, str] | None:
    """The body source of the shipped weights a run was fine-tuned from (`init` "NAME (sha256 ...)", as
    training records it), from the first manifest of `directories` that lists NAME; else None. A model
    fine-tuned from shipped weights keeps their body's provenance and licence."""
    name = str(init).split(" ", 1)[0]
    for directory in directories:
        found = next((m for m in read_manifest(directory) if m.get("name") == name), None)
        if found is not None:
            return found.get("body_source")
    return None


@dataclass
class Shipped:
    """What `ship_run` did: the manifest record, and the AR it measured."""

    record: dict[str, Any]
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # iou type -> AR, when measured


def ship_run(source: str, name: str, weights_dir: Path, *, default: bool = False, ann: Path | None = None,
             images: Path | None = None, top_k: int = 1000, train_command: str | None = None, note: str | None = None,
             mask_threshold: float | None = None, thresholds: Sequence[float] = MASK_THRESHOLDS,
             bn_images: int | None = None, device: str = "auto",
             on_batchnorm: Callable[[int | None, dict[str, Any]], None] | None = None,
             on_measure: Callable[[float], None] | None = None) -> Shipped:
    """Ship the trained weights `source` (a run folder, a checkpoint, shipped weights) as `name`.

    Before writing, precise BN recomputes the statistics of every BatchNorm that trained over `bn_images`
    of the run's training images (None: the run's own count; 0: as saved). With `ann` and `images` the
    AR at `top_k` is measured for each mask threshold of `thresholds` (or `mask_threshold` alone, where
    given, `thresholds` then unused) and the one with the best mask AR@100 ships (`choose_threshold`), the
    grid recorded in the manifest (chosen on the set it is reported on: slightly optimistic). on_batchnorm(images used, or None where the training data is not here; the run's meta) and
    on_measure(threshold) report progress. Raises FastMaskError for untrained weights, ParameterError for
    `ann` without `images` or the reverse, or a `default` without them (a default is chosen on measured AR).
    """
    if (ann is None) != (images is None):
        raise ParameterError(("ann", "images"), "give both {0} and {1}, or neither")
    if default and ann is None:
        raise ParameterError(("default", "ann", "images"), "{0} weights are measured before they ship: give {1} and {2}")
    grid = [mask_threshold] if mask_threshold is not None else sorted(set(thresholds))
    if not grid or not all(0 < t < 1 for t in grid):
        raise ParameterError("mask_threshold" if mask_threshold is not None else "thresholds",
                             "{} must be mask probabilities between 0 and 1")
    model, info = load_model(source)
    if not info.trained:
        raise FastMaskError(f"{source} holds untrained weights: nothing to ship")
    if mask_threshold is not None:  # a run-time knob of the config, so it ships with the weights
        model.config = model.config.with_overrides(mask_threshold=mask_threshold)
    used = precise_bn_of_run(model, info.meta, bn_images, device)
    if on_batchnorm:
        on_batchnorm(used, info.meta)
    meta = {k: v for k, v in info.meta.items() if k != "val"}
    entry: dict[str, Any] = {"training": meta}
    source = (body_source(model.config.body, meta.get("init"))
              or inherited_body_source(meta.get("init"), [Path(weights_dir), default_weights_dir()]))
    if source:
        entry["body_source"] = source
    if train_command:
        entry["commands"] = {"train": train_command}
    if note:
        entry["note"] = note
    if ann is not None:
        measured = []
        for threshold in grid:
            if on_measure:
                on_measure(threshold)
            model.config = model.config.with_overrides(mask_threshold=threshold)
            measured.append((threshold, validate(model, ann, images, top_k=top_k, device=device, backend="auto")))
        chosen, evaluation = choose_threshold(measured)
        model.config = model.config.with_overrides(mask_threshold=chosen)
        entry["metrics"] = {t: r.metrics for t, r in evaluation.results.items()}
        entry["mask_threshold"] = {"chosen": chosen, "by": "segm AR@100, then AR@10", "grid": [
            {"threshold": t, **{f"{kind} {k}": round(v, 4) for kind, r in e.results.items() for k, v in r.metrics.items()
                                if k in ("AR@10", "AR@100", "AR@1000") and v is not None}} for t, e in measured]}
        defaults = ProposerOptions()
        entry["measured_on"] = {"ann": str(ann), "images": str(images), "count": next(iter(evaluation.results.values())).images,
                                "top_k": top_k, "size": model.config.size, "scales": model.config.scales,
                                "mask_threshold": model.config.mask_threshold, "nms": defaults.nms, "nms_iou": defaults.nms_iou,
                                "nms_mode": defaults.nms_mode}
        entry.setdefault("commands", {})["eval"] = (f"fastmask eval {ann} results.json --images {images} --weights {name} "
                                                    f"--top-k {top_k}")
    record = ship_weights(model, meta, name, weights_dir, default=default, entry=entry)
    return Shipped(record, entry.get("metrics", {}))


def choose_threshold(measured: list[tuple[float, Evaluation]]) -> tuple[float, Evaluation]:
    """The (threshold, evaluation) with the best mask AR@100, then AR@10; box AR where masks were not
    evaluated. The first listed wins a full tie."""
    def key(item: tuple[float, Evaluation]) -> tuple[float, float]:
        results = item[1].results
        metrics = (results.get("segm") or results["bbox"]).metrics
        return metrics["AR@100"] or 0.0, metrics["AR@10"] or 0.0
    return max(measured, key=key)


def export_onnx(model: FastMask, path: Path, scales: int | None = None) -> list[int]:
    """Write `model`'s network (body to window scores; docs/onnx.md) at `scales` levels
    (None: the model's) to `path` as ONNX, atomically; returns the levels' strides. Raises
    ParameterError for scales below 1 or a folder `path`, FastMaskError where it cannot be exported or written."""
    scales = model.config.scales if scales is None else scales
    if scales < 1:
        raise ParameterError("scales", f"{{}} must be at least 1, not {scales}")
    path = Path(path)
    if path.is_dir():
        raise ParameterError("path", f"{{}} {path} is a folder; give a file name such as model.onnx")
    try:
        write_onnx(model, path, scales)
    except OSError as exc:
        raise FastMaskError(f"cannot write {path}: {exc.strerror}") from None
    return model.strides(scales)
