"""The options several commands share, declared once, grouped into the panels of `--help`.

A command takes a few by name as defaults (`device: str = opt.DEVICE`), or whole groups with
`@shared(*MODEL_OPTIONS, *SPEED_OPTIONS)`, which adds them to its signature for Typer and hands them to it as keywords.
Those that set how proposals are made default to `inference.options.DEFAULTS` or to None (the model's
own: what export chose), so the `ProposerOptions` a command builds from them (`proposer_options`) has
the one default and the one range check of each setting.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ..inference.options import DEFAULTS, MEASURE_TOP_K, TOP_K, ProposerOptions

# Panels of --help, so that two dozen options read as a few groups
INPUTS, OUTPUTS, MODEL, SPEED, LARGE = "Inputs", "Outputs", "Model and ranking", "Speed", "Large runs"
FILTERS = "Filters (AR is only comparable without them)"

WEIGHTS = typer.Option(None, rich_help_panel=MODEL, help="Shipped weights name, checkpoint path, or 'fast'/'accurate' for "
                       "an untrained preset. Default: the best shipped.")
INIT = typer.Option(None, rich_help_panel=MODEL, help="ImageNet weights for the body of an untrained preset: 'imagenet' "
                    "(from its pip package) or a FILE.")
TOP_K_PROPOSE = typer.Option(TOP_K, "--top-k", rich_help_panel=MODEL, help=f"Proposals per image ({MEASURE_TOP_K} for AR@1k).")
TOP_K_MEASURE = typer.Option(MEASURE_TOP_K, "--top-k", rich_help_panel=MODEL, help="Proposals per image (with --images).")
SCALES = typer.Option(None, rich_help_panel=MODEL, help="Pyramid levels, from the finest (necks are weight-shared; a "
                      "stride-8 level counts as one). Default: the model's.")
SIZE = typer.Option(None, rich_help_panel=MODEL, help="Longer image side the network sees, in pixels. Default: the model's.")
MASK_THRESHOLD = typer.Option(None, "--mask-threshold", rich_help_panel=MODEL, help="Mask probability threshold. Default: "
                              f"the model's (export measures it; {DEFAULTS.mask_threshold} for a run not shipped).")
NMS = typer.Option(None, rich_help_panel=MODEL, help="Near-duplicates by overlap of: mask, box, or none (keep the "
                   f"network's order). Default: the model's ({DEFAULTS.nms}).")
NMS_IOU = typer.Option(None, "--nms-iou", rich_help_panel=MODEL, help="IoU above which a lower-scored proposal is a "
                       f"duplicate. Default: the model's ({DEFAULTS.nms_iou}).")
NMS_MODE = typer.Option(None, "--nms-mode", rich_help_panel=MODEL, help="demote: duplicates behind every distinct proposal "
                        f"(the top-k set, so AR@1000, stays); drop: remove them. Default: the model's ({DEFAULTS.nms_mode}).")
RANKER = typer.Option(None, rich_help_panel=MODEL, help="windows: rank by our window scores alone (the paper's); fused: "
                      "also decode the COCO detector's best boxes and rank by a score fusing both. Default: the model's "
                      "(fused where it was fitted).")
DEVICE = typer.Option(DEFAULTS.device, rich_help_panel=SPEED, help="auto, cpu or cuda.")
PRECISION = typer.Option(DEFAULTS.precision, rich_help_panel=SPEED, help="fp32, fp16 (CUDA) or bf16.")
BACKEND = typer.Option(DEFAULTS.backend, rich_help_panel=SPEED, help="Where the network runs: auto (ONNX Runtime on the "
                       "CPU in fp32, its graph exported once per weights into ~/.cache/fastmask; else PyTorch), onnx or torch.")
BATCH_SIZE = typer.Option(1, "--batch-size", rich_help_panel=SPEED, help="Images per forward pass (of similar shapes: a "
                          "batch is padded to its largest).")
WORKERS = typer.Option(None, "--workers", rich_help_panel=SPEED, help="Processes that read, orient and resize images ahead "
                       "of the model. Default: none on the CPU (the network uses every core), the cores less one (at most "
                       "8) on a GPU.")
JOBS = typer.Option("auto", "--jobs", "-j", rich_help_panel=SPEED, help="Worker processes on the CPU, each with the cores "
                    "over N threads, merged into the file one process writes. auto: one per core (at most 8) on the "
                    "CPU, 1 on a GPU.")

# The options `propose` and `eval --images` share: the model and how it proposes, and how fast.
TYPES: dict[str, tuple[Any, Any]] = {
    "weights": (Optional[str], WEIGHTS), "init": (Optional[Path], INIT), "scales": (Optional[int], SCALES),
    "size": (Optional[int], SIZE), "mask_threshold": (Optional[float], MASK_THRESHOLD), "nms": (Optional[str], NMS),
    "nms_iou": (Optional[float], NMS_IOU), "nms_mode": (Optional[str], NMS_MODE), "ranker": (Optional[str], RANKER),
    "device": (str, DEVICE), "precision": (str, PRECISION), "backend": (str, BACKEND), "batch_size": (int, BATCH_SIZE),
    "workers": (Optional[int], WORKERS), "jobs": (str, JOBS),
}
MODEL_OPTIONS = ("weights", "init", "scales", "size", "mask_threshold", "nms", "nms_iou", "nms_mode", "ranker")
SPEED_OPTIONS = ("device", "precision", "backend", "batch_size", "workers", "jobs")


def shared(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared options `names` (declared in TYPES), after its own parameters: Typer reads
    them from its signature, and the command, which takes `**options`, receives them as keywords."""

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=TYPES[name][1], annotation=TYPES[name][0])
                 for name in names]
        command.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        return command

    return add


def proposer_options(options: dict[str, Any], **more: Any) -> ProposerOptions:
    """The ProposerOptions of a command's shared `options` (those that are its fields) and `more`: checked
    here, before any weights load. Raises ParameterError."""
    fields = {f.name for f in dataclasses.fields(ProposerOptions)}
    return ProposerOptions(**{k: v for k, v in options.items() if k in fields}, **more)
