"""fastmask: FastMask (CVPR 2017) segment proposals in one shot, as a library and a CLI.

    from fastmask_cli import load_model, Proposer
    model, info = load_model()              # the shipped default, or a path / preset name
    proposals = Proposer(model).propose(rgb_image)
"""

__version__ = "0.1.0"

from importlib import import_module
from typing import Any

# Imported now, not lazily: it shares its name with its module, which would shadow it once loaded.
# (It needs no torch.)
from .evaluate import evaluate  # noqa: F401 - re-exported

# Attributes load on first use, so that `fastmask eval` and `--help` do not pay for importing torch.
_EXPORTS = {
    "PRESETS": "config", "FastMaskConfig": "config", "preset": "config",
    "FastMaskError": "errors",
    "OnnxNetwork": "backend", "export_onnx": "backend",
    "Evaluation": "evaluate",
    "GroundTruth": "coco", "read_ground_truth": "coco", "check_results": "coco",
    "read_image": "images",
    "Proposals": "inference", "Proposer": "inference",
    "FastMask": "model",
    "ProposeSummary": "propose", "propose_folder": "propose", "propose_torchrun": "propose",
    "MergeSummary": "merge", "merge_results": "merge",
    "read_results": "results_file",
    "load_model": "weights", "save_checkpoint": "weights",
    "TrainSettings": "engine", "train": "engine",
}
__all__ = sorted([*_EXPORTS, "evaluate"]) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastmask_cli' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
