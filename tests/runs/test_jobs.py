"""`propose --jobs N`: worker processes over one folder, joined into the file one process writes;
interrupted, failed and resumed as one process is."""

import json
import os
from pathlib import Path

import pytest

from fastmask_cli.errors import FastMaskError, ParameterError
from fastmask_cli.inference.proposer import Proposer
from fastmask_cli.io.files import NoRoom
from fastmask_cli.io.results_file import images_json_path
from fastmask_cli.runs import jobs as jobs_module
from fastmask_cli.runs.jobs import propose_jobs, resolve_jobs
from fastmask_cli.runs.plan import plan_images
from support import draw_scene, tiny_model, write_image
from support.cli import propose


@pytest.fixture
def seven_images(tmp_path: Path) -> Path:
    """Seven images of several sizes, one in a subfolder, one unreadable: slices of uneven work."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        write_image(folder / f"img_{i}.png", draw_scene(96 + 16 * (i % 3), 128 - 8 * i, seed=i))
    write_image(folder / "sub" / "deep.png", draw_scene(112, 96, seed=9))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".shard-" in p.name or p.name.endswith(".partial"))


@pytest.mark.parametrize("fmt", ["coco", "jsonl"])
def test_jobs_write_byte_for_byte_the_file_of_one_process(seven_images, tiny_checkpoint, tmp_path, fmt):
    one = tmp_path / "one" / "r.json"
    assert propose(seven_images, one, tiny_checkpoint, "--jobs", "1", "--format", fmt).exit_code == 0
    for jobs in ("2", "3", "auto"):
        out = tmp_path / f"jobs-{jobs}" / "r.json"
        result = propose(seven_images, out, tiny_checkpoint, "--jobs", jobs, "--format", fmt)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == one.read_bytes() and len(out.read_bytes()) > 100
        assert images_json_path(out).read_bytes() == images_json_path(one).read_bytes()
        assert leftovers(out.parent) == []  # slices and their logs are removed once joined
        assert "skipped 1" in result.flat and "broken.png" in result.flat


def test_api_reports_every_image_once_and_the_summary_of_the_whole_run(seven_images, tmp_path):
    proposer = Proposer(tiny_model(), top_k=5, size=128, device="cpu")
    started, seen = [], []
    summary = propose_jobs(proposer, seven_images, tmp_path / "r.json", jobs=2, weights_id="tiny",
                           on_start=started.append, on_image=seen.append)
    plan = plan_images(seven_images)
    assert started == [len(plan.files)] and sorted(seen) == sorted(plan.files)
    assert summary.images == len(plan.files) - 1 and summary.proposals == 5 * summary.images
    assert [f for f, _ in summary.skipped] == ["broken.png"] and summary.resumed == 0
    records = json.loads(images_json_path(tmp_path / "r.json").read_text())["info"]["fastmask"]
    assert records["shard"] is None and "merged_from" not in records


def interrupt_on_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in every worker at its second image (each forked worker counts its own calls)."""
    real = Proposer.propose_prepared
    calls = {"n": 0, "pid": None}

    def interrupted(self, images):
        if calls["pid"] != os.getpid():
            calls.update(n=0, pid=os.getpid())
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Proposer, "propose_prepared", interrupted)


@pytest.mark.parametrize("jobs", ["2", "3", "1"])
def test_interrupted_jobs_resume_to_the_same_file_with_any_jobs(seven_images, tiny_checkpoint, tmp_path, monkeypatch, jobs):
    reference = tmp_path / "reference.json"
    assert propose(seven_images, reference, tiny_checkpoint, "--jobs", "1").exit_code == 0
    out = tmp_path / "r.json"
    out.write_text("[]")  # an earlier complete results file survives the interruption untouched
    interrupt_on_second(monkeypatch)
    result = propose(seven_images, out, tiny_checkpoint, "--jobs", "2")
    assert result.exit_code == 130 and "--resume" in result.flat
    assert out.read_text() == "[]" and any(name.endswith(".partial") for name in leftovers(tmp_path))

    monkeypatch.undo()
    result = propose(seven_images, out, tiny_checkpoint, "--jobs", jobs, "--resume")  # the run's split is kept
    assert result.exit_code == 0, result.output
    assert "from the interrupted run" in result.flat
    assert out.read_bytes() == reference.read_bytes() and leftovers(tmp_path) == []
    again = propose(seven_images, out, tiny_checkpoint, "--jobs", "2", "--resume")
    assert again.exit_code == 0 and "nothing redone" in again.flat


