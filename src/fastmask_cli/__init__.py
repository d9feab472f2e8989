"""fastmask: FastMask (CVPR 2017) segment proposals in one shot, as a library and a CLI.

    from fastmask_cli import load_model, Proposer
    model, info = load_model()              # the shipped default, or a path / preset name
    proposals = Proposer(model).propose(rgb_image)
"""

__version__ = "0.1.0"

from importlib import import_module
from typing import Any

# Attributes load on first use, so that `fastmask eval` and `--help` do not pay for importing torch.
_EXPORTS = {
    "PRESETS": "modeling.config", "FastMaskConfig": "modeling.config", "preset": "modeling.config",
    "FastMask": "modeling.model",
    "load_model": "modeling.weights", "save_checkpoint": "modeling.checkpoint",
    "FastMaskError": "errors", "ParameterError": "errors",
    "GroundTruth": "coco.ground_truth", "read_ground_truth": "coco.ground_truth", "check_results": "coco.results",
    "Evaluation": "coco.evaluate", "evaluate": "coco.evaluate", "report": "coco.report", "write_viewer": "coco.viewer",
    "read_image": "io.images", "read_results": "io.results_file",
    "Proposals": "inference.proposer", "Proposer": "inference.proposer", "ProposerOptions": "inference.options",
    "OnnxNetwork": "inference.backend",
    "ProposeSummary": "runs.folder", "propose_folder": "runs.folder", "plan_inputs": "runs.plan", "propose_jobs": "runs.jobs", "propose_torchrun": "runs.distributed",
    "MergeSummary": "runs.merge", "merge_results": "runs.merge",
    "TrainSettings": "training.settings", "train": "training.engine",
    "export_onnx": "export", "ship_run": "export", "ship_weights": "export",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastmask_cli' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
