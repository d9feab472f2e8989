"""The CUDA path gives the CPU path's proposals: the shipped default at top-100 and top-1000, a folder read by
DataLoader processes and written by the writer thread, and bf16 close to fp32. Skipped without a GPU;
benchmarks/gpu.sh runs them on a lent machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from pycocotools import mask as mask_utils

from fastmask_cli.inference.proposer import Proposer
from fastmask_cli.modeling.weights import load_model
from fastmask_cli.runs.folder import propose_folder
from support import assert_same_proposals, draw_scene, write_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs these)")


@pytest.fixture
def exact_cuda():
    """TF32 off: cuDNN's default TF32 convolutions round at about 1e-3, beyond the 1e-5 ties compared here."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def shipped():
    return load_model()[0]


@pytest.mark.parametrize("top_k", [100, 1000])
def test_shipped_default_on_cuda_equals_the_cpu(exact_cuda, shipped, top_k: int) -> None:
    image = draw_scene(600, 800, seed=3)
    cpu = Proposer(shipped, device="cpu", top_k=top_k, backend="torch").propose(image)
    gpu = Proposer(shipped, device="cuda", top_k=top_k).propose(image)
    assert_same_proposals(gpu, cpu, tie=1e-5)


def _by_image(path: Path) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for r in orjson.loads(path.read_bytes()):
        found.setdefault(r["image_id"], []).append(r)
    return found


def test_cuda_folder_with_readers_and_writer_thread_equals_the_cpu(exact_cuda, shipped, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        write_image(folder / f"{i}.png", draw_scene(480, 640, seed=10 + i))
    cpu = propose_folder(Proposer(shipped, device="cpu", top_k=100, backend="torch"), folder, tmp_path / "cpu.json",
                         weights_id="w", workers=0)
    gpu = propose_folder(Proposer(shipped, device="cuda", top_k=100), folder, tmp_path / "gpu.json",
                         weights_id="w", workers=2, batch_size=4)
    assert cpu.images == gpu.images == 6
    a, b = _by_image(tmp_path / "gpu.json"), _by_image(tmp_path / "cpu.json")
    assert a.keys() == b.keys()
    for image_id in a:
        assert len(a[image_id]) == len(b[image_id]) > 0
        scores_a = np.array([r["score"] for r in a[image_id]])
        scores_b = np.array([r["score"] for r in b[image_id]])
        assert np.allclose(scores_a, scores_b, atol=1e-5, rtol=0)
        iou = np.asarray(mask_utils.iou([r["segmentation"] for r in a[image_id]], [r["segmentation"] for r in b[image_id]],
                                        [0] * len(b[image_id])))
        assert (iou.max(axis=1) >= 0.99).all()


def test_bf16_on_cuda_finds_what_fp32_finds(shipped) -> None:
    image = draw_scene(600, 800, seed=4)
    fp32 = Proposer(shipped, device="cuda", top_k=100).propose(image)
    bf16 = Proposer(shipped, device="cuda", top_k=100, precision="bf16").propose(image)
    assert len(bf16) == len(fp32)
    best = bf16.first(20)
    iou = np.asarray(mask_utils.iou(best.rles, fp32.rles, [0] * len(fp32)))
    assert (iou.max(axis=1) >= 0.9).mean() >= 0.9  # bf16's best 20 are fp32's proposals, a mask or two aside
    assert np.median(np.abs(best.scores - fp32.scores[iou.argmax(axis=1)])) < 0.02
