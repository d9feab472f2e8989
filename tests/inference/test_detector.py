"""The COCO detector as a ranker: window matching, one-to-one priors, the fused score, its fit, the
proposer's fused path and the detector on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmask_cli import ParameterError, Proposer
from fastmask_cli.inference.detector import (
    OBJECT_FILL,
    PRIOR_FLOOR,
    Detector,
    best_boxes,
    detector_prior,
    fuse,
    load_detector,
    match_windows,
)
from fastmask_cli.inference.options import DEFAULT_FUSION
from fastmask_cli.modeling.windows import WindowGrid
from fastmask_cli.training.fusion import fit_fusion
from support import draw_scene, tiny_model


def test_a_box_gets_the_window_training_would_assign_it():
    grid = WindowGrid.for_input(480, 640, [8, 16, 32, 64], pad=5, window=10)
    for flat in (grid.offsets[1] + 37, grid.offsets[2] + 5, grid.offsets[3] + 3):
        window = grid.boxes(flat.view(1))[0]
        centre, side = (window[:2] + window[2:]) / 2, window[2] - window[0]
        box = torch.cat([centre - OBJECT_FILL * side / 2, centre + OBJECT_FILL * side / 2]).view(1, 4)
        assert match_windows(grid, box).item() == flat.item()
    # a box at the image corner, of a size no level fits, still gets a window of the grid
    corner = match_windows(grid, torch.tensor([[0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 640.0, 480.0]]))
    assert ((corner >= 0) & (corner < grid.num_windows)).all()
    assert grid.locate(corner)[0].tolist() == [0, 3]


def test_each_detector_box_claims_one_candidate_best_first():
    candidates = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 10, 10], [0, 0, 30, 30]], dtype=float)  # x, y, w, h
    detector = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
    prior = detector_prior(candidates, detector, torch.tensor([0.9, 0.6, 0.99]))
    # the first box takes its exact match, the second (a duplicate) the next best overlap, the third nothing
    assert prior.tolist() == [pytest.approx(0.9), pytest.approx(0.6), PRIOR_FLOOR, PRIOR_FLOOR]
    assert detector_prior(np.zeros((0, 4)), detector, torch.ones(3)).shape == (0,)


def test_fused_score_is_a_noisy_or_of_either_source():
    window, prior = np.array([0.9, 0.1, 0.1, 0.5]), np.array([PRIOR_FLOOR, 0.9, PRIOR_FLOOR, 0.5])
    fused = fuse(window, prior, DEFAULT_FUSION)
    assert np.allclose(fused, 1 - (1 - window) * (1 - prior), atol=1e-6)
    assert fused[0] > fused[2] < fused[1]  # either source alone lifts a candidate
    weights = (0.85, -1.6, 0.41, -0.83)
    assert (np.diff(fuse(np.linspace(0.01, 0.99, 20), np.full(20, 0.3), weights)) > 0).all()
    assert (np.diff(fuse(np.full(20, 0.3), np.linspace(0.01, 0.99, 20), weights)) > 0).all()


def test_fit_recovers_the_weights_that_made_the_targets():
    rng = np.random.default_rng(0)
    parts = np.stack([rng.uniform(0.01, 0.99, 4000), np.where(rng.random(4000) < 0.3, rng.uniform(0.05, 0.99, 4000), PRIOR_FLOOR)], 1)
    truth = (0.8, -1.5, 0.5, -0.7)
    fitted = fit_fusion(parts, fuse(parts[:, 0], parts[:, 1], truth))
    assert np.allclose(fitted, truth, atol=0.05)
    with pytest.raises(ValueError, match="no candidates"):
        fit_fusion(np.zeros((0, 2)), np.zeros(0))


def test_best_boxes_are_suppressed_and_sized():
    boxes = torch.tensor([[0, 0, 50, 50], [1, 1, 50, 50], [60, 60, 90, 90], [0, 0, 0.5, 40]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.99])
    assert best_boxes(boxes, scores).tolist() == [1, 2]  # the duplicate and the sliver go
    assert best_boxes(boxes, scores, count=1).tolist() == [1]


@pytest.fixture(scope="module")
def detector_ssd():
    return load_detector()[0]


def test_detector_on_onnx_runtime_gives_pytorchs_boxes(detector_ssd):
    images = [draw_scene(240, 320, seed=1), draw_scene(200, 150, seed=2)]
    onnx, torch_ = Detector(detector_ssd, torch.device("cpu"), backend="onnx"), Detector(detector_ssd, torch.device("cpu"))
    for (b1, s1), (b2, s2), image in zip(onnx(images), torch_(images), images):
        assert b1.shape == (1917, 4) and s1.shape == (1917,)
        assert torch.allclose(b1, b2, atol=1e-3) and torch.allclose(s1, s2, atol=1e-4)
        assert (b1[:, 2] <= image.shape[1]).all() and (b1[:, 3] <= image.shape[0]).all() and (b1 >= 0).all()


def test_fused_proposer_ranks_by_the_fused_score_and_windows_stay_as_before():
    model = tiny_model(scales=4)
    image = draw_scene(120, 160, seed=3)
    windows = Proposer(model, top_k=50, backend="torch", device="cpu")
    assert windows.ranker == "windows" and "ranker" not in windows.settings()
    plain = windows.propose(image)
    assert plain.parts is None and windows._network.detectors == {}  # no detector loaded for the windows' ranking

    fitted = (0.85, -1.6, 0.41, -0.83)
    model.proposer_options = {"fusion": list(fitted)}  # as export stores it
    fused = Proposer(model, top_k=50, backend="torch", device="cpu")
    assert fused.ranker == "fused" and fused.settings()["fusion"] == list(fitted)
    # a variant asked for the fused ranker again fuses with the model's fitted weights, not the unfitted ones
    assert fused.variant(ranker="windows").variant(ranker="fused").fusion == fitted
    proposals = fused.variant(nms_mode="drop").propose(image)  # scores as fused (demoting would rescale duplicates')
    assert proposals.parts is not None and proposals.parts.shape == (len(proposals), 2) and len(proposals) > 1
    expected = fuse(proposals.parts[:, 0], proposals.parts[:, 1], fitted)
    assert np.allclose(proposals.scores, expected, atol=1e-6) and (np.diff(proposals.scores) <= 0).all()
    # a candidate the detector vouches for ranks by the detector too: its prior is above the floor
    assert ((proposals.parts[:, 1] > PRIOR_FLOOR) == (expected > fuse(proposals.parts[:, 0], np.full(len(proposals), PRIOR_FLOOR), fitted))).all()
    # the same network asked for the windows' ranking gives exactly the earlier proposals
    again = fused.variant(ranker="windows").propose(image)
    assert [r["counts"] for r in again.rles] == [r["counts"] for r in plain.rles]
    assert np.array_equal(again.scores, plain.scores)
    with pytest.raises(ParameterError, match="ranker"):
        Proposer(model, ranker="detector")


FORKED = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from fastmask_cli import Proposer, propose_jobs
from support import draw_scene, tiny_model
model = tiny_model(scales=4)
model.proposer_options = {"fusion": [0.85, -1.6, 0.41, -0.83]}
proposer = Proposer(model, top_k=10, device="cpu")
proposer.propose(draw_scene(96, 128))  # the parent's detector session exists before the workers fork
summary = propose_jobs(proposer, Path(sys.argv[1]), Path(sys.argv[2]), jobs=2, weights_id="t")
print("done", summary.images)
"""


