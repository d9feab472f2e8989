"""BatchNorm statistics that match the weights: precise BN, batch-statistics measurement, from-scratch fits."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fastmask_cli import Proposer, load_model, preset
from fastmask_cli.training.engine import train
from fastmask_cli.training.precise_bn import BatchStatistics, recompute_batchnorm, training_batchnorms
from fastmask_cli.training.settings import TrainSettings
from support import write_image
from support.cli import run
from support.coco_data import CocoData


class FrozenLast(nn.Sequential):
    """conv -> BN (trains) -> ReLU -> BN (frozen: kept in eval mode, as a body keeps its frozen norms)."""

    def train(self, mode: bool = True) -> "FrozenLast":
        super().train(mode)
        self[3].eval()
        return self


def test_recomputed_statistics_are_the_average_of_the_batches() -> None:
    torch.manual_seed(0)
    model = FrozenLast(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(), nn.BatchNorm2d(4))
    frozen = {k: v.clone() for k, v in model[3].state_dict().items()}
    batches = [torch.randn(2, 3, 8, 8) * (i + 1) + i for i in range(3)]
    model.eval()
    assert training_batchnorms(model) == [model[1]]
    assert recompute_batchnorm(model, [(b,) for b in batches]) == 3
    with torch.no_grad():
        features = [model[0](b) for b in batches]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).mean(0)
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, expected_var, atol=1e-4)
    assert model[1].momentum == 0.01 and not model.training  # restored
    assert all(torch.equal(frozen[k], v) for k, v in model[3].state_dict().items())


def test_batch_statistics_leave_the_running_statistics_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8) * 5 + 3
    with BatchStatistics(model), torch.no_grad():
        y = model(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5)  # normalised by its own statistics
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model[1].training


def draw_fit_set(folder: Path, count: int = 4) -> Path:
    """`count` drawn 128x160 images with an ellipse and a rectangle each, and their COCO ground truth."""
    coco = CocoData(((1, "shape"),))
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(70, 110, size=(128, 160, 3), dtype=np.uint8)
        image_id = coco.image(f"fit_{i}.png", 160, 128)
        ellipse = np.zeros((128, 160), np.uint8)
        cx, cy = 45 + 6 * i, 60 + 3 * i
        cv2.ellipse(ellipse, (cx, cy), (34, 28), 10 * i, 0, 360, 1, -1)
        rect = np.zeros((128, 160), np.uint8)
        cv2.rectangle(rect, (92 - 4 * i, 30 + 5 * i), (150 - 4 * i, 96 + 5 * i), 1, -1)
        for mask, colour in ((ellipse, (220, 50, 40)), (rect, (40, 60, 220))):
            image[mask.astype(bool)] = colour
            coco.mask(image_id, mask)
        write_image(folder / f"fit_{i}.png", image)
    return coco.write(folder / "gt.json")


FIT = dict(epochs=40, batch_size=2, warmup_iters=20, size=160, jitter=(1.0, 1.0), copy_paste=0.0, flip=False,
           workers=0, train_sample=4, val_top_k=100)


@pytest.fixture(scope="module")
def fit_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fit")
    draw_fit_set(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("bn_images", [4, 0])
def test_the_default_preset_from_scratch_works_in_eval_mode_as_in_training(fit_set: Path, tmp_path: Path, bn_images: int) -> None:
    """The default preset (`fast`: EfficientNet-Lite0, BatchNorm momentum 0.01) from scratch, 80 steps on
    four drawn images (about 20 s). Before precise BN (what `bn_images=0` still does), eval mode measured
    mask AR@100 0.21 on these images while the same weights with batch statistics measured 0.95; with
    it, eval mode measured 0.96."""
    config = preset("fast").with_overrides(size=160)
    summary = train(fit_set / "gt.json", fit_set, tmp_path / "run", config=config, init="none",
                    settings=TrainSettings(**FIT, bn_images=bn_images), device="cpu")
    eval_ar = summary.last_train["mask AR@100"]
    batch_ar = summary.last_train_batch_statistics["mask AR@100"]
    assert batch_ar >= 0.5  # the weights have learned the shapes
    if bn_images:
        assert eval_ar >= 0.5 and abs(eval_ar - batch_ar) <= 0.05 and summary.bn_warning is None
        # shipped by `fastmask export` (which recomputes the statistics too), it proposes as the final validation measured
        result = run("export", str(tmp_path / "run"), "--name", "fitted", "--weights-dir", str(tmp_path / "w"),
                     "--ann", str(fit_set / "gt.json"), "--images", str(fit_set), "--top-k", "100", "--ranker", "windows")
        assert result.exit_code == 0, result.output
        assert "recomputed over 4 training images" in result.output
        shipped = json.loads((tmp_path / "w" / "manifest.json").read_text())["models"][0]
        # every threshold of the grid measured; at the trained 0.5, what the final validation measured
        grid = {row["threshold"]: row["segm AR@100"] for row in shipped["mask_threshold"]["grid"]}
        assert sorted(grid) == [0.3, 0.35, 0.4, 0.45, 0.5] and grid[0.5] == pytest.approx(eval_ar, abs=1e-4)
        chosen = shipped["mask_threshold"]["chosen"]
        assert shipped["proposer"]["mask_threshold"] == chosen and grid[chosen] == max(grid.values())
        assert shipped["metrics"]["segm"]["AR@100"] == pytest.approx(grid[chosen], abs=1e-4)
        model, _ = load_model(str(tmp_path / "w" / "fitted.pt"))
        assert Proposer(model, device="cpu").backend == "onnx"  # and the shipped file runs on the default backend
    else:  # --bn-images 0 ships the statistics as trained: the run says so plainly
        assert eval_ar < 0.5 * batch_ar and "do not describe the weights" in summary.bn_warning


def test_export_recomputes_only_what_training_let_train(fit_set: Path, tmp_path: Path) -> None:
    """A run that kept its body's BatchNorms frozen (fine-tuning from ImageNet) ships them as they were;
    the window norm, which trained, is recomputed."""
    from fastmask_cli import save_checkpoint
    from support import tiny_model

    model = tiny_model()
    settings = {**TrainSettings(freeze_bn=True, bn_images=4).to_dict()}
    save_checkpoint(tmp_path / "run.pt", model, meta={"trained_on": str(fit_set / "gt.json"), "images": str(fit_set),
                                                      "epochs": 1, "settings": settings})
    result = run("export", str(tmp_path / "run.pt"), "--name", "tuned", "--weights-dir", str(tmp_path / "w"),
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    shipped, _ = load_model(str(tmp_path / "w" / "tuned.pt"))
    before, after = model.state_dict(), shipped.state_dict()
    body = [k for k in before if k.startswith("body.") and k.endswith("running_mean")]
    assert body and all(torch.equal(before[k], after[k]) for k in body)
    assert not torch.equal(before["norm.bn.running_mean"], after["norm.bn.running_mean"])


def test_ranker_and_threshold_choice_takes_the_best_mask_ar10_plus_ar100() -> None:
    from types import SimpleNamespace

    from fastmask_cli.export import choose

    def measured(ar100: float, ar10: float, kind: str = "segm") -> SimpleNamespace:
        return SimpleNamespace(results={kind: SimpleNamespace(metrics={"AR@100": ar100, "AR@10": ar10})})

    rows = [("windows", 0.3, measured(0.2, 0.1)), ("windows", 0.4, measured(0.25, 0.05)), ("fused", 0.4, measured(0.22, 0.12))]
    assert choose(rows)[:2] == ("fused", 0.4)
    assert choose([("windows", 0.3, measured(0.5, 0.25)), ("fused", 0.3, measured(0.625, 0.125))])[:2] == ("fused", 0.3)  # tie: AR@100
    assert choose([("windows", 0.3, measured(0.2, 0.1, "bbox")), ("windows", 0.5, measured(0.3, 0.1, "bbox"))])[1] == 0.5  # boxes only


def test_a_default_ships_only_measured(fit_set: Path, tmp_path: Path) -> None:
    from fastmask_cli import save_checkpoint
    from support import tiny_model

    save_checkpoint(tmp_path / "run.pt", tiny_model(), meta={"epochs": 1, "settings": {}})
    result = run("export", tmp_path / "run.pt", "--name", "x", "--weights-dir", tmp_path / "w", "--default")
    assert result.exit_code == 1 and "--default weights are measured before they ship: give --ann and --images" in result.flat
    assert not (tmp_path / "w").exists()
    bad = run("export", tmp_path / "run.pt", "--name", "x", "--weights-dir", tmp_path / "w", "--thresholds", "0.3,x")
    assert bad.exit_code == 1 and "--thresholds must be a number or a list" in bad.flat
    for name in ("../elsewhere/mine", "team/mine", str(tmp_path / "abs"), "..\\up", ".hidden", ""):  # a name, not a path
        refused = run("export", tmp_path / "run.pt", "--name", name, "--weights-dir", tmp_path / "w")
        assert refused.exit_code == 1 and f"--name {name!r} is not a name" in refused.flat, name
        assert "Traceback" not in refused.output
    assert not (tmp_path / "w").exists() and not (tmp_path / "elsewhere").exists() and not (tmp_path / "abs.pt").exists()


def test_auto_backend_falls_back_to_pytorch_when_the_graph_cannot_be_cached(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    from support import tiny_model

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FASTMASK_CACHE", str(blocker / "cache"))
    proposer = Proposer(tiny_model(seed=6), device="cpu")
    assert proposer.backend == "torch" and "FASTMASK_CACHE" in proposer.notes[0]
