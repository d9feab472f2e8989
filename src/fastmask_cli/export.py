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
from .inference.detector import detector_path, load_detector
from .inference.options import MASK_THRESHOLDS, MEASURE_TOP_K, RANKERS, ProposerOptions, carried_options, stored_settings
from .io.files import atomic_path, writable_folder
from .modeling.bodies.pretrained import packaged, packaged_weights
from .modeling.checkpoint import save_checkpoint
from .modeling.model import FastMask
from .modeling.weights import MANIFEST, load_model, read_manifest, sha256_of
from .modeling.weights import weights_dir as default_weights_dir
from .training.fusion import fit_fusion, fusion_samples
from .training.validation import precise_bn_of_run, validate


def check_name(name: str) -> None:
    """ParameterError unless `name` is a plain file name for NAME.pt in the weights folder: no folder
    separators (a name is not a path: the file would land outside the folder the manifest lists), not
    empty, not starting with a dot."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ParameterError("name", f"{{}} {name!r} is not a name: use letters, digits, '-', '_' and '.' "
                             "(no folders: the file goes in --weights-dir)")


def ship_weights(model: FastMask, meta: dict[str, Any], name: str, directory: Path, *,
                 default: bool = False, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `model` to `directory/NAME.pt` (weights and config only) and list it in the manifest.

    `entry` adds what the manifest should say besides name, file, sha256 and config: metrics,
    training data, the commands that reproduce it. A default model displaces the previous default.
    """
    check_name(name)
    directory = Path(directory)
    writable_folder(directory, "the weights")
    path = directory / f"{name}.pt"
    save_checkpoint(path, model, meta)
    record = {"name": name, "file": path.name, "sha256": sha256_of(path), "default": default,
              "config": model.config.to_dict(), "proposer": dict(model.proposer_options), **(entry or {})}
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
             images: Path | None = None, top_k: int = MEASURE_TOP_K, train_command: str | None = None, note: str | None = None,
             mask_threshold: float | None = None, thresholds: Sequence[float] = MASK_THRESHOLDS,
             bn_images: int | None = None, device: str = "auto", ranker: str = "auto",
             fusion_ann: Path | None = None, fusion_images: Path | None = None,
             on_batchnorm: Callable[[int | None, dict[str, Any]], None] | None = None,
             on_measure: Callable[[str, float], None] | None = None,
             on_fit: Callable[[Path], None] | None = None) -> Shipped:
    """Ship the trained weights `source` (a run folder, a checkpoint, shipped weights) as `name`.

    Before writing, precise BN recomputes the statistics of every BatchNorm that trained over `bn_images`
    of the run's training images (None: the run's own count; 0: as saved). With `ann` and `images` the
    AR at `top_k` is measured for each mask threshold of `thresholds` (or `mask_threshold` alone, where
    given, `thresholds` then unused), for each ranker: `ranker` "windows", "fused" (the COCO detector's
    boxes too, its fusion fitted on `fusion_ann`/`fusion_images`, default the run's training data:
    training/fusion.py) or "auto" (both). The pair with the best mask AR@10 + AR@100 ships (`choose`), the
    grid recorded in the manifest (chosen on the set it is reported on: slightly optimistic). The weights
    ship with that threshold and ranker (`FastMask.proposer_options`, shown as `proposer` in the manifest),
    and the suppression they carried (`ProposerOptions.resolved`: DEFAULTS' where none), which the measurement used too.
    on_batchnorm(images used, or None where the training data is not here; the run's meta),
    on_fit(training ground truth) and on_measure(ranker, threshold) report progress. Raises FastMaskError
    for untrained weights or a fused ranker without training data to fit it on, ParameterError for `ann`
    without `images` or the reverse, or a `default` without them (a default is chosen on measured AR).
    """
    check_name(name)
    if ranker not in ("auto", *RANKERS):
        raise ParameterError("ranker", f"{{}} must be auto, {', '.join(RANKERS)}, not {ranker!r}")
    if (ann is None) != (images is None):
        raise ParameterError(("ann", "images"), "give both {0} and {1}, or neither")
    if default and ann is None:
        raise ParameterError(("default", "ann", "images"), "{0} weights are measured before they ship: give {1} and {2}")
    grid = [mask_threshold] if mask_threshold is not None else sorted(set(thresholds))
    if not grid:
        raise ParameterError("thresholds", "{} must hold at least one mask threshold")
    for threshold in grid:  # each checked where every mask threshold is, named as the caller gave it
        try:
            ProposerOptions(mask_threshold=threshold)
        except ParameterError as exc:
            raise ParameterError("mask_threshold" if mask_threshold is not None else "thresholds", exc.template) from None
    model, info = load_model(source)
    if not info.trained:
        raise FastMaskError(f"{source} holds untrained weights: nothing to ship")
    used = precise_bn_of_run(model, info.meta, bn_images, device)
    if on_batchnorm:
        on_batchnorm(used, info.meta)
    meta = {k: v for k, v in info.meta.items() if k != "val"}
    entry = _provenance(model, meta, source, weights_dir, train_command, note)
    carried = carried_options(model.proposer_options)  # what the weights ship with now, checked
    fusions = {"windows": ()}
    if ranker == "auto" and ann is None and carried.fusion:  # nothing to measure: shipped as it ranks now
        fusions = {"fused": carried.fusion}
        entry["ranker"] = {"fusion": list(carried.fusion), "fitted_on": "as shipped in " + str(source),
                           "detector": detector_record()}
    elif ranker != "windows" and (ranker == "fused" or ann is not None):  # auto fits only what it can measure
        fusions["fused"], samples = _fit_fusion(model, meta, fusion_ann, fusion_images, device, on_fit, mask_threshold)
        entry["ranker"] = {"fusion": list(fusions["fused"]), "fitted_on": str(fusion_ann or meta.get("trained_on")),
                           "candidates": samples, "detector": detector_record()}
        if ranker == "fused":
            del fusions["windows"]
    # what the weights ship with: export's choices, the rest as a model without them would run
    chosen_ranker = next(iter(fusions)) if len(fusions) == 1 else "fused"
    # threshold and suppression as the weights would propose with them now: suppression is measured and shipped so
    shipped = ProposerOptions(mask_threshold=mask_threshold).resolved(stored_settings(model))
    suppression = {k: getattr(shipped, k) for k in ("nms", "nms_iou", "nms_mode")}
    chosen = shipped.mask_threshold
    if ann is not None:
        chosen_ranker, chosen = _measure(model, name, fusions, grid, ann, images, top_k, device, suppression, entry,
                                         on_measure)
    model.proposer_options = ProposerOptions(mask_threshold=chosen, **suppression, ranker=chosen_ranker,
                                             fusion=fusions[chosen_ranker]).stored()
    record = ship_weights(model, meta, name, weights_dir, default=default, entry=entry)
    return Shipped(record, entry.get("metrics", {}))


