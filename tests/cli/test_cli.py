"""`fastmask propose` end to end: output, ids, bad input, weights errors, interruption and resume."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from pycocotools.coco import COCO

from fastmask_cli import save_checkpoint
from fastmask_cli.inference.proposer import Proposer
from support import draw_scene, tiny_model, write_image
from support.bad_files import file_size_limit, flip_a_bit_inside_a_tensor, make_bad_files, make_odd_but_valid_files
from support.cli import propose, run


def test_propose_writes_results_and_a_file_list(image_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "results.json"
    result = propose(image_folder, out, tiny_checkpoint, "--vis", tmp_path / "vis", "--json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    assert "UNTRAINED" in result.output
    results = json.loads(out.read_text())
    listing = json.loads((tmp_path / "results.images.json").read_text())
    # ids are assigned in sorted file order, and the file list ties them back to files
    assert [im["file_name"] for im in listing["images"]] == [f"img_{i}.png" for i in range(4)]
    assert [im["id"] for im in listing["images"]] == [1, 2, 3, 4]
    assert Counter(r["image_id"] for r in results) == {1: 10, 2: 10, 3: 10, 4: 10}
    loaded = COCO(str(tmp_path / "results.images.json")).loadRes(str(out))
    assert len(loaded.anns) == 40
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == [".fastmask-output"] + [f"img_{i}.png.png" for i in range(4)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 4 and summary["proposals"] == 40 and summary["seconds_per_image"] > 0
    assert not (tmp_path / "results.json.partial").exists()


def test_ids_come_from_the_ground_truth(image_folder, tiny_checkpoint, tmp_path):
    gt = {"images": [{"id": 500 + i, "file_name": f"img_{i}.png", "height": 96 + 8 * i, "width": 128} for i in range(3)],
          "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = tmp_path / "r.json"
    result = propose(image_folder, out, tiny_checkpoint, "--ann", tmp_path / "gt.json")
    assert result.exit_code == 0, result.output
    assert "img_3.png: not listed in the --ann ground truth" in result.flat
    assert {r["image_id"] for r in json.loads(out.read_text())} == {500, 501, 502}
    assert len(COCO(str(tmp_path / "gt.json")).loadRes(str(out)).anns) == 30

    gt["images"] = [{"id": 1, "file_name": "elsewhere.jpg", "height": 10, "width": 10}]
    (tmp_path / "other.json").write_text(json.dumps(gt))
    result = propose(image_folder, tmp_path / "r2.json", tiny_checkpoint, "--ann", tmp_path / "other.json")
    assert result.exit_code == 1 and "lists none of the 4 images" in result.flat
    assert not (tmp_path / "r2.json").exists()


def test_bad_images_are_skipped_counted_and_listed(image_folder, tiny_checkpoint, tmp_path):
    reasons = make_bad_files(image_folder)
    odd = make_odd_but_valid_files(image_folder)
    (image_folder / "notes.txt").write_text("not an image")
    out = tmp_path / "r.json"
    result = propose(image_folder, out, tiny_checkpoint)
    assert result.exit_code == 0, result.output
    for name, reason in reasons.items():
        assert f"skipped {name}: {reason}" in result.flat
    assert "skipped 5" in result.flat and "ignored (not images) 1" in result.flat
    listing = json.loads((tmp_path / "r.images.json").read_text())
    assert sorted(im["file_name"] for im in listing["images"]) == sorted(odd + [f"img_{i}.png" for i in range(4)])
    assert len({r["image_id"] for r in json.loads(out.read_text())}) == 7


@pytest.mark.parametrize("make_folder,message", [
    (lambda p: p.mkdir(), "no images in"),
    (lambda p: None, "image file or folder not found"),
])
def test_empty_or_missing_folder_is_fatal(tmp_path, tiny_checkpoint, make_folder, message):
    folder = tmp_path / "nothing"
    make_folder(folder)
    result = propose(folder, tmp_path / "r.json", tiny_checkpoint)
    assert result.exit_code == 1 and message in result.flat
    assert result.output.strip().splitlines() == [f"Error: {result.output.split('Error: ')[1].strip()}"]


class Payload:
    """Any pickled object: a weights-only load must refuse it."""


def test_bad_weights_are_refused_clearly(image_folder, tmp_path):
    garbled = tmp_path / "garbled.pt"
    garbled.write_bytes(b"\x00\x01not a checkpoint" * 100)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "fastmask", "model": Payload()}, pickled)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    flipped = tmp_path / "flipped.pt"
    save_checkpoint(flipped, tiny_model())
    flip_a_bit_inside_a_tensor(flipped)
    no_config = tmp_path / "no_config.pt"
    torch.save({"format": "fastmask", "model": tiny_model().state_dict()}, no_config)
    cases = [(tmp_path / "missing.pt", "neither a file nor a known name"), (garbled, "not a readable checkpoint"),
             (pickled, "refusing to load"), (plain, "not a fastmask checkpoint"), (flipped, "fails its CRC-32 check"),
             (no_config, "without its config")]
    for weights, message in cases:
        result = propose(image_folder, tmp_path / "r.json", weights)
        assert result.exit_code == 1 and message in result.flat, (weights, result.output)
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "r.json").exists()


def test_interrupted_run_resumes_to_the_same_results(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    reference = tmp_path / "reference.json"
    assert propose(image_folder, reference, tiny_checkpoint).exit_code == 0

    out = tmp_path / "r.json"
    out.write_text("[]")  # an earlier complete results file must survive the interruption untouched
    real = Proposer.propose_prepared
    calls = {"n": 0}

    def interrupt_on_third(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Proposer, "propose_prepared", interrupt_on_third)
    result = propose(image_folder, out, tiny_checkpoint, "--jobs", "1")  # one process (tests/runs/test_jobs.py: several)
    assert result.exit_code == 130 and "--resume" in result.flat
    assert out.read_text() == "[]"
    partial = (tmp_path / "r.json.partial").read_text().splitlines()
    assert len(partial) == 1 + 2  # header + the two finished images
    with open(tmp_path / "r.json.partial", "a") as f:
        f.write('{"file": "img_2.png", "imag')  # a line cut off by the kill

    monkeypatch.setattr(Proposer, "propose_prepared", real)
    result = propose(image_folder, out, tiny_checkpoint, "--resume", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "2 from the interrupted run" in result.flat
    assert json.loads(out.read_text()) == json.loads(reference.read_text())
    assert not (tmp_path / "r.json.partial").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_resume_continues(image_folder, tiny_checkpoint, tmp_path):
    """A file size limit (ulimit -f) fails the writes as a full disk does (EFBIG, ENOSPC): no file is named by
    the operating system's error, and nothing finished may be lost."""
    reference = tmp_path / "reference.json"
    assert propose(image_folder, reference, tiny_checkpoint).exit_code == 0
    out = tmp_path / "r.json"
    with file_size_limit(reference.stat().st_size // 2):  # room for about two images (one process: tests/runs/test_jobs.py)
        result = propose(image_folder, out, tiny_checkpoint, "--jobs", "1")
    last = result.output.strip().splitlines()[-1]  # after the progress bar: one line
    assert result.exit_code == 1 and last.startswith(f"Error: cannot write {out}.partial: File too large"), result.output
    assert last.endswith("rerun with --resume to continue") and "Internal error" not in result.output
    resumed = propose(image_folder, out, tiny_checkpoint, "--resume")
    assert resumed.exit_code == 0 and "from the interrupted run" in resumed.flat, resumed.output
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_resume_refuses_other_settings(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    monkeypatch.setattr(Proposer, "propose_prepared", lambda self, images: (_ for _ in ()).throw(KeyboardInterrupt))
    assert propose(image_folder, out, tiny_checkpoint).exit_code == 130
    monkeypatch.undo()
    result = propose(image_folder, out, tiny_checkpoint, "--resume", "--scales", "2")
    assert result.exit_code == 1 and "other settings" in result.flat


def test_weights_command_and_version():
    from fastmask_cli.modeling.weights import read_manifest

    result = run("weights")
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip().removesuffix(" *"): line for line in result.output.splitlines() if line.count("│") > 3}
    for entry in read_manifest():  # every shipped model, whole, with the AR@100 it measured, at 80 columns
        cells = [cell.strip() for cell in rows[entry["name"]].split("│")[1:-1]]
        assert cells[0].endswith(" *") == bool(entry.get("default")) and cells[1:3] == [
            f"{entry['metrics']['segm']['AR@100'] * 100:.1f}", f"{entry['metrics']['bbox']['AR@100'] * 100:.1f}"], cells
    assert run("--version").output.startswith("fastmask ")


@pytest.mark.slow
def test_real_ctrl_c_keeps_old_results_and_resumes_identically(tmp_path):
    """SIGINT to a live `fastmask propose` process: exit 130, nothing half-written, resume completes it."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        write_image(folder / f"im_{i:02d}.png", draw_scene(240, 320, seed=i))
    command = [sys.executable, "-m", "fastmask_cli", "propose", str(folder), "--top-k", "10", "--size", "400", "--out"]
    reference, out = tmp_path / "reference.json", tmp_path / "r.json"
    assert subprocess.run(command + [str(reference)], capture_output=True).returncode == 0
    out.write_text('["earlier results"]')
    # SIGINT as a terminal delivers it: a shell running these tests in the background (no job control)
    # starts them with SIGINT ignored, and Python keeps an ignored SIGINT ignored
    process = subprocess.Popen(command + [str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def finished() -> int:  # images in the partial logs: one process's, or each worker's slice's (--jobs)
        return sum(len(log.read_text().splitlines()) - 1 for log in tmp_path.glob("r.*partial"))

    deadline = time.monotonic() + 120
    while finished() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # to the main process only, as `kill -INT` does: it stops its workers
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, output
    assert "Traceback" not in output and "--resume" in output
    assert out.read_text() == '["earlier results"]'
    done = finished()
    assert 2 <= done < 30
    resumed = subprocess.run(command + [str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} from the interrupted run" in " ".join(resumed.stderr.split())
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_api_functions_are_not_shadowed_by_their_modules() -> None:
    """`evaluate` and `train` stay functions even after the modules of the same package are imported."""
    code = ("import sys, fastmask_cli.training.engine, fastmask_cli.coco.evaluate, fastmask_cli.cli\n"
            "from fastmask_cli import evaluate, train\n"
            "assert callable(evaluate) and callable(train), (evaluate, train)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lazy = subprocess.run([sys.executable, "-c", "import sys, fastmask_cli; assert 'torch' not in sys.modules"],
                          capture_output=True, text=True)
    assert lazy.returncode == 0, lazy.stderr


def test_a_batch_job_log_shows_progress_lines_while_it_runs(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    """Output to a file (a Slurm job, nohup) is not a terminal: a bar would show nothing until the end, so
    plain lines come at a steady interval (here every image), with images done of total and the time left."""
    monkeypatch.setattr("fastmask_cli.cli.common.PROGRESS_INTERVAL", 0)
    result = propose(image_folder, tmp_path / "r.json", tiny_checkpoint, "--jobs", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("proposing: ")]
    assert [line.split(",")[0] for line in lines] == [f"proposing: {k}/4" for k in range(1, 5)]
    assert " left" in lines[0] and " left" not in lines[-1] and "s each" in lines[-1]
    monkeypatch.setattr("fastmask_cli.cli.common.PROGRESS_INTERVAL", 3600)  # a long interval: the last line alone
    result = propose(image_folder, tmp_path / "r2.json", tiny_checkpoint, "--jobs", "1")
    assert [line.split(",")[0] for line in result.output.splitlines() if line.startswith("proposing")] == ["proposing: 4/4"]


def test_special_files_are_never_renamed_over(image_folder, tiny_checkpoint, tmp_path):
    """An atomic write renames a temporary file over its name: a pipe (or, as root, /dev/null) would be
    replaced by a regular file. Such outputs are refused before any work, in one line, and stay what they were."""
    import os
    import stat

    from fastmask_cli import FastMaskError
    from fastmask_cli.io.files import atomic_path

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "link.json"
    link.symlink_to(pipe)
    for out in (pipe, link):
        result = propose(image_folder, out, tiny_checkpoint)
        assert result.exit_code == 1 and "is not a regular file" in result.flat and "Traceback" not in result.output
    summary = propose(image_folder, tmp_path / "r.json", tiny_checkpoint, "--json", pipe)
    assert summary.exit_code == 1 and "is not a regular file" in summary.flat and not (tmp_path / "r.json").exists()
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and link.is_symlink()
    with pytest.raises(FastMaskError, match="not a regular file"), atomic_path(pipe) as tmp:
        tmp.write_text("never")
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_an_output_that_is_an_input_is_refused_before_any_work(image_folder, tiny_checkpoint, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": i + 1, "file_name": f"img_{i}.png", "width": 128, "height": 96 + 8 * i}
                                         for i in range(4)], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    before = gt.read_bytes(), (image_folder / "img_0.png").read_bytes()
    linked = tmp_path / "linked.json"
    linked.symlink_to(gt)
    cases = [
        ("propose", image_folder, "--out", gt, "--weights", tiny_checkpoint, "--ann", gt),
        ("propose", image_folder, "--out", linked, "--weights", tiny_checkpoint, "--ann", gt),  # the same file through a link
        ("propose", image_folder, "--out", image_folder / "img_0.png", "--weights", tiny_checkpoint),
        ("propose", image_folder, "--out", tmp_path / "r.json", "--weights", tiny_checkpoint, "--json", gt, "--ann", gt),
        ("eval", gt, gt, "--images", image_folder, "--weights", tiny_checkpoint),
        ("eval", gt, linked, "--json", linked),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code == 1 and "would replace an input" in result.flat and "Traceback" not in result.output, args
    merged = run("merge", gt, "--out", linked)
    assert merged.exit_code == 1 and "is one of the shards" in merged.flat
    assert (gt.read_bytes(), (image_folder / "img_0.png").read_bytes()) == before
    for folder in (".", "/"):  # a folder as --out: one line, not an internal error
        result = run("propose", image_folder, "--out", folder, "--weights", tiny_checkpoint)
        assert result.exit_code == 1 and "is a folder" in result.flat
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--nms-iou", "1.5", "--nms-iou must be between 0 and 1"), ("--nms-iou", "-0.1", "--nms-iou must be between 0 and 1"),
    ("--report-images", "-1", "--report-images must be 0 or more"), ("--max-pixels", "0", "--max-pixels must be at least 64"),
    ("--workers", "-1", "--workers must be at least 0"), ("--batch-size", "0", "--batch-size must be at least 1"),
])
def test_propose_options_out_of_range_are_one_line(image_folder, tiny_checkpoint, tmp_path, option, value, message):
    result = propose(image_folder, tmp_path / "r.json", tiny_checkpoint, option, value)
    assert result.exit_code == 1 and message in result.flat and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--warmup", "-1", "--warmup must be at least 0"), ("--copy-paste", "2", "--copy-paste must be a probability"),
    ("--train-sample", "-1", "--train-sample must be at least 0"), ("--seed", "-1", "--seed must be at least 0"),
])
def test_train_options_out_of_range_are_one_line(image_folder, tmp_path, option, value, message):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    result = run("train", gt, image_folder, "--out", tmp_path / "run", option, value)
    assert result.exit_code == 1 and message in result.flat and not (tmp_path / "run").exists()


def test_bench_reading_options_out_of_range_are_refused_even_without_a_folder(tiny_checkpoint):
    for option, value in (("--batch-size", "0"), ("--workers", "-1")):
        result = run("bench", "--weights", tiny_checkpoint, "--size", "128x96", "--runs", "1", option, value)
        assert result.exit_code == 1 and f"{option} must be at least" in result.flat
