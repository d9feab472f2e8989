"""fastmask: FastMask (CVPR 2017) segment proposals in one shot, as a library and a CLI.

    from fastmask_cli import load_model, Proposer
    model, info = load_model()              # the shipped default, or a path / preset name
    proposals = Proposer(model).propose(rgb_image)
"""

__version__ = "0.1.0"

from .config import PRESETS, FastMaskConfig, preset
from .errors import FastMaskError
from .evaluate import Evaluation, evaluate
from .images import read_image
from .inference import Proposals, Proposer
from .model import FastMask
from .propose import ProposeSummary, propose_folder
from .weights import load_model, save_checkpoint

__all__ = [
    "PRESETS", "Evaluation", "FastMask", "FastMaskConfig", "FastMaskError", "Proposals", "Proposer", "ProposeSummary",
    "evaluate", "load_model", "preset", "propose_folder", "read_image", "save_checkpoint", "__version__",
]
