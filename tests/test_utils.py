"""Checkpoint files: atomic writes and one clear error for every kind of bad file."""
import os
import pickle

import pytest
import torch

from utils import CHECKPOINT_FORMAT, UserError, atomic_torch_save, load_checkpoint


def good_state():
    """The fields of a run checkpoint that sampling reads (utils.RUN_FIELDS)."""
    return {"format_version": CHECKPOINT_FORMAT, "config": {"seed": 0, "input_height": 28, "parametrization": "edm"},
            "model": {"w": torch.ones(3)}, "ema": None, "model_name": "unet", "model_kwargs": {},
            "prior_config": {"name": "standard", "n0": 28}, "prior": {}, "epoch": 1, "step": 2, "history": []}


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
    assert load_checkpoint(str(path))["config"]["seed"] == 0
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


def test_temporary_files_are_named_as_gitignore_expects_and_removed_when_a_write_fails(tmp_path, monkeypatch):
    """A kill between the write and the rename leaves PATH.tmp.XXXX behind: .gitignore must hide it."""
    import fnmatch
    import json

    from utils import temporary_name_pattern, write_json

    ignored = [line.strip() for line in open(os.path.join(os.path.dirname(__file__), "..", ".gitignore"))
               if line.strip() and not line.startswith("#")]
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_torch_save(good_state(), str(tmp_path / "last.pt"))
    write_json({"a": 1}, str(tmp_path / "results.json"))
    assert len(seen) == 2
    for name, target in zip(seen, ("last.pt", "results.json")):
        assert fnmatch.fnmatch(name, temporary_name_pattern(target))
        assert any(fnmatch.fnmatch(name, pattern) for pattern in ignored), name
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}

    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_json({"b": 2}, str(tmp_path / "results.json"))
    assert synced  # the data reach the disk before the rename
    with pytest.raises(TypeError):
        write_json({"c": object()}, str(tmp_path / "results.json"))
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "results.json"]  # no temporary file left
    assert json.loads((tmp_path / "results.json").read_text()) == {"b": 2}


@pytest.mark.parametrize("command", ["main.py", "test.py", "reproduce.py", "frechet.py"])
def test_ctrl_c_says_what_is_kept_and_only_main_suggests_resume(command, monkeypatch, capsys):
    import importlib
    import sys

    module = importlib.import_module(os.path.splitext(command)[0])
    monkeypatch.setattr(sys, "argv", [command, "--help"])

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "main", interrupt)
    source = open(os.path.join(os.path.dirname(__file__), "..", command)).read()
    block = source[source.index('if __name__ == "__main__":'):]
    with pytest.raises(SystemExit) as exit:
        exec(block.replace('if __name__ == "__main__":', "if True:"), vars(module))
    err = capsys.readouterr().err
    assert exit.value.code == 130 and err.startswith("error: interrupted")
    assert ("--resume" in err) == (command == "main.py")


def test_progress_bars_write_at_most_a_line_a_minute_into_a_log(monkeypatch):
    import sys

    from utils import progress_bar

    import io

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    log = io.StringIO()
    with progress_bar(total=500, file=log, miniters=1) as bar:
        for _ in range(500):
            bar.update(1)
    assert bar.mininterval == 60.0
    assert log.getvalue().count("\r") <= 3  # the opening and closing lines, not one per update


