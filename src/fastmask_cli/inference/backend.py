"""Where the network runs: eager PyTorch, or the same graph exported to ONNX and run by ONNX Runtime.

On the CPU, PyTorch's eager kernels for the body's depthwise convolutions are memory-bound and slow;
ONNX Runtime runs the exported graph (body, neck, reduce, window norm and score branch: everything
`FastMask.forward` does) about four times faster on two threads. The mask decoder stays in PyTorch: it
runs on the top-k windows only (§5.3).

The exported graph of a model is cached per weights in `cache_dir()`, so a run does not re-export; the
file's sha256, kept beside it, is checked before it is used (a changed bit would change the scores):

    network = OnnxNetwork.for_model(model, scales=5)   # exports on first use, then loads the cached file
    pyramid = network(images, 5)                        # same Pyramid as model(images, 5)
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FastMaskError
from ..io.files import atomic_path
from ..modeling.model import FastMask, Pyramid
from ..modeling.weights import sha256_of
from ..modeling.windows import Level, WindowGrid

OPSET = 17
GRAPH_VERSION = 1  # raise when NetworkGraph's inputs or outputs change: older cached files go stale
_INHERITED: list = []  # sessions a forked worker came with: see ProcessSession
_session_threads: int | None = None  # this process's count for new sessions (set_session_threads)


def set_session_threads(threads: int) -> None:
    """Intra-op threads of the ONNX Runtime sessions this process makes from now on, where not given
    (default: PyTorch's thread count). A forked worker sets it: its PyTorch must stay at one thread,
    since the OpenMP pool of its parent did not come with the fork, but ONNX Runtime makes its own pool."""
    global _session_threads
    _session_threads = threads


class NetworkGraph(nn.Module):
    """`FastMask.forward` at a fixed number of scales, with tensors in and out: the exported graph.

    Input `images`: (N, 3, H, W) float32 RGB in [0, 255] (the graph normalises with ImageNet's mean and
    std). Outputs, one per level in ascending stride s (16, 32, ... for one stream): `features_i`
    (N, C, ceil(H/s) + 2p, ceil(W/s) + 2p), the window-normalised level padded by p = `window_pad` cells,
    then `scores_i` (N, ceil(H/s) + 2p - w + 1, ceil(W/s) + 2p - w + 1), the confidence logit of every
    w x w window (w = `window`), window (i, j) covering input pixels [(j - p)s, (j - p + w)s) x
    [(i - p)s, (i - p + w)s).
    """

    def __init__(self, model: FastMask, scales: int) -> None:
        super().__init__()
        self.model, self.scales = model, scales

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        pyramid = self.model(images, self.scales)
        return (*pyramid.features, *pyramid.scores)


def not_exportable(model: FastMask) -> str | None:
    """Why `model` cannot be exported with dynamic image sizes, or None. Padding is constant only when
    2 * window_pad >= window (every level then holds a window); otherwise it depends on the image size."""
    cfg = model.config
    if 2 * cfg.window_pad < cfg.window:
        return f"window_pad {cfg.window_pad} < window / 2: level padding depends on the image size"
    return None


def write_onnx(model: FastMask, path: Path, scales: int) -> None:
    """Write `model`'s network at `scales` levels to `path` as ONNX (opset 17), dynamic in batch, height
    and width; atomically (a temporary file renamed into place). Raises FastMaskError if it cannot."""
    reason = not_exportable(model)
    if reason:
        raise FastMaskError(f"this model cannot be exported to ONNX: {reason}")
    graph = NetworkGraph(copy.deepcopy(model).cpu().eval(), scales)  # the caller's model stays where it is
    levels = len(model.strides(scales))
    features, scores = [f"features_{i}" for i in range(levels)], [f"scores_{i}" for i in range(levels)]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes |= {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in features}
    axes |= {name: {0: "batch", 1: f"{name}_height", 2: f"{name}_width"} for name in scores}
    trace_onnx(graph, torch.full((1, 3, 256, 320), 128.0), Path(path), ["images"], features + scores, axes)


def trace_onnx(module: nn.Module, example: Tensor, path: Path, inputs: list[str], outputs: list[str],
                axes: dict[str, dict[int, str]]) -> None:
    """Trace `module` on `example` into an ONNX graph (opset OPSET) at `path`, atomically. FastMaskError if
    the exporter fails; OSError if the folder cannot be written."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's notices about tracing
            torch.onnx.export(module, (example,), buffer, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises many kinds; the message says which
        raise FastMaskError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)  # OSError: cached_onnx and the CLI say which folder
    with atomic_path(path) as tmp:  # processes exporting at once each replace it whole; a full disk is one line
        tmp.write_bytes(buffer.getvalue())


def cache_dir() -> Path:
    """Where exported graphs are kept: $FASTMASK_CACHE, else $XDG_CACHE_HOME/fastmask, else ~/.cache/fastmask."""
    if os.environ.get("FASTMASK_CACHE"):
        return Path(os.environ["FASTMASK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmask"


def weights_digest(model: nn.Module, settings: dict | None = None) -> str:
    """sha256 of what the exported graph depends on: the config (or `settings`) and every tensor of the state dict."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict() if settings is None else settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_onnx(key: str, write: Callable[[Path], None]) -> Path:
    """The graph `key` in `cache_dir()` (the opset and torch version added to the key), written by `write`
    first if absent, unreadable, or not the file that was written (its sha256 differs from the one kept
    beside it). FastMaskError where the cache cannot be written."""
    path = cache_dir() / f"{key}-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    digest = path.with_name(path.name + ".sha256")
    if path.is_file() and digest.is_file() and digest.read_text().strip() == sha256_of(path):
        return path
    try:
        write(path)
        digest.write_text(sha256_of(path) + "\n")  # a half-written one only makes the next run export again
    except OSError as exc:
        raise FastMaskError(f"cannot write the ONNX cache in {path.parent} ({exc.strerror}); "
                            "set FASTMASK_CACHE to a writable folder, or use --backend torch") from None
    return path


def new_session(path: Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session on `path`: `threads` intra-op threads (default: set_session_threads', else
    PyTorch's count). FastMaskError naming the file if ONNX Runtime cannot load it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or _session_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # spinning threads keep the cores busy between runs, which starves the PyTorch work around them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own kinds; the message says which
        raise FastMaskError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0]}); delete it to "
                            "export it again") from None


class ProcessSession:
    """An ONNX Runtime session on `path`, made on first use in each process (`new_session`; `check` is called
    on each one made). A forked worker (`propose_jobs`) makes its own, since the parent's thread pool did not
    come with it; the inherited one is kept, unused: destroying it would wait on those threads for ever."""

    def __init__(self, path: Path, threads: int | None = None, check: Callable | None = None) -> None:
        self.path, self.threads, self.check = Path(path), threads, check
        self._session, self._pid = None, None

    def get(self):  # -> onnxruntime.InferenceSession
        if self._pid != os.getpid():
            if self._session is not None:
                _INHERITED.append(self._session)
            session = new_session(self.path, self.threads)
            if self.check is not None:
                self.check(session)
            self._session, self._pid = session, os.getpid()
        return self._session


class OnnxNetwork:
    """A model's network at one number of scales, run by ONNX Runtime on the CPU; called like
    `FastMask.__call__` and returning the same `Pyramid` (within float rounding: about 1e-5)."""

    def __init__(self, path: Path, model: FastMask, scales: int, threads: int | None = None) -> None:
        self.path = Path(path)
        cfg = model.config
        self.strides, self.pad, self.window = model.strides(scales), cfg.window_pad, cfg.window
        self.scales = scales
        self._process = ProcessSession(self.path, threads, self._check_outputs)

    @property
    def session(self):  # onnxruntime.InferenceSession
        """This process's session (`ProcessSession`): `threads` intra-op threads (default: set_session_threads',
        else PyTorch's count then)."""
        return self._process.get()

    def _check_outputs(self, session) -> None:
        if len(session.get_outputs()) != 2 * len(self.strides):
            raise FastMaskError(f"{self.path} has {len(session.get_outputs())} outputs, not 2 x {len(self.strides)} levels")

    @classmethod
    def for_model(cls, model: FastMask, scales: int, threads: int | None = None) -> "OnnxNetwork":
        """The cached graph of `model` at `scales` levels (`cached_onnx`)."""
        key = f"{weights_digest(model)[:24]}-s{scales}-g{GRAPH_VERSION}"
        return cls(cached_onnx(key, lambda path: write_onnx(model, path, scales)), model, scales, threads)

    def __call__(self, images: Tensor, scales: int | None = None) -> Pyramid:
        """images: (N, 3, H, W) float RGB in [0, 255], on the CPU."""
        if scales is not None and scales != self.scales:
            raise ValueError(f"this graph was exported for {self.scales} scales, not {scales}")
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.float().cpu().numpy())})
        levels = len(self.strides)
        features = [torch.from_numpy(f) for f in outputs[:levels]]
        scores = [torch.from_numpy(s) for s in outputs[levels:]]
        grid = WindowGrid([Level(s, f.shape[2] - 2 * self.pad, f.shape[3] - 2 * self.pad, self.pad, self.window)
                           for s, f in zip(self.strides, features)])
        return Pyramid(features, scores, grid)
