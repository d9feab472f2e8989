"""`fastmask bench`: the pyramid baseline computes what it claims, and the tables have their structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastmask_cli import Proposer
from fastmask_cli.bench.measure import STAGES, bench
from fastmask_cli.cli.common import int_list, parse_size
from fastmask_cli.errors import FastMaskError
from support import draw_scene, tiny_model
from support.cli import run


def test_pyramid_at_one_scale_is_the_one_shot_model() -> None:
    model = tiny_model()
    image = draw_scene(96, 128)
    one_shot = Proposer(model, device="cpu", top_k=20, scales=1, backend="torch").propose(image)
    pyramid = Proposer(model, device="cpu", top_k=20, scales=1, multi_shot=True).propose(image)
    assert one_shot.rles == pyramid.rles and np.array_equal(one_shot.scores, pyramid.scores)


@torch.inference_mode()
def test_each_pyramid_level_is_the_first_level_on_the_resized_image() -> None:
    model = tiny_model()
    images = torch.from_numpy(draw_scene(192, 256)).permute(2, 0, 1)[None].float()
    pyramid = model.image_pyramid(images, scales=4)
    assert [lv.stride for lv in pyramid.grid.levels] == [16, 24, 32, 48]
    for level, stride in zip(pyramid.grid.levels, [16, 24, 32, 48]):
        resized = F.interpolate(images, size=(round(192 * 16 / stride), round(256 * 16 / stride)), mode="area")
        alone = model(resized if stride != 16 else images, scales=1)
        index = pyramid.grid.levels.index(level)
        assert torch.allclose(pyramid.scores[index], alone.scores[0], atol=1e-5)
        assert torch.allclose(pyramid.features[index], alone.features[0], atol=1e-5)
    one_shot = model(images, scales=4)
    assert [lv.stride for lv in one_shot.grid.levels] == [16, 24, 32, 48]  # same windows, computed differently
    assert not torch.allclose(one_shot.scores[2], pyramid.scores[2])


def test_bench_rows_stages_and_speedup() -> None:
    proposer = Proposer(tiny_model(), device="cpu", top_k=10)
    assert proposer.backend == "onnx"  # the CPU default
    order = []
    report = bench(proposer, [draw_scene(96, 128, seed=i) for i in range(2)], [1, 2], size=(128, 96), runs=2, warmup=1,
                   pyramid=True, on_run=order.append, top_ks=[5, 10], backends=["onnx", "torch"])
    configs = [(r.scales, r.top_k, r.mode, r.backend) for r in report.rows]
    assert configs == [(s, k, m, b) for s in (1, 2) for k in (5, 10)
                       for m, b in (("one-shot", "onnx"), ("one-shot", "torch"), ("pyramid", "torch"))]
    # interleaved run by run, so that drift moves every configuration alike
    assert order == [f"{m}, {s} scales, top-{k}, {b}" for s, k, m, b in configs] * 2
    by = {r.config: r for r in report.rows}
    for config, (median, low, high) in report.speedup().items():
        pyramid = next(r for c, r in by.items() if c.mode == "pyramid" and (c.scales, c.top_k) == (config.scales, config.top_k))
        ratios = [p / o for p, o in zip(pyramid.latencies_s, by[config].latencies_s)]
        assert low == min(ratios) and high == max(ratios) and low <= median <= high
    assert {(c.scales, c.top_k, c.backend) for c in report.speedup()} == {(s, k, b) for s in (1, 2) for k in (5, 10)
                                                                          for b in ("onnx", "torch")}
    assert {(c.scales, c.top_k) for c in report.backend_speedup()} == {(s, k) for s in (1, 2) for k in (5, 10)}
    assert all(c.backend == "onnx" for c in report.backend_speedup())
    for row in report.rows:
        assert set(row.stages_s) == set(STAGES) and all(row.stages_s[s] > 0 for s in ("network", "decode", "paste", "rle"))
        assert sum(row.stages_s.values()) <= row.median_s * 1.5 and row.p90_s >= row.median_s
        assert row.network_gflops > 0 and row.flop_floor_s > 0 and row.peak_memory_mb > 0
    # the proposer is left as it was found
    assert (proposer.multi_shot, proposer.timer, proposer.top_k, proposer.backend) == (False, None, 10, "onnx")
    assert {"cpu", "threads", "torch", "device", "matmul_gflops"} <= set(report.machine)


def test_cli_bench_writes_json(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run("bench", "--weights", str(tiny_checkpoint), "--scales", "1,3", "--pyramid", "--runs", "1",
                 "--warmup", "0", "--size", "128x96", "--images", str(image_folder), "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["scales"], r["top_k"], r["mode"], r["backend"]) for r in data["rows"]] == [
        (s, k, m, b) for s in (1, 3) for k in (100, 1000) for m, b in (("one-shot", "onnx"), ("one-shot", "torch"), ("pyramid", "torch"))]
    assert {(r["scales"], r["top_k"]) for r in data["speedup_onnx_vs_torch"]} == {(s, k) for s in (1, 3) for k in (100, 1000)}
    assert len(data["speedup_one_shot_vs_pyramid"]) == 8 and data["settings"]["size"] == "128x96"
    # what the timed proposals were made with, beside the architecture
    assert data["settings"]["proposer"]["mask_threshold"] == 0.5 and data["settings"]["proposer"]["ranker"] == "windows"
    assert "faster than the image pyramid" in result.output and "ONNX Runtime runs" in result.output


def test_cli_bench_table_fits_80_columns(tiny_checkpoint: Path, image_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr("fastmask_cli.cli.common.console.width", 80)
    args = ["bench", "--weights", str(tiny_checkpoint), "--runs", "1", "--warmup", "0", "--size", "128x96", "--images", str(image_folder)]
    result = run(*args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "scales" in line and "mode" in line)
    for column in ("top-k", "backend", "img/s", "s/img", "network s", "net/floor"):
        assert column in header
    assert "…" not in header
    rows = [line for line in result.output.splitlines() if "one-shot" in line and line.startswith("│")]  # not progress lines
    assert len(rows) == 4 and {"onnx", "torch"} <= {cell.strip() for line in rows for cell in line.split("│")}
    monkeypatch.setattr("fastmask_cli.cli.common.console.width", 200)
    wide = run(*args, "--wide", "--backend", "torch", "--top-k", "50")
    assert wide.exit_code == 0 and "p90 s" in wide.output and "nms s" in wide.output and "GFLOPs" in wide.output
    assert "onnx" not in wide.output.split("machine:")[0]


def test_cli_bench_folder_times_propose_from_files_to_results(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run("bench", "--weights", str(tiny_checkpoint), "--runs", "2", "--warmup", "0", "--size", "128x96",
                 "--images", str(image_folder), "--top-k", "5,20", "--backend", "torch", "--folder",
                 "--batch-size", "2", "--jobs", "1,2", "--wide", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = data["folder_rows"]
    assert [(r["top_k"], r["backend"], r["images"], r["jobs"]) for r in rows] == [
        (5, "torch", 4, 1), (5, "torch", 4, 2), (20, "torch", 4, 1), (20, "torch", 4, 2)]
    for r in rows:
        assert len(r["seconds"]) == 2 and r["images_per_second"] == pytest.approx(4 / np.median(r["seconds"]))
        if r["jobs"] == 1:  # stages are timed in one process
            assert r["stages_s"]["network"] > 0 and r["other_s"] > 0  # reading and writing are not in the stages
            assert sum(r["stages_s"].values()) + r["other_s"] == pytest.approx(1 / r["images_per_second"])
        else:
            assert r["stages_s"] == {} and r["other_s"] is None and r["threads"] >= 1
    assert "files to results file" in result.output and data["settings"]["command"].startswith("fastmask bench")
    assert "2 processes" in result.output and "as fast as 1" in result.output


@pytest.mark.parametrize("args, message", [(["--size", "800by600"], "WIDTHxHEIGHT"), (["--scales", "two"], "--scales"),
                                           (["--scales", "0"], "positive"), (["--runs", "0"], "--runs"),
                                           (["--top-k", "ten"], "--top-k"), (["--backend", "tpu"], "--backend"),
                                           (["--backend", "onnx", "--precision", "bf16"], "--backend onnx")])
def test_cli_bench_bad_options(tiny_checkpoint: Path, image_folder: Path, args: list[str], message: str) -> None:
    result = run("bench", "--weights", str(tiny_checkpoint), "--images", str(image_folder), *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_parsers() -> None:
    assert parse_size("800x600") == (800, 600) and int_list("2,4, 6", "--scales") == [2, 4, 6]
    with pytest.raises(FastMaskError):
        parse_size("10x10")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_proposer_gives_the_eager_proposals() -> None:
    model = tiny_model()
    image = draw_scene(96, 128)
    eager = Proposer(model, device="cpu", top_k=10).propose(image)
    compiled = Proposer(model, device="cpu", top_k=10, compile=True).propose(image)
    assert np.allclose(eager.scores, compiled.scores, atol=1e-4)
    assert np.array_equal(eager.boxes, compiled.boxes)


def test_cli_bench_with_ground_truth_measures_each_scale_count(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The paper's Table 4 for the user's data: AR@10 / AR@100 beside s/img per scale count and mode, each
    row what propose and eval give at those settings."""
    from fastmask_cli.coco.evaluate import evaluate
    from support.coco_data import write_shapes_dataset

    gt, images = write_shapes_dataset(tmp_path / "shapes", images=3)
    out = tmp_path / "bench.json"
    result = run("bench", "--weights", str(tiny_checkpoint), "--scales", "1,2", "--pyramid", "--runs", "1", "--warmup", "0",
                 "--size", "128x96", "--top-k", "10", "--backend", "torch", "--images", str(images), "--ann", str(gt),
                 "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["accuracy_rows"]
    assert [(r["scales"], r["mode"], r["images"]) for r in rows] == [(s, m, 3) for s in (1, 2) for m in ("one-shot", "pyramid")]
    assert all(r["s_per_image"] > 0 and 0 <= r["segm"]["AR@10"] <= r["segm"]["AR@100"] <= 1 for r in rows)
    assert "AR (%) against scales" in result.flat and "paper, Table 4" in result.flat
    proposed = run("propose", str(images), "--out", str(tmp_path / "p.json"), "--weights", str(tiny_checkpoint), "--ann", str(gt),
                   "--scales", "2", "--top-k", "100")
    assert proposed.exit_code == 0, proposed.output
    measured = evaluate(gt, tmp_path / "p.json")
    row = next(r for r in rows if r["scales"] == 2 and r["mode"] == "one-shot")
    assert row["segm"]["AR@100"] == pytest.approx(measured.results["segm"].metrics["AR@100"])
    assert row["bbox"]["AR@10"] == pytest.approx(measured.results["bbox"].metrics["AR@10"])
    lonely = run("bench", "--weights", str(tiny_checkpoint), "--ann", str(gt))
    assert lonely.exit_code == 1 and "give their folder with --images" in lonely.output


def test_bench_times_the_fused_rankers_detector_as_a_stage() -> None:
    model = tiny_model()
    model.proposer_options = {"fusion": [0.85, -1.6, 0.41, -0.83]}
    proposer = Proposer(model, device="cpu", top_k=10)
    report = bench(proposer, [draw_scene(96, 128)], [2], size=(128, 96), runs=1, warmup=0, top_ks=[10], backends=["onnx"])
    (row,) = report.rows
    assert row.stages_s["detector"] > 0 and row.stages_s["detector"] < row.median_s
    plain = bench(Proposer(tiny_model(), device="cpu", top_k=10), [draw_scene(96, 128)], [2], size=(128, 96), runs=1,
                  warmup=0, top_ks=[10], backends=["onnx"])
    assert plain.rows[0].stages_s["detector"] == 0.0  # the windows' ranking runs none