class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        import errno

        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def fill_the_disk(monkeypatch, room, only=""):
    """The atomic writers' temporary files (tempfile.mkstemp, then os.fdopen) whose names contain `only`
    run out of space after `room` bytes."""
    import tempfile

    real_mkstemp, real_fdopen, names = tempfile.mkstemp, os.fdopen, {}

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        names[fd] = path
        return fd, path

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f, room) if only in names.get(fd, "") else f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("room", [0, 100, 2000])
def test_a_write_that_runs_out_of_space_leaves_the_previous_files_whole_and_says_so_in_one_line(
        tmp_path, monkeypatch, room):
    from utils import write_json, write_text

    atomic_torch_save(good_state(), str(tmp_path / "last.pt"))
    write_json({"mmd": 0.0123}, str(tmp_path / "results.json"))
    write_text("| table |\n" * 50, str(tmp_path / "results.md"))
    before = {name: (tmp_path / name).read_bytes() for name in ("last.pt", "results.json", "results.md")}
    bigger = {**good_state(), "model": {"w": torch.randn(5000)}}
    fill_the_disk(monkeypatch, room)
    for write, name in ((lambda p: atomic_torch_save(bigger, p), "last.pt"), (lambda p: write_json({"mmd": [1] * 999}, p),
                        "results.json"), (lambda p: write_text("| new |\n" * 999, p), "results.md")):
        with pytest.raises(UserError) as error:
            write(str(tmp_path / name))
        assert f"could not write {tmp_path / name} (No space left on device)" in str(error.value)
        assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # bitwise the previous files
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "results.json", "results.md"]
    assert torch.equal(load_checkpoint(str(tmp_path / "last.pt"))["model"]["w"], torch.ones(3))


def test_a_flipped_bit_in_the_weights_is_caught_by_the_archives_crc():
    """torch.load does not check the zip entries' CRC-32: a flip inside a weight would load as another weight."""
    import io
    import tempfile

    buffer = io.BytesIO()
    torch.save({**good_state(), "model": {"w": torch.ones(1000)}}, buffer)
    raw = bytearray(buffer.getvalue())
    data_at = raw.find(torch.ones(1000).numpy().tobytes()[:64])
    raw[data_at + 100] ^= 0x01
    assert not torch.equal(torch.load(io.BytesIO(bytes(raw)), weights_only=True)["model"]["w"], torch.ones(1000))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "last.pt")
        with open(path, "wb") as f:
            f.write(raw)
        with pytest.raises(UserError, match="truncated or corrupt .*CRC-32"):
            load_checkpoint(path)


@pytest.mark.parametrize("part,change,message", [
    ("model", lambda w: w.double(), "in the EMA"), ("ema", lambda w: w[:-1], "in the EMA"),
    ("model", lambda w: w * float("nan"), "NaN or infinite"), ("ema", lambda w: w * float("inf"), "NaN or infinite")])
def test_weights_that_cannot_sample_are_refused_at_load(tmp_path, part, change, message):
    state = {**good_state(), "model": {"w": torch.ones(3)}, "ema": {"module.w": torch.ones(3), "n_averaged": torch.tensor(2)}}
    key = "w" if part == "model" else "module.w"
    state[part] = {**state[part], key: change(state[part][key])}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(UserError, match=message):
        load_checkpoint(str(tmp_path / "last.pt"))


def test_a_refusal_prints_the_traceback_beneath_only_when_asked(monkeypatch, capsys):
    from utils import DEBUG_ENV, run_main

    def refused():
        try:
            int("x")
        except ValueError as error:
            raise UserError("--flag x: expected a number") from error

    for debug, traceback_shown in (("", False), ("1", True)):
        monkeypatch.setenv(DEBUG_ENV, debug)
        with pytest.raises(SystemExit):
            run_main(refused)
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == "error: --flag x: expected a number"
        assert ("Traceback" in err and "invalid literal" in err) == traceback_shown


def test_cpu_description_names_the_model_and_only_the_speed_flags_present(tmp_path):
    from utils import cpu_description
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f amx_bf16\n")
    assert cpu_description(str(info)) == "Test CPU 9000 (flags: avx2, avx512f, amx_bf16)"
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu sse\n")
    assert cpu_description(str(info)) == "Old CPU (flags: none of avx2, avx512f, avx512_bf16, amx_bf16)"
    assert cpu_description(str(tmp_path / "missing"))  # no cpuinfo (not Linux): a name, not an error


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_bf16_hardware_on_a_cpu_is_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    from utils import bf16_hardware
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert bf16_hardware(torch.device("cpu")) is expected
    assert bf16_hardware(torch.device("meta")) is False


@pytest.mark.parametrize("major, expected", [(7, False), (8, True), (9, True)])
def test_bf16_hardware_on_a_gpu_is_ampere_or_later_not_emulation(monkeypatch, major, expected):
    from utils import bf16_hardware
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert bf16_hardware(torch.device("cuda", 0)) is expected