def _measure(model: FastMask, name: str, fusions: dict[str, tuple[float, ...]], grid: list[float], ann: Path, images: Path,
             top_k: int, device: str, suppression: dict[str, Any], entry: dict[str, Any],
             on_measure: Callable[[str, float], None] | None) -> tuple[str, float]:
    """AR of every ranker (its fusion) and mask threshold of `grid` on `ann`/`images`: the best pair (`choose`),
    its metrics, the grid and what was measured recorded in the manifest `entry`."""
    measured = []
    for ranker, fusion in fusions.items():
        for threshold in grid:
            if on_measure:
                on_measure(ranker, threshold)
            options = ProposerOptions(top_k=top_k, device=device, mask_threshold=threshold, ranker=ranker, fusion=fusion,
                                      **suppression)
            measured.append((ranker, threshold, validate(model, ann, images, options)))
    chosen_ranker, chosen, evaluation = choose(measured)
    entry["metrics"] = {t: r.metrics for t, r in evaluation.results.items()}
    entry["mask_threshold"] = {"chosen": chosen, "by": "segm AR@10 + AR@100", "grid": [
        {"ranker": r_, "threshold": t, **{f"{kind} {k}": round(v, 4) for kind, r in e.results.items()
                                          for k, v in r.metrics.items() if k in ("AR@10", "AR@100", "AR@1000") and v is not None}}
        for r_, t, e in measured]}
    if "ranker" in entry:
        entry["ranker"]["chosen"] = chosen_ranker
    entry["measured_on"] = {"ann": str(ann), "images": str(images), "count": next(iter(evaluation.results.values())).images,
                            "top_k": top_k, "size": model.config.size, "scales": model.config.scales,
                            "mask_threshold": chosen, **suppression}
    entry.setdefault("commands", {})["eval"] = (f"fastmask eval {ann} results.json --images {images} --weights {name} "
                                                f"--top-k {top_k}")
    return chosen_ranker, chosen


