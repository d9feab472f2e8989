"""Proposing at dataset scale: streamed results, shards and `merge`, torchrun, JSON Lines, and the
defects a new user meets (overlay names, --out folders, EXIF-rotated photos)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from fastmask_cli.errors import ParameterError
from fastmask_cli.inference.proposer import Proposer
from fastmask_cli.io.images import read_image
from fastmask_cli.io.results_file import images_json_path
from fastmask_cli.runs.folder import plan_images, propose_folder
from support import draw_scene, tiny_model, write_image
from support.bad_files import exif_jpeg, jpeg_bytes
from support.cli import propose, run


@pytest.fixture
def five_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        write_image(folder / f"img_{i}.png", draw_scene(96, 128 - 8 * i, seed=i))
    write_image(folder / "sub" / "deep.png", draw_scene(112, 96, seed=9))
    return folder


def test_streamed_file_equals_the_proposals_held_in_memory(five_images, tmp_path):
    """The results file is streamed from the partial log; it must hold what the old in-memory list held."""
    proposer = Proposer(tiny_model(), top_k=10, size=128, device="cpu")
    summary = propose_folder(proposer, five_images, tmp_path / "r.json", weights_id="tiny")
    plan = plan_images(five_images)
    expected = [r for rel in plan.files for r in proposer.propose(read_image(five_images / rel)).to_coco(plan.ids[rel])]
    assert json.loads((tmp_path / "r.json").read_text()) == expected
    assert summary.images == 5 and summary.proposals == len(expected) == 50
    listing = json.loads(images_json_path(tmp_path / "r.json").read_text())
    assert [im["file_name"] for im in listing["images"]] == plan.files and all(im["proposals"] == 10 for im in listing["images"])

    propose_folder(proposer, five_images, tmp_path / "r.jsonl", weights_id="tiny", fmt="jsonl")
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(line["file_name"], line["image_id"]) for line in lines] == [(f, plan.ids[f]) for f in plan.files]
    assert [r for line in lines for r in line["proposals"]] == expected
    assert (lines[0]["width"], lines[0]["height"]) == (128, 96)


def test_shards_merge_to_the_unsharded_run(five_images, tiny_checkpoint, tmp_path):
    assert propose(five_images, tmp_path / "whole.json", tiny_checkpoint).exit_code == 0
    shards = [tmp_path / "s1.json", tmp_path / "s2.jsonl", tmp_path / "s3.json"]
    ids = []
    for k, path in enumerate(shards, start=1):
        extra = ["--format", "jsonl"] if path.suffix == ".jsonl" else []
        result = propose(five_images, path, tiny_checkpoint, "--shard", f"{k}/3", *extra)
        assert result.exit_code == 0, result.output
        ids.append([im["id"] for im in json.loads(images_json_path(path).read_text())["images"]])
    assert ids == [[1], [2, 3], [4, 5]]  # contiguous slices; ids are positions in the whole sorted list

    merged = run("merge", shards[2], shards[0], shards[1], "--out", tmp_path / "merged.json")
    assert merged.exit_code == 0, merged.output
    assert "images 5" in merged.flat and "proposals 50" in merged.flat
    assert (tmp_path / "merged.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert json.loads((tmp_path / "merged.images.json").read_text())["images"] == \
        json.loads((tmp_path / "whole.images.json").read_text())["images"]
    as_lines = run("merge", *shards, "--out", tmp_path / "merged.jsonl", "--format", "jsonl")
    assert as_lines.exit_code == 0 and len((tmp_path / "merged.jsonl").read_text().splitlines()) == 5


def test_merge_refuses_what_would_corrupt_the_set(five_images, tiny_checkpoint, tmp_path):
    for k in (1, 2):
        assert propose(five_images, tmp_path / f"s{k}.json", tiny_checkpoint, "--shard", f"{k}/3").exit_code == 0
    assert propose(five_images, tmp_path / "other3.json", tiny_checkpoint, "--shard", "3/3", "--top-k", "5").exit_code == 0
    assert propose(five_images, tmp_path / "half.json", tiny_checkpoint, "--shard", "1/2").exit_code == 0
    out = tmp_path / "m.json"
    cases = [
        ((tmp_path / "s1.json", tmp_path / "other3.json"), "come from different runs (their settings differ)"),
        ((tmp_path / "s1.json", tmp_path / "s2.json", tmp_path / "s1.json"), "both shard 1/3"),
        ((tmp_path / "s1.json", tmp_path / "half.json"), "different numbers of parts"),
        ((tmp_path / "s1.json", tmp_path / "s2.json"), "shard 3/3 not given, so 2 images are missing: img_3.png, sub/deep.png"),
        ((tmp_path / "s1.json", tmp_path / "nothing.json"), "shard not found"),
    ]
    for shards, message in cases:
        result = run("merge", *shards, "--out", out)
        assert result.exit_code == 1 and message in result.flat, (shards, result.output)
        assert not out.exists()
    partial = run("merge", tmp_path / "s1.json", tmp_path / "s2.json", "--out", out, "--allow-missing")
    assert partial.exit_code == 0 and "missing 2 images (shard 3/3)" in partial.flat
    assert len({r["image_id"] for r in json.loads(out.read_text())}) == 3


def test_resume_does_not_redo_a_finished_run(five_images, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    assert propose(five_images, out, tiny_checkpoint, "--shard", "2/2").exit_code == 0
    before = out.read_bytes()
    monkeypatch.setattr(Proposer, "propose_prepared", lambda self, images: pytest.fail("a finished image was proposed again"))
    again = propose(five_images, out, tiny_checkpoint, "--shard", "2/2", "--resume")
    assert again.exit_code == 0 and "3 (finished earlier: nothing redone)" in again.flat
    assert out.read_bytes() == before


def test_resume_after_the_folder_changed_names_what_changed_or_continues_correctly(five_images, tmp_path, monkeypatch):
    """Ids without --ann are positions: a resume where a finished image's position moved would give two files one id."""
    proposer = Proposer(tiny_model(), top_k=5, size=128, device="cpu", backend="torch")
    out, real, calls = tmp_path / "r.json", Proposer.propose_prepared, []

    def stop_on_third(self, images):
        calls.append(images)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Proposer, "propose_prepared", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        propose_folder(proposer, five_images, out, weights_id="tiny")  # img_0 and img_1 finished, as ids 1 and 2
    monkeypatch.setattr(Proposer, "propose_prepared", real)
    write_image(five_images / "a_first.png", draw_scene(96, 128, seed=7))  # sorts before them
    with pytest.raises(ParameterError, match="img_0.png was given image id 1 and would now be 2"):
        propose_folder(proposer, five_images, out, weights_id="tiny", resume=True)
    (five_images / "a_first.png").unlink()
    (five_images / "img_1.png").unlink()  # a finished image removed: no id before it moves
    write_image(five_images / "img_9.png", draw_scene(96, 128, seed=8))  # sorts after the finished ones
    summary = propose_folder(proposer, five_images, out, weights_id="tiny", resume=True)
    assert summary.resumed == 1 and summary.images == 5
    propose_folder(proposer, five_images, tmp_path / "fresh.json", weights_id="tiny")
    assert out.read_text() == (tmp_path / "fresh.json").read_text()  # what a run on the folder as it is now writes
    assert images_json_path(out).read_text() == images_json_path(tmp_path / "fresh.json").read_text()
    ids = [im["id"] for im in json.loads(images_json_path(out).read_text())["images"]]
    assert ids == [1, 2, 3, 4, 5]


