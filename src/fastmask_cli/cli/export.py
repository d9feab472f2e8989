"""`fastmask export`: ship trained weights, or write the network as ONNX (both in `fastmask_cli.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import FastMaskError
from ..inference.options import MASK_THRESHOLDS, MEASURE_TOP_K
from .common import console, float_list, friendly_errors, say_note
from .options import DEVICE


@friendly_errors
def export_command(
    source: str = typer.Argument(..., help="A training run folder (its best.pt, else model.pt), a checkpoint file, "
                                 "or (with --onnx) a shipped weights name."),
    name: Optional[str] = typer.Option(None, help="Name to ship the weights under (NAME.pt in --weights-dir)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Instead of shipping: write the network (body to window "
                                        "scores) as an ONNX file here, for ONNX Runtime, TensorRT and the like (see docs/training.md)."),
    scales: Optional[int] = typer.Option(None, help="With --onnx: pyramid levels in the graph. Default: the model's."),
    weights_dir: Path = typer.Option(Path("weights"), "--weights-dir", help="Folder of shipped weights and manifest.json."),
    default: bool = typer.Option(False, "--default", help="Make these the weights `propose` uses when none are named."),
    ann: Optional[Path] = typer.Option(None, help="COCO ground truth to measure AR on before shipping (recorded in the manifest)."),
    images: Optional[Path] = typer.Option(None, help="Folder of the --ann images."),
    top_k: int = typer.Option(MEASURE_TOP_K, "--top-k", help="Proposals per image for the measurement (1000 gives AR@10/100/1000)."),
    train_command: Optional[str] = typer.Option(None, "--train-command", help="The command that trained them, recorded for reproduction."),
    note: Optional[str] = typer.Option(None, help="Anything else the manifest should say about these weights."),
    mask_threshold: Optional[float] = typer.Option(None, "--mask-threshold", help="Ship this mask threshold instead of "
                                                   "choosing one from --thresholds on --ann."),
    thresholds: str = typer.Option(",".join(map(str, MASK_THRESHOLDS)), "--thresholds", help="Mask thresholds measured "
                                   "on --ann; the best mask AR@100 ships, the grid is recorded in the manifest."),
    bn_images: Optional[int] = typer.Option(None, "--bn-images", help="Recompute the statistics of every BatchNorm that "
                                            "trained over this many of the run's training images (precise BN, as "
                                            "training does before validating); 0: ship them as saved. Default: the run's own."),
    ranker: str = typer.Option("auto", help="With --ann: windows, fused (the COCO detector's boxes too, ranked by a "
                               "score fitted on training images) or auto (measure both, ship the better)."),
    fusion_ann: Optional[Path] = typer.Option(None, "--fusion-ann", help="Training ground truth to fit the fused "
                                              "ranker on. Default: the run's own."),
    fusion_images: Optional[Path] = typer.Option(None, "--fusion-images", help="Folder of the --fusion-ann images."),
    device: str = DEVICE,
) -> None:
    """Ship trained weights (--name: weights and config only, their sha256 and measured AR in the manifest),
    or write the network as ONNX (--onnx)."""
    if (name is None) == (onnx is None):
        raise FastMaskError("give --name (ship the weights) or --onnx FILE (export the network), one of them")
    if onnx is not None:
        _export_onnx(source, onnx, scales)
        return
    from ..export import ship_run

    shipped = ship_run(source, name, weights_dir, default=default, ann=ann, images=images, top_k=top_k,
                       train_command=train_command, note=note, mask_threshold=mask_threshold,
                       thresholds=float_list(thresholds, "--thresholds"), bn_images=bn_images, device=device,
                       ranker=ranker, fusion_ann=fusion_ann, fusion_images=fusion_images, on_batchnorm=_say_batchnorm,
                       on_fit=lambda gt: console.print(f"fitting the fused ranker on {gt} ..."),
                       on_measure=lambda r, t: console.print(f"measuring AR on {ann} (top-{top_k}, {r} ranker, mask "
                                                             f"threshold {t:g}) ..."))
    record = shipped.record
    console.print(f"shipped {weights_dir / record['file']} (sha256 {record['sha256'][:12]})"
                  + (" as the default" if default else ""), highlight=False)
    if "mask_threshold" in record:
        choice = record["mask_threshold"]
        console.print(f"{record.get('ranker', {}).get('chosen', 'windows')} ranker, mask threshold {choice['chosen']:g}, "
                      f"by {choice['by']} over " + ", ".join(
                          f"{row['ranker']} {row['threshold']:g} ({row.get('segm AR@10', row.get('bbox AR@10', 0)) * 100:.1f}"
                          f"/{row.get('segm AR@100', row.get('bbox AR@100', 0)) * 100:.1f})" for row in choice["grid"]),
                      highlight=False)
    for t, metrics in shipped.metrics.items():
        console.print(f"  {t}: " + ", ".join(f"{k} {v * 100:.1f}" for k, v in metrics.items() if v is not None), highlight=False)


def _say_batchnorm(used: int | None, meta: dict[str, Any]) -> None:
    """What precise BN did before shipping (`export.ship_run`), in one line."""
    if used is None:
        say_note(f"BatchNorm statistics shipped as saved: the training data ({meta.get('trained_on')}, "
                 f"{meta.get('images')}) is not here")
    elif used:
        console.print(f"BatchNorm statistics recomputed over {used} training images of {meta['trained_on']}", highlight=False)


def _export_onnx(source: str, path: Path, scales: Optional[int]) -> None:
    from ..export import export_onnx
    from ..modeling.weights import load_model

    model, info = load_model(source)
    scales = scales or model.config.scales  # 0 too: the model's own
    strides = export_onnx(model, path, scales)
    console.print(f"wrote {path}: {info.describe()}, {scales} scales (strides {', '.join(map(str, strides))})", highlight=False)
    console.print(f"input 'images': (N, 3, H, W) float32 RGB in [0, 255], normalised inside; outputs 'features_i' "
                  f"(padded window-normalised levels) and 'scores_i' (window logits), i = 0..{len(strides) - 1}; "
                  "docs/onnx.md gives the shapes", highlight=False)
