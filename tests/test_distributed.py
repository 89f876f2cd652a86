"""torchrun with 2 CPU processes (Gloo) against one process with the same global batch."""
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.test_main import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags(tmp_path, name, batch):
    args = [a for a in TINY]
    args[args.index("--batch_size") + 1] = str(batch)
    return [*args, "--train_limit", "128", "--n_epochs", "2", "--val_every", "1",
            "--num_samples_mmd", "32", "--sample_batch_size", "8", "--threads", "1",
            "--amp", "0",  # float32: bf16 sums of two shards need not equal one sum of both
            "--data_root", str(tmp_path / "mnist"), "--out_dir", str(tmp_path / "runs"), "--save_model", name]


def log(folder):
    with open(os.path.join(folder, "log.csv")) as f:
        return [(float(r["loss"]), float(r["grad_norm"]), float(r["mmd_n0"])) for r in csv.DictReader(f)]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "FSDIFF_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "tests/ddp_worker.py", str(tmp_path),
                          *flags(tmp_path, "ddp", 16)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    os.makedirs(tmp_path / "single")
    single = subprocess.run([sys.executable, "tests/ddp_worker.py", str(tmp_path / "single"),
                             *flags(tmp_path, "single", 32)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"
    # Weights are not compared with the single run: biases in front of a GroupNorm have a
    # gradient of exactly 0 in exact arithmetic, and Adam turns its rounding noise (which
    # differs with the reduction order) into lr-sized steps. Loss, gradient norm and the
    # validation MMD of every epoch are compared instead.
    assert sorted(os.listdir(tmp_path / "runs" / "ddp")) == sorted(os.listdir(tmp_path / "runs" / "single"))
    assert sorted(f for f in os.listdir(tmp_path / "runs" / "ddp") if f.endswith(".pt")) == ["best.pt", "last.pt"]
    for ddp_row, single_row in zip(log(tmp_path / "runs" / "ddp"), log(tmp_path / "runs" / "single"), strict=True):
        assert ddp_row == pytest.approx(single_row, rel=1e-5)
    assert ddp.stdout.count("done:") == 1  # one rank reports