def test_a_one_process_run_resumes_in_one_process(seven_images, tiny_checkpoint, tmp_path, monkeypatch):
    reference = tmp_path / "reference.json"
    assert propose(seven_images, reference, tiny_checkpoint, "--jobs", "1").exit_code == 0
    out = tmp_path / "r.json"
    interrupt_on_second(monkeypatch)
    assert propose(seven_images, out, tiny_checkpoint, "--jobs", "1").exit_code == 130
    monkeypatch.undo()
    result = propose(seven_images, out, tiny_checkpoint, "--jobs", "2", "--resume")
    assert result.exit_code == 0 and "1 from the interrupted run" in result.flat, result.output
    assert out.read_bytes() == reference.read_bytes() and leftovers(tmp_path) == []


def test_a_new_run_clears_the_slices_an_interrupted_one_left(seven_images, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    interrupt_on_second(monkeypatch)
    assert propose(seven_images, out, tiny_checkpoint, "--jobs", "2").exit_code == 130
    monkeypatch.undo()
    assert propose(seven_images, out, tiny_checkpoint, "--jobs", "3").exit_code == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error, expected", [
    (FastMaskError("the network said no"), "Error: the network said no"),
    (NoRoom(Path("/data/r.json.partial"), "No space left on device"), "rerun with --resume to continue"),
    (ParameterError("top_k", "{} must be small"), "Error: --top-k must be small"),
    (RuntimeError("a bug\nsecond line"), "Internal error: RuntimeError: a bug"),
])
def test_an_error_in_a_worker_is_one_line_and_stops_the_run(seven_images, tiny_checkpoint, tmp_path, monkeypatch,
                                                            error, expected):
    def fail(self, images):
        raise error

    monkeypatch.setattr(Proposer, "propose_prepared", fail)
    out = tmp_path / "r.json"
    result = propose(seven_images, out, tiny_checkpoint, "--jobs", "2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert expected in result.output.strip().splitlines()[-1], result.output
    assert not out.exists()


def test_a_worker_that_dies_is_an_error_not_a_hang(seven_images, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(Proposer, "propose_prepared", lambda self, images: os._exit(9))  # as the OOM killer would
    result = propose(seven_images, tmp_path / "r.json", tiny_checkpoint, "--jobs", "2")
    assert result.exit_code == 1 and "worker process stopped" in result.flat and "--resume" in result.flat


def test_what_jobs_means(monkeypatch):
    monkeypatch.setattr(jobs_module, "cpu_cores", lambda: 12)
    assert resolve_jobs("auto", "cpu") == 8 and resolve_jobs("auto", "cuda") == 1 and resolve_jobs("3", "cpu") == 3
    monkeypatch.setattr(jobs_module, "cpu_cores", lambda: 2)
    assert resolve_jobs("auto", "cpu") == 2 and resolve_jobs(1, "cuda") == 1
    for value, message in (("0", "at least 1"), ("many", "a number or auto")):
        with pytest.raises(ParameterError, match=message):
            resolve_jobs(value, "cpu")
    with pytest.raises(ParameterError, match="torchrun"):
        resolve_jobs("2", "cuda")


def test_jobs_and_a_shard_split_the_images_one_way(seven_images, tiny_checkpoint, tmp_path):
    result = propose(seven_images, tmp_path / "r.json", tiny_checkpoint, "--jobs", "2", "--shard", "1/2")
    assert result.exit_code == 1 and "--shard" in result.flat
    auto = propose(seven_images, tmp_path / "s.json", tiny_checkpoint, "--shard", "1/2")  # auto: one process per shard
    assert auto.exit_code == 0 and leftovers(tmp_path) == []
