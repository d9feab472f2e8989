"""The network on ONNX Runtime: the same pyramid and proposals as PyTorch, cached per weights, exported by the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fastmask_cli import FastMaskError, Proposer, load_model
from fastmask_cli.inference.backend import OnnxNetwork, cache_dir, weights_digest, write_onnx
from fastmask_cli.inference.proposer import pad_batch
from support import assert_same_proposals, draw_scene, tiny_model
from support.cli import run


@torch.inference_mode()
def test_onnx_network_gives_the_pytorch_pyramid_at_any_size_and_batch(tmp_path: Path) -> None:
    model = tiny_model()
    network = OnnxNetwork.for_model(model, scales=4)
    for sizes in ([(96, 128)], [(160, 96), (100, 130)], [(33, 47)]):
        batch = pad_batch([draw_scene(h, w, seed=i) for i, (h, w) in enumerate(sizes)], torch.device("cpu"))
        expected, got = model(batch, 4), network(batch, 4)
        assert [lv for lv in got.grid.levels] == [lv for lv in expected.grid.levels]
        for e, g in zip(expected.features + expected.scores, got.features + got.scores):
            assert e.shape == g.shape and torch.allclose(e, g, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
@pytest.mark.parametrize("body", ["resnet18", "mobilenet_v2"])  # mobilenet_v2: TensorFlow's padding, by image size
def test_onnx_network_has_the_stride8_level(body: str) -> None:
    model = tiny_model(streams=1, stride8=True, body=body)
    network = OnnxNetwork.for_model(model, scales=4)
    batch = pad_batch([draw_scene(100, 130)], torch.device("cpu"))
    expected, got = model(batch, 4), network(batch, 4)
    for e, g in zip(expected.features + expected.scores, got.features + got.scores):
        assert e.shape == g.shape and torch.allclose(e, g, atol=1e-4, rtol=1e-4)
    batch = pad_batch([draw_scene(97, 131)], torch.device("cpu"))  # odd sides: the other padding
    expected, got = model(batch, 4), network(batch, 4)
    assert [lv.stride for lv in got.grid.levels] == [8, 16, 32, 64]
    for e, g in zip(expected.features + expected.scores, got.features + got.scores):
        assert e.shape == g.shape and torch.allclose(e, g, atol=1e-4, rtol=1e-4)


def test_onnx_proposer_gives_the_pytorch_proposals() -> None:
    model = tiny_model()
    for seed, top_k in ((0, 20), (1, 100)):
        image = draw_scene(120, 160, seed=seed)
        onnx = Proposer(model, device="cpu", top_k=top_k)
        assert onnx.backend == "onnx"
        assert_same_proposals(onnx.propose(image), Proposer(model, device="cpu", top_k=top_k, backend="torch").propose(image))


def test_the_cached_graph_is_reused_and_rebuilt_when_damaged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTMASK_CACHE", str(tmp_path / "cache"))
    model = tiny_model(seed=3)
    first = OnnxNetwork.for_model(model, scales=2)
    assert first.path.parent == cache_dir() == tmp_path / "cache" and weights_digest(model)[:24] in first.path.name
    exported = []
    monkeypatch.setattr("fastmask_cli.inference.backend.write_onnx", lambda *args: exported.append(args) or write_onnx(*args))
    assert OnnxNetwork.for_model(model, scales=2).path == first.path and exported == []  # reused, not exported again
    assert OnnxNetwork.for_model(model, scales=3).path != first.path and len(exported) == 1  # another graph
    first.path.write_bytes(b"half a file")  # e.g. a disk that filled up under another tool
    again = OnnxNetwork.for_model(model, scales=2)
    assert len(exported) == 2 and again.path == first.path and len(list(first.path.parent.glob("*.tmp"))) == 0
    other = tiny_model(seed=4)  # other weights: another file, never the stale one
    assert OnnxNetwork.for_model(other, scales=2).path != first.path


@torch.inference_mode()
def test_a_bit_flipped_in_the_cached_graph_is_exported_again_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FASTMASK_CACHE", str(tmp_path / "cache"))
    model = tiny_model(seed=6)
    path = OnnxNetwork.for_model(model, scales=2).path
    weight = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight)
    assert at > 0 and len(weight) > 1000  # the graph holds the tensor's raw bytes
    data[at + len(weight) // 2] ^= 0x40  # still a valid graph, with one weight changed
    path.write_bytes(bytes(data))
    batch = pad_batch([draw_scene(96, 128)], torch.device("cpu"))
    got, expected = OnnxNetwork.for_model(model, scales=2)(batch, 2), model(batch, 2)
    for e, g in zip(expected.scores, got.scores):
        assert torch.allclose(e, g, atol=1e-4, rtol=1e-4)
    assert path.read_bytes() != bytes(data)


def test_an_unwritable_cache_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FASTMASK_CACHE", str(blocker / "cache"))
    with pytest.raises(FastMaskError, match="FASTMASK_CACHE"):
        Proposer(tiny_model(seed=5), device="cpu", backend="onnx")


def test_backend_choice() -> None:
    model = tiny_model()
    assert Proposer(model, device="cpu").backend == "onnx"
    assert Proposer(model, device="cpu", precision="bf16").backend == "torch"  # auto: ONNX only in fp32
    assert Proposer(model, device="cpu", backend="torch").backend == "torch"
    with pytest.raises(FastMaskError, match="fp32"):
        Proposer(model, device="cpu", precision="bf16", backend="onnx")
    with pytest.raises(FastMaskError, match="unknown backend"):
        Proposer(model, device="cpu", backend="tensorrt")
    narrow = tiny_model(window_pad=4)  # padding that depends on the image size: not exportable
    assert Proposer(narrow, device="cpu").backend == "torch"
    with pytest.raises(FastMaskError, match="window_pad"):
        Proposer(narrow, device="cpu", backend="onnx")


def test_cli_export_onnx_runs_in_onnxruntime_with_the_pytorch_outputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy" / "model.onnx"
    result = run("export", str(tiny_checkpoint), "--onnx", str(out), "--scales", "3")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    names = [o.name for o in session.get_outputs()]
    assert names == ["features_0", "features_1", "features_2", "scores_0", "scores_1", "scores_2"]
    images = torch.from_numpy(draw_scene(100, 140)).permute(2, 0, 1)[None].float()
    outputs = session.run(None, {"images": images.numpy()})
    model, _ = load_model(str(tiny_checkpoint))
    with torch.inference_mode():
        expected = model(images, 3)
    for e, g in zip(expected.features + expected.scores, outputs):
        assert np.allclose(e.numpy(), g, atol=1e-4, rtol=1e-4)
    refused = run("export", str(tiny_checkpoint))
    assert refused.exit_code == 1 and "--onnx" in refused.output and "Traceback" not in refused.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu.sh on a lent machine)")
def test_cuda_proposals_match_the_cpu() -> None:
    """Paste-back, run lengths and tight boxes on the GPU give the CPU's proposals (cuBLAS may round a pixel
    on the threshold the other way, hence IoU rather than bytes)."""
    model = tiny_model()
    image = draw_scene(120, 160, seed=2)
    cpu = Proposer(model, device="cpu", top_k=100, backend="torch").propose(image)
    assert_same_proposals(Proposer(model, device="cuda", top_k=100).propose(image), cpu, tie=1e-4)