def _provenance(model: FastMask, meta: dict[str, Any], source: str, weights_dir: Path, train_command: str | None,
                note: str | None) -> dict[str, Any]:
    """The manifest entry's start: the training record, where the body's weights came from, the command, a note."""
    entry: dict[str, Any] = {"training": meta}
    folders = [Path(weights_dir), default_weights_dir()]
    body = (body_source(model.config.body, meta.get("init")) or inherited_body_source(source, folders)  # shipped as is
            or inherited_body_source(meta.get("init"), folders))
    if body:
        entry["body_source"] = body
    if train_command:
        entry["commands"] = {"train": train_command}
    if note:
        entry["note"] = note
    return entry


def choose(measured: list[tuple[str, float, Evaluation]]) -> tuple[str, float, Evaluation]:
    """The (ranker, threshold, evaluation) with the best mask AR@10 + AR@100 (what a user sees first; box AR
    where masks were not evaluated), then AR@100. The first listed wins a full tie."""
    def key(item: tuple[str, float, Evaluation]) -> tuple[float, float]:
        results = item[2].results
        metrics = (results.get("segm") or results["bbox"]).metrics
        return (metrics["AR@10"] or 0.0) + (metrics["AR@100"] or 0.0), metrics["AR@100"] or 0.0
    return max(measured, key=key)


def _fit_fusion(model: FastMask, meta: dict[str, Any], ann: Path | None, images: Path | None, device: str,
                on_fit: Callable[[Path], None] | None, mask_threshold: float | None) -> tuple[tuple[float, ...], int]:
    """The fused ranker's weights (training/fusion.py) fitted on `ann`/`images`, else the run's training data,
    and the number of candidates they were fitted on."""
    if (ann is None) != (images is None):
        raise ParameterError(("fusion_ann", "fusion_images"), "give both {0} and {1}, or neither (the run's own training data)")
    ann, images = ann or meta.get("trained_on"), images or meta.get("images")
    if not ann or not images or not Path(ann).is_file() or not Path(images).is_dir():
        raise FastMaskError("the fused ranker is fitted on training images: give --fusion-ann and --fusion-images "
                            "(the run's own training data is not here), or ship --ranker windows")
    if on_fit:
        on_fit(Path(ann))
    parts, targets = fusion_samples(model, Path(ann), Path(images), device=device, mask_threshold=mask_threshold)
    if len(targets) == 0:
        raise FastMaskError(f"no candidate of {images} overlaps an object of {ann}: nothing to fit the fused ranker on "
                            "(are the images there, and is it the ground truth of those images?)")
    return fit_fusion(parts, targets), len(targets)


def detector_record() -> dict[str, Any]:
    """The shipped detector, for the manifest: its file, sha256 and size, and the source it was converted from."""
    path = detector_path()
    return {"file": path.name, "sha256": sha256_of(path), "megabytes": round(path.stat().st_size / 2**20, 1),
            "source": load_detector(path)[1]}


def export_onnx(model: FastMask, path: Path, scales: int | None = None) -> list[int]:
    """Write `model`'s network (body to window scores; docs/onnx.md) at `scales` levels
    (None: the model's) to `path` as ONNX, atomically; returns the levels' strides. Raises
    ParameterError for scales below 1 or a folder `path`, FastMaskError where it cannot be exported or written."""
    scales = model.config.scales if scales is None else scales
    ProposerOptions(scales=scales)  # at least 1
    path = Path(path)
    if path.is_dir():
        raise ParameterError("path", f"{{}} {path} is a folder; give a file name such as model.onnx")
    try:
        write_onnx(model, path, scales)
    except OSError as exc:
        raise FastMaskError(f"cannot write {path}: {exc.strerror}") from None
    return model.strides(scales)
