"""`fastmask bench`: the pyramid baseline computes what it claims, and the tables have their structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fastmask_cli import Proposer
from fastmask_cli.bench import STAGES, bench, parse_scales, parse_size
from fastmask_cli.cli import app
from fastmask_cli.errors import FastMaskError

from conftest import draw_scene, tiny_model


def test_pyramid_at_one_scale_is_the_one_shot_model() -> None:
    model = tiny_model()
    image = draw_scene(96, 128)
    one_shot = Proposer(model, device="cpu", top_k=20, scales=1).propose(image)
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
    order = []
    report = bench(proposer, [draw_scene(96, 128, seed=i) for i in range(2)], [1, 2], size=(128, 96), runs=2, warmup=1, pyramid=True,
                   on_run=order.append)
    assert [(r.scales, r.mode) for r in report.rows] == [(1, "one-shot"), (1, "pyramid"), (2, "one-shot"), (2, "pyramid")]
    # interleaved run by run, so that drift moves every configuration alike
    assert order == ["one-shot, 1 scales", "pyramid, 1 scales", "one-shot, 2 scales", "pyramid, 2 scales"] * 2
    for scales, (median, low, high) in report.speedup().items():
        ratios = [p / o for p, o in zip(report.rows[2 * scales - 1].latencies_s, report.rows[2 * scales - 2].latencies_s)]
        assert low == min(ratios) and high == max(ratios) and low <= median <= high
    for row in report.rows:
        assert set(row.stages_s) == set(STAGES) and all(v > 0 for v in row.stages_s.values())
        assert sum(row.stages_s.values()) <= row.median_s * 1.5 and row.p90_s >= row.median_s
        assert row.network_gflops > 0 and row.flop_floor_s > 0 and row.peak_memory_mb > 0
    assert set(report.speedup()) == {1, 2}
    assert proposer.multi_shot is False and proposer.timer is None  # the proposer is left as it was found
    assert {"cpu", "threads", "torch", "device", "matmul_gflops"} <= set(report.machine)


def test_cli_bench_writes_json(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--weights", str(tiny_checkpoint), "--scales", "1,3", "--pyramid", "--runs", "1",
                                      "--warmup", "0", "--size", "128x96", "--images", str(image_folder), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["scales"], r["mode"]) for r in data["rows"]] == [(1, "one-shot"), (1, "pyramid"), (3, "one-shot"), (3, "pyramid")]
    assert set(data["speedup_one_shot_vs_pyramid"]) == {"1", "3"} and data["settings"]["size"] == "128x96"
    assert "faster than the image pyramid" in result.output and "to" in result.output


def test_cli_bench_table_fits_80_columns(tiny_checkpoint: Path, image_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr("fastmask_cli.cli.console.width", 80)
    args = ["bench", "--weights", str(tiny_checkpoint), "--runs", "1", "--warmup", "0", "--size", "128x96", "--images", str(image_folder)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "scales" in line and "mode" in line)
    assert "…" not in header and "network s" in header and "GFLOPs" in header
    monkeypatch.setattr("fastmask_cli.cli.console.width", 200)
    wide = CliRunner().invoke(app, [*args, "--wide"])
    assert wide.exit_code == 0 and "p90 s" in wide.output and "net / floor" in wide.output


@pytest.mark.parametrize("args, message", [(["--size", "800by600"], "WIDTHxHEIGHT"), (["--scales", "two"], "--scales"),
                                           (["--scales", "0"], "positive"), (["--runs", "0"], "--runs")])
def test_cli_bench_bad_options(tiny_checkpoint: Path, image_folder: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--weights", str(tiny_checkpoint), "--images", str(image_folder), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_parsers() -> None:
    assert parse_size("800x600") == (800, 600) and parse_scales("2,4, 6") == [2, 4, 6]
    with pytest.raises(FastMaskError):
        parse_size("10x10")


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_proposer_gives_the_eager_proposals() -> None:
    model = tiny_model()
    image = draw_scene(96, 128)
    eager = Proposer(model, device="cpu", top_k=10).propose(image)
    compiled = Proposer(model, device="cpu", top_k=10, compile=True).propose(image)
    assert np.allclose(eager.scores, compiled.scores, atol=1e-4)
    assert np.array_equal(eager.boxes, compiled.boxes)