def test_file_names_that_are_not_utf8_are_proposed_and_recorded_losslessly(tmp_path, tiny_checkpoint):
    """A zip from an old Windows machine unpacked on Linux: names in cp1252 bytes, not UTF-8 (which crashed
    OpenCV's haveImageReader and imwrite, and the run's fingerprint). Python holds them as surrogates."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = {b"caf\xe9.jpg": jpeg_bytes(draw_scene(seed=1)), b"na\xefve": jpeg_bytes(draw_scene(seed=2)),  # found by content
             b"r\xe9sum\xe9.txt": b"not an image", b"cass\xe9.jpg": jpeg_bytes(draw_scene())[:300]}
    for name, data in names.items():
        Path(os.fsdecode(os.fsencode(folder) + b"/" + name)).write_bytes(data)
    out, vis = tmp_path / "r.json", tmp_path / "vis"
    result = propose(folder, out, tiny_checkpoint, "--vis", vis)
    assert result.exit_code == 0, result.output
    listing = json.loads(images_json_path(out).read_text())
    assert [os.fsencode(im["file_name"]) for im in listing["images"]] == [b"caf\xe9.jpg", b"na\xefve"]
    assert [(os.fsencode(f), why) for f, why in listing["info"]["fastmask"]["skipped"]] == \
        [(b"cass\xe9.jpg", "not a decodable image (a corrupt JPEG file)")]
    assert os.path.isfile(os.fsencode(vis) + b"/caf\xe9.jpg.png") and os.path.isfile(os.fsencode(vis) + b"/na\xefve.png")
    assert len(json.loads(out.read_text())) == 20


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    with socket.socket() as probe:  # a free port: a fixed one may still be held by an earlier run
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
               "-m", "fastmask_cli", "propose", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.distributed
def test_torchrun_two_processes_merge_to_the_single_process_run(five_images, tiny_checkpoint, tmp_path):
    common = ["--weights", str(tiny_checkpoint), "--size", "128", "--top-k", "10", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "fastmask_cli", "propose", str(five_images), "--out", str(tmp_path / "one.json"),
                             *common], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    done = _torchrun(str(five_images), "--out", str(tmp_path / "two" / "r.json"), *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two" / "r.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["r.images.json", "r.json"]  # shards merged, then removed
    assert "5 from all 2 ranks" in " ".join(done.stderr.split())

    # Resume: rank 0's slice finished before a crash (its shard is on disk); only rank 1's is redone.
    resumed_dir = tmp_path / "three"
    assert propose(five_images, resumed_dir / "r.shard-1-of-2.json", tiny_checkpoint, "--shard", "1/2").exit_code == 0
    resumed = _torchrun(str(five_images), "--out", str(resumed_dir / "r.json"), "--resume", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "finished earlier" in " ".join(resumed.stderr.split())
    assert json.loads((resumed_dir / "r.json").read_text()) == json.loads((tmp_path / "one.json").read_text())


def test_overlays_of_same_named_images_do_not_collide(tmp_path, tiny_checkpoint):
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    scene = cv2.cvtColor(draw_scene(), cv2.COLOR_RGB2BGR)
    for name in ("photo.bmp", "photo.tif", "photo.webp", "trip/photo.bmp"):
        cv2.imwrite(str(folder / name), scene)
    vis = tmp_path / "vis"
    assert propose(folder, tmp_path / "r.json", tiny_checkpoint, "--vis", vis).exit_code == 0
    overlays = sorted(p.relative_to(vis).as_posix() for p in vis.rglob("*.png"))
    assert overlays == ["photo.bmp.png", "photo.tif.png", "photo.webp.png", "trip/photo.bmp.png"]
    assert all(cv2.imread(str(vis / o)).shape == (96, 128, 3) for o in overlays)


def test_out_folder_is_made(image_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "results" / "run1" / "r.json"
    result = propose(image_folder, out, tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 40 and images_json_path(out).exists()


def test_exif_rotated_photo_is_proposed_as_shown_unless_the_ground_truth_says_otherwise(tmp_path, tiny_checkpoint):
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "portrait.jpg").write_bytes(exif_jpeg(draw_scene(128, 96), 6))  # stored 96x128, shown 128x96
    result = propose(folder, tmp_path / "r.json", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    image = json.loads((tmp_path / "r.images.json").read_text())["images"][0]
    assert (image["width"], image["height"]) == (128, 96)
    assert {tuple(r["segmentation"]["size"]) for r in json.loads((tmp_path / "r.json").read_text())} == {(96, 128)}

    for frame, note in (((96, 128), True), ((128, 96), False)):  # ground truth in the stored grid, then in the shown one
        gt = {"images": [{"id": 7, "file_name": "portrait.jpg", "width": frame[0], "height": frame[1]}], "annotations": []}
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        result = propose(folder, tmp_path / "g.json", tiny_checkpoint, "--ann", tmp_path / "gt.json")
        assert result.exit_code == 0, result.output
        assert {tuple(r["segmentation"]["size"]) for r in json.loads((tmp_path / "g.json").read_text())} == {frame[::-1]}
        assert ("EXIF orientation 6: kept in the stored grid" in result.flat) == note


@pytest.mark.parametrize("shard,message", [("3/2", "K must be between 1 and N"), ("half", "K/N such as 1/4"), ("0/4", "between 1 and N")])
def test_bad_shard_is_a_one_line_error(image_folder, tiny_checkpoint, tmp_path, shard, message):
    result = propose(image_folder, tmp_path / "r.json", tiny_checkpoint, "--shard", shard)
    assert result.exit_code == 1 and message in result.flat and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_reader_processes_and_the_writer_thread_write_the_same_file(five_images, tmp_path, monkeypatch):
    """DataLoader reader processes (--workers) and results written on a thread (what a GPU run does) give
    byte for byte the file of a run that reads and writes in turn; an unreadable file is still listed."""
    (five_images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proposer = Proposer(tiny_model(), top_k=10, size=128, device="cpu")
    propose_folder(proposer, five_images, tmp_path / "plain.json", weights_id="tiny", workers=0, batch_size=2)
    monkeypatch.setattr("fastmask_cli.runs.folder.overlap_writes", lambda device_type: True)
    summary = propose_folder(proposer, five_images, tmp_path / "workers.json", weights_id="tiny", workers=2, batch_size=2)
    assert (tmp_path / "workers.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
    assert summary.images == 5 and [f for f, _ in summary.skipped] == ["broken.png"]


def test_batches_hold_images_of_similar_shapes():
    from fastmask_cli.inference.proposer import prepare
    from fastmask_cli.runs.folder import Loaded, similar_batches

    shapes = [(96, 128), (128, 96), (96, 128), (128, 96), (96, 128), (128, 96), (96, 128), (128, 96), (64, 64)]
    items = [Loaded(f"{i}.png", prepare(draw_scene(h, w, seed=i), 128)) for i, (h, w) in enumerate(shapes)]
    items.insert(3, Loaded("bad.png", None, error="cannot decode"))
    batches = list(similar_batches(iter(items), batch_size=2))
    assert sorted(item.rel for batch in batches for item in batch) == sorted(item.rel for item in items)
    assert ["bad.png"] in [[item.rel for item in batch] for batch in batches]  # alone, as soon as it comes
    mixed = [b for b in batches if len({item.shape() for item in b}) > 1]
    assert len(mixed) <= 1  # only the leftovers at the end may mix shapes
    assert all(len(b) <= 2 for b in batches)


HOLD = """
import sys, time
from pathlib import Path
from fastmask_cli.io.files import output_lock
with output_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_one_output_is_refused_until_the_first_ends(five_images, tiny_checkpoint, tmp_path):
    """Two runs writing one --out would race on its partial log and slice files: the second is refused in
    one line naming the first's pid; a run killed outright (SIGKILL) leaves no lock held; a finished run
    leaves nothing beside its results."""
    out = tmp_path / "out" / "r.json"
    out.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # the first run's files, which a second run must not clear before it is refused
        theirs = [out.parent / "r.json.partial", out.parent / "r.shard-1-of-8.json.partial"]
        for path in theirs:
            path.write_text("{}\n")
        for jobs in ("1", "2"):
            refused = propose(five_images, out, tiny_checkpoint, "--jobs", jobs)
            assert refused.exit_code == 1 and f"another fastmask run is writing {out} (pid {holder.pid})" in refused.flat
            assert "interrupted run" not in refused.output  # the first run's partial log is not this run's to start over
        assert sorted(p.name for p in out.parent.iterdir()) == sorted(["r.json.lock", *(p.name for p in theirs)])
        for path in theirs:
            path.unlink()
    finally:
        holder.kill()
        holder.wait()
    done = propose(five_images, out, tiny_checkpoint, "--jobs", "2")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.images.json", "r.json"]


