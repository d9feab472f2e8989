"""Finding weights: presets, shipped names with their sha256, checkpoint paths."""

import pytest
import torch

from fastmask_cli import FastMaskError, load_model, save_checkpoint
from fastmask_cli.export import ship_weights
from fastmask_cli.io.files import NoRoom
from fastmask_cli.modeling.config import PRESETS
from fastmask_cli.modeling.weights import sha256_of
from support import TINY, tiny_model
from support.bad_files import file_size_limit, flip_a_bit_inside_a_tensor


def ship(directory, model, name="tiny-v1", default=True):
    return directory / ship_weights(model, {}, name, directory, default=default)["file"]


def test_shipped_default_loads_and_matches_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMASK_WEIGHTS_DIR", str(tmp_path))
    source = tiny_model(seed=3)
    path = ship(tmp_path, source)
    model, info = load_model()
    assert info.trained and info.name == "tiny-v1" and info.sha256 == sha256_of(path)
    assert model.config == TINY
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # damage the shipped file
    with pytest.raises(FastMaskError, match="sha256"):
        load_model("tiny-v1")


def test_presets_are_untrained_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMASK_WEIGHTS_DIR", str(tmp_path))  # nothing shipped here
    model, info = load_model()
    assert not info.trained and info.name == "fast" and "UNTRAINED" in info.describe()
    assert model.config == PRESETS["fast"]
    _, info = load_model("accurate")
    assert not info.trained and "random body" in info.describe()


def test_untrained_presets_are_reproducible_and_leave_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, info = load_model("fast")
    assert torch.equal(torch.rand(3), expected_next)
    second, _ = load_model("fast")
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    assert info.identity == "untrained:fast:seed0:random"


def test_checkpoint_paths_and_config_mismatch(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model(), meta={"epochs": 3})
    model, info = load_model(str(path))
    assert info.trained and info.meta == {"epochs": 3}
    state = torch.load(path, weights_only=True)
    state["config"]["reduce_channels"] = 4  # config no longer fits the tensors
    torch.save(state, path)
    with pytest.raises(FastMaskError, match="does not fit its own config"):
        load_model(str(path))


def test_a_bit_flipped_in_a_checkpoint_is_refused_not_used(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model())
    flip_a_bit_inside_a_tensor(path)
    with pytest.raises(FastMaskError, match="is damaged: .* fails its CRC-32 check"):
        load_model(str(path))


def test_a_fastmask_checkpoint_without_its_config_is_one_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "fastmask", "version": 1, "model": tiny_model().state_dict()}, path)
    with pytest.raises(FastMaskError, match="without its config"):
        load_model(str(path))


def test_a_checkpoint_the_disk_cannot_hold_is_one_clear_error_and_the_old_file_is_kept(tmp_path):
    """torch.save reports a write cut short by a full disk (here a file size limit) as a RuntimeError."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model(seed=1))
    before = path.read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(NoRoom, match=f"cannot write {path}: the write was cut short"):
        save_checkpoint(path, tiny_model(seed=2))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_weights_forms_users_type(tmp_path, monkeypatch):
    """A shipped name in any case or with .pt, "~" left by the shell, and one line saying what other forms are."""
    from fastmask_cli import ParameterError
    from fastmask_cli.modeling.weights import read_manifest

    default = next(m["name"] for m in read_manifest() if m.get("default"))
    for form in (default.upper(), f"{default}.pt", default.title()):
        assert load_model(form)[1].sha256 == load_model(default)[1].sha256
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "fm").mkdir()
    save_checkpoint(tmp_path / "fm" / "mine.pt", tiny_model())
    assert load_model("~/fm/mine.pt")[1].path == str(tmp_path / "fm" / "mine.pt")
    cases = {"~/fm": "is a folder, not a training run's: give one of its .pt files: mine.pt",
             str(tmp_path): "is a folder, not a training run's: it holds no .pt file",
             "https://example.org/w.pt": "URLs are not downloaded",
             default[:-2] + "xx": f"did you mean {default}?",
             "qqqq": "is neither a file nor a known name ("}
    for weights, message in cases.items():
        with pytest.raises(ParameterError) as raised:
            load_model(weights)
        assert message in str(raised.value) and str(raised.value).startswith(f"weights {weights!r}"), weights
