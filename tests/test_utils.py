"""Checkpoint files: atomic writes and one clear error for every kind of bad file."""
import os
import pickle

import pytest
import torch

from utils import CHECKPOINT_FORMAT, UserError, atomic_torch_save, load_checkpoint


def good_state():
    return {"format_version": CHECKPOINT_FORMAT, "config": {"seed": 0}, "model": {"w": torch.ones(3)}}


def test_atomic_save_round_trips_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save(good_state(), str(path))
    atomic_torch_save(good_state(), str(path))  # replacing works too
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save(good_state(), str(path))

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"bad": Unsaveable()}, str(path))
    assert load_checkpoint(str(path))["config"] == {"seed": 0}
    assert os.listdir(tmp_path) == ["last.pt"]


def corrupt(path, how):
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("not a checkpoint\n")
    elif how == "other_pickle":
        path.write_bytes(pickle.dumps(os.getcwd))  # a pickle that would call code
    elif how == "other_dict":
        torch.save({"weights": torch.zeros(2)}, path)
    elif how == "old_format":
        torch.save({**good_state(), "format_version": CHECKPOINT_FORMAT + 1}, path)


@pytest.mark.parametrize("how,message", [
    ("truncated", "truncated or corrupt"), ("flipped", "corrupt"), ("empty", "corrupt"),
    ("text", "not a checkpoint"), ("other_pickle", "not a checkpoint"),
    ("other_dict", "not a checkpoint"), ("old_format", "format version")])
def test_bad_checkpoint_files_give_one_clear_error(tmp_path, how, message):
    path = tmp_path / "best.pt"
    atomic_torch_save(good_state(), str(path))
    corrupt(path, how)
    with pytest.raises(UserError, match=message) as error:
        load_checkpoint(str(path))
    assert "\n" not in str(error.value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