def test_ground_truth_names_match_full_paths_first_and_never_two_files(tmp_path):
    from fastmask_cli.runs.plan import plan_images

    for rel in ("cam1/f1.png", "cam2/f1.png", "val2017/x.png"):
        (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "imgs" / rel, draw_scene(32, 32))

    def gt(*names: str) -> Path:
        path = tmp_path / "gt.json"
        path.write_text(json.dumps({"images": [{"id": 10 + i, "file_name": n} for i, n in enumerate(names)],
                                    "annotations": [], "categories": []}))
        return path

    # cam1's exact path is cam1's only: cam2's picture must not take its id through the bare name
    plan = plan_images(tmp_path / "imgs", gt("cam1/f1.png", "val2017\\x.png"))
    assert plan.ids == {"cam1/f1.png": 10, "val2017/x.png": 11} and plan.unlisted == ["cam2/f1.png"]
    plan = plan_images(tmp_path / "imgs", gt("cam2/f1.png", "cam1/f1.png", "C:\\data\\val2017\\x.png"))
    assert plan.ids == {"cam1/f1.png": 11, "cam2/f1.png": 10, "val2017/x.png": 12}  # Windows names find their files
    with pytest.raises(ParameterError, match=r"names f1.png, which fits 2 files \(cam1/f1.png, cam2/f1.png\)"):
        plan_images(tmp_path / "imgs", gt("f1.png"))
    with pytest.raises(ParameterError, match="x.png fits several of its names"):
        plan_images(tmp_path / "imgs", gt("a/val2017/x.png", "b/val2017/x.png"))
    # a base name one name and one file alone have still matches, whatever the folders
    assert plan_images(tmp_path / "imgs", gt("train/x.png")).ids == {"val2017/x.png": 10}


