"""What a training run is asked to do besides the architecture (paper §5.2 for the defaults that follow
the paper), and what it returns; events.py holds what it reports while it runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import FastMaskError, ParameterError
from ..inference.options import TOP_K, ProposerOptions
from .loss import OBJECTNESS

DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a training run except the architecture (that is the FastMaskConfig)."""

    epochs: int = 30
    batch_size: int = 2  # images per step and per process
    optimizer: str = "adamw"  # the paper's SGD fits the fully connected head far slower (see docs/training.md)
    lr: float | None = None  # default: DEFAULT_LR of the optimizer
    momentum: float = 0.9  # SGD only (paper §5.2)
    weight_decay: float = 5e-5  # paper §5.2
    warmup_iters: int = 300  # linear warm-up from lr/10, then cosine decay to lr/20
    clip_grad: float = 10.0  # gradient-norm clip: training from scratch needs it early on
    freeze_stages: int = 0  # leading body stages fixed (the stem counts as one)
    freeze_bn: bool | None = None  # every body BatchNorm fixed; default: yes with --init, no from scratch
    size: int = 800  # training scale: longer side before jitter (the paper's 800)
    jitter: tuple[float, float] = (0.5, 1.25)
    crop: int | None = None  # largest side after scaling (default: size)
    flip: bool = True
    copy_paste: float = 0.5
    windows_per_image: int = 128  # sampled per image: up to half positives (the original sampled 64)
    objectness: str = "binary"  # confidence target of a positive window: 1, or its mask's IoU ("iou", OLN; loss.py)
    size_range: tuple[float, float] = (0.4, 0.8)
    centre_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # fp32 on the CPU; bf16 autocast on CUDA (fp16 with a grad scaler on request)
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_top_k: int = TOP_K
    train_sample: int = 8  # training images (unaugmented) evaluated beside val, to see under- or over-fitting
    bn_images: int = 64  # training images (unaugmented) that recompute BatchNorm statistics before validating
    log_every: int = 10  # iterations between log lines
    checkpoint_every: int = 1000  # iterations between mid-epoch checkpoints (0: at epoch ends only)

    def validation(self, device: str) -> ProposerOptions:
        """How training measures its network: the val top-k, the model's own settings otherwise, in PyTorch
        (the weights change between validations; an exported graph would serve one of them)."""
        return ProposerOptions(top_k=self.val_top_k, device=device, backend="torch")

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        checks = [
            (self.epochs >= 1, "epochs", "{} must be at least 1"),
            (self.batch_size >= 1, "batch_size", "{} must be at least 1"),
            (self.optimizer in DEFAULT_LR, "optimizer", f"{{}} must be one of {', '.join(DEFAULT_LR)}"),
            (self.lr is not None and self.lr > 0, "lr", "{} must be positive"),
            (self.freeze_stages >= 0, "freeze_stages", "{} must be at least 0"),
            (self.size >= 64, "size", "{} must be at least 64"),
            (0 < self.jitter[0] <= self.jitter[1], "jitter", "{} must be LOW,HIGH with 0 < LOW <= HIGH"),
            (self.windows_per_image >= 2, "windows_per_image", "{} must be at least 2"),
            (self.objectness in OBJECTNESS, "objectness", f"{{}} must be one of {', '.join(OBJECTNESS)}"),
            (0 < self.size_range[0] < self.size_range[1] <= 1, "size_range", "{} must be 0 < LOW < HIGH <= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision", "{} must be auto, fp32, bf16 or fp16"),
            (self.workers >= 0 and self.val_every >= 1 and self.log_every >= 1, None, "workers, val-every and log-every must be positive"),
            (self.bn_images >= 0, "bn_images", "{} must be at least 0"),
            (self.warmup_iters >= 0, "warmup_iters", "{} must be at least 0"),
            (0 <= self.copy_paste <= 1, "copy_paste", "{} must be a probability, between 0 and 1"),
            (self.train_sample >= 0, "train_sample", "{} must be at least 0"),
            (self.seed >= 0, "seed", "{} must be at least 0"),
            (self.checkpoint_every >= 0, "checkpoint_every", "{} must be at least 0"),
        ]
        for ok, parameter, message in checks:
            if not ok:
                raise ParameterError(parameter, message) if parameter else FastMaskError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        values.setdefault("optimizer", "sgd")  # runs stored before --optimizer existed used SGD ...
        values.setdefault("freeze_bn", False)  # ... and trained every BatchNorm
        return cls(**values)


@dataclass
class TrainSummary:
    out: str
    epochs: int = 0
    iterations: int = 0
    seconds_per_iteration: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    best: dict[str, Any] | None = None  # epoch and validation metrics of best.pt
    last_val: dict[str, Any] | None = None  # AR on val at the last evaluated epoch
    last_train: dict[str, Any] | None = None  # AR on the fixed training sample at the last evaluated epoch
    last_train_batch_statistics: dict[str, Any] | None = None  # the same with batch statistics (at the end)
    bn_warning: str | None = None  # eval mode far below batch statistics on the training sample
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable images and why
    stopped_by: str | None = None  # "SIGTERM" or "SIGUSR1": checkpointed mid-run, resume to go on
    step_seconds: list[float] = field(default_factory=list, repr=False)