def test_each_backend_has_its_own_detector_and_forked_workers_make_their_own_sessions(image_folder, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model = tiny_model(scales=4)
    model.proposer_options = {"fusion": [0.85, -1.6, 0.41, -0.83]}
    onnx = Proposer(model, top_k=10, device="cpu")
    torch_ = onnx.variant(backend="torch")
    assert onnx.backend == "onnx" and set(onnx._network.detectors) == {"onnx", "torch"}
    assert onnx._network.detectors["torch"].backend == "torch" and torch_.settings()["backend"] == "torch"
    # a worker forked after the parent ran the detector must not destroy the session it inherited: it would hang
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", FORKED, str(image_folder), str(tmp_path / "r.json"), str(tests)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "done 4" in done.stdout, done.stderr[-2000:]


def test_a_fused_model_reshipped_without_a_measurement_keeps_its_ranking(tmp_path):
    from fastmask_cli import load_model, save_checkpoint
    from fastmask_cli.export import ship_run

    model = tiny_model(scales=4)
    model.proposer_options = {"fusion": [0.85, -1.6, 0.41, -0.83]}
    save_checkpoint(tmp_path / "fused.pt", model, meta={"epochs": 1, "settings": {}})
    record = ship_run(str(tmp_path / "fused.pt"), "copy", tmp_path / "w", bn_images=0).record
    assert record["proposer"]["fusion"] == [0.85, -1.6, 0.41, -0.83] and record["ranker"]["detector"]["file"]
    copy = Proposer(load_model(str(tmp_path / "w" / "copy.pt"))[0], device="cpu")
    assert copy.ranker == "fused" and copy.fusion == (0.85, -1.6, 0.41, -0.83)
    windows = ship_run(str(tmp_path / "fused.pt"), "plain", tmp_path / "w", bn_images=0, ranker="windows").record
    assert windows["proposer"]["fusion"] == [] and windows["proposer"]["ranker"] == "windows"