def test_train_and_merge_take_the_output_lock_too(five_images, tiny_checkpoint, tmp_path):
    shards = [tmp_path / f"s{k}.json" for k in (1, 2)]
    for k, shard in enumerate(shards, 1):
        assert propose(five_images, shard, tiny_checkpoint, "--shard", f"{k}/2").exit_code == 0
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    for out, command in ((tmp_path / "merged.json", ("merge", *shards, "--out", tmp_path / "merged.json")),
                         (tmp_path / "runs" / "x", ("train", gt, five_images, "--out", tmp_path / "runs" / "x"))):
        out.parent.mkdir(exist_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            refused = run(*command)
            assert refused.exit_code == 1 and f"another fastmask run is writing {out} (pid {holder.pid})" in refused.flat
            assert not out.exists()
        finally:
            holder.kill()
            holder.wait()
    assert run("merge", *shards, "--out", tmp_path / "merged.json").exit_code == 0
    assert not (tmp_path / "merged.json.lock").exists()


def test_files_lists_and_folders_are_one_run_as_the_folder_would_be(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    """`propose a.png b.png ...`, `--list -` and a folder give the same bytes for the same images; a mix of a
    file and a folder takes their common folder, each image once; --jobs and --shard work on such inputs."""
    import io

    files = sorted(image_folder.iterdir())
    assert propose(image_folder, tmp_path / "folder.json", tiny_checkpoint).exit_code == 0
    named = run("propose", *files, "--out", tmp_path / "named.json", "--weights", tiny_checkpoint, "--size", "128",
                "--top-k", "10", "--jobs", "2")
    assert named.exit_code == 0, named.output
    from fastmask_cli.cli.propose import read_list

    (tmp_path / "list.txt").write_text("\n".join(map(str, files[::-1])) + "\n\n")
    monkeypatch.setattr("sys.stdin", io.StringIO((tmp_path / "list.txt").read_text()))
    assert read_list("-") == read_list(str(tmp_path / "list.txt")) == list(map(str, files[::-1]))  # "-": standard input
    listed = run("propose", "--list", tmp_path / "list.txt", "--out", tmp_path / "listed.json", "--weights", tiny_checkpoint,
                 "--size", "128", "--top-k", "10")
    assert listed.exit_code == 0, listed.output
    for name in ("named", "listed"):
        assert (tmp_path / f"{name}.json").read_bytes() == (tmp_path / "folder.json").read_bytes()
        assert (tmp_path / f"{name}.images.json").read_bytes() == (tmp_path / "folder.images.json").read_bytes()
    other = tmp_path / "more"
    other.mkdir()
    write_image(other / "x.png", draw_scene(64, 64))
    mixed = run("propose", files[0], files[0], other, "--out", tmp_path / "mixed.json", "--weights", tiny_checkpoint,
                "--size", "128", "--shard", "1/1")
    assert mixed.exit_code == 0, mixed.output
    listing = json.loads((tmp_path / "mixed.images.json").read_text())
    assert [im["file_name"] for im in listing["images"]] == [f"images/{files[0].name}", "more/x.png"]
    # the Python API takes the same inputs the same way
    from fastmask_cli import load_model, plan_inputs

    images_dir, plan = plan_inputs([files[0], str(files[0]), other])
    assert images_dir == tmp_path and plan.files == [f"images/{files[0].name}", "more/x.png"]
    proposer = Proposer(load_model(str(tiny_checkpoint))[0], device="cpu", size=128)
    propose_folder(proposer, images_dir, tmp_path / "api.json", weights_id="api", plan=plan)
    assert (tmp_path / "api.json").read_bytes() == (tmp_path / "mixed.json").read_bytes()
    for args, message in ((("missing.png",), "not found: missing.png"), ((), "no images given"),
                          (("--list", tmp_path / "nope.txt"), "no such file")):
        refused = run("propose", *args, "--out", tmp_path / "r.json", "--weights", tiny_checkpoint)
        assert refused.exit_code == 1 and message in refused.flat
