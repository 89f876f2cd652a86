"""test.py: evaluation of a checkpoint, its outputs, and its refusals."""
import json
import os
import subprocess
import sys

import pytest

import test as evaluate_cli
from utils import run_main

from tests.test_main import call as train, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")

    class Capture:  # train() wants capsys; a module fixture has none
        def readouterr(self):
            return type("R", (), {"err": ""})()

    code, _ = train(tiny_args(tmp_path, "--n_epochs", "1"), Capture())
    assert code == 0
    return tmp_path


def evaluate(trained, *extra, capsys):
    argv = ["--save_model", "run", "--out_dir", str(trained / "runs"), "--data_root",
            str(trained / "mnist"), "--num_samples_mmd", "12", "--num_steps", "3", "--progress", "0",
            *extra]
    try:
        run_main(lambda: evaluate_cli.main(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr()


def test_evaluation_reports_every_mode_with_floors_and_oracles(trained, tmp_path, capsys):
    results = tmp_path / "eval"
    code, out = evaluate(trained, "--upscale", "2", "3", "--sample_mode", "both",
                         "--num_samples_native", "6", "--results_dir", str(results), capsys=capsys)
    assert code == 0, out.err
    report = json.loads((results / "results.json").read_text())
    rows = {(r["resolution"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(28, "n0"), (56, "native"), (56, "resample-fourier"), (84, "native"),
                         (84, "resample-fourier")}
    assert rows[(56, "native")]["n"] == 6 and rows[(56, "resample-fourier")]["n"] == 12
    for key in ("oracle_fourier", "oracle_bicubic", "floor_real", "mmd"):
        assert rows[(56, "native")][key] > 0
    assert "oracle_fourier" not in rows[(28, "n0")]
    assert report["seed"] == 0 and report["versions"]["torch"]
    assert {"results.md", "samples_28_native.png", "samples_56_resample.png"} <= set(os.listdir(results))


def test_resample_rows_can_reuse_the_n0_samples(trained, tmp_path, capsys):
    code, out = evaluate(trained, "--upscale", "2", "--sample_mode", "resample", "--resample_noise", "n0",
                         "--results_dir", str(tmp_path / "r"), capsys=capsys)
    assert code == 0, out.err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    assert [r["mode"] for r in rows] == ["n0", "resample-fourier"]
    assert rows[1]["n"] == rows[0]["n"] and rows[1]["mmd"] > 0


def test_results_are_reproducible_from_the_seed(trained, tmp_path, capsys):
    figures = []
    for name in ("a", "b"):
        assert evaluate(trained, "--upscale", "1", "--results_dir", str(tmp_path / name), capsys=capsys)[0] == 0
        figures.append(json.loads((tmp_path / name / "results.json").read_text())["results"][0]["mmd"])
    assert figures[0] == figures[1]


@pytest.mark.parametrize("flags,named", [
    (["--upscale", "0"], "--upscale"),
    (["--input_height", "32"], "--input_height"),
    (["--num_samples_mmd", "20000"], "--num_samples_mmd"),
    (["--num_steps", "0"], "--num_steps"),
    (["--checkpoint", "last", "--save_model", "no_such_run"], "--save_model"),
])
def test_bad_evaluation_flags_are_refused_in_one_line(trained, capsys, flags, named):
    code, out = evaluate(trained, *flags, capsys=capsys)
    assert code == 2 and named in out.err and out.err.count("\n") == 1


def test_a_corrupt_checkpoint_is_refused_by_the_real_cli(trained, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((trained / "runs" / "run" / "last.pt").read_bytes()[:1000])
    result = subprocess.run([sys.executable, "test.py", "--save_model", str(bad), "--progress", "0"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FSDIFF_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint") and "corrupt" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("sampler, evaluations", [("heun", 5), ("ancestral", 3)])
def test_the_sigma_grid_samplers_are_selectable_and_recorded(trained, tmp_path, capsys, sampler, evaluations):
    code, out = evaluate(trained, "--upscale", "1", "--sampler", sampler, "--results_dir", str(tmp_path / "h"),
                         capsys=capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "h" / "results.json").read_text())
    assert report["sampler"] == sampler and report["tweedie"] is True
    assert report["score_evaluations"] == evaluations


def test_frechet_distance_and_class_histogram_with_a_classifier(trained, tmp_path, capsys):
    import torch

    import frechet

    path = tmp_path / "classifier.pt"
    torch.manual_seed(0)
    torch.save({"format": frechet.FORMAT, "model": frechet.DigitClassifier().state_dict(), "kwargs": {}}, path)
    code, out = evaluate(trained, "--upscale", "2", "--sample_mode", "native", "--num_samples_native", "12",
                         "--classifier", str(path), "--results_dir", str(tmp_path / "f"), capsys=capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "f" / "results.json").read_text())
    assert report["classifier"]["sha256"] == frechet.file_sha256(path)
    for row in report["results"]:
        assert row["fd"] >= 0 and row["fd_floor"] >= 0 and sum(row["class_histogram"]) == 12
    code, out = evaluate(trained, "--classifier", str(tmp_path / "nope.pt"), capsys=capsys)
    assert code == 2 and "--classifier" in out.err


def test_a_classifier_for_another_grid_is_skipped_with_a_note(trained, tmp_path, capsys):
    import torch

    import frechet

    path = tmp_path / "classifier16.pt"
    torch.save({"format": frechet.FORMAT, "model": frechet.DigitClassifier().state_dict(), "kwargs": {},
                "n0": 16}, path)
    code, out = evaluate(trained, "--upscale", "1", "--classifier", str(path), "--results_dir", str(tmp_path / "g"),
                         capsys=capsys)
    assert code == 0, out.err
    assert "Frechet distance skipped" in out.out
    report = json.loads((tmp_path / "g" / "results.json").read_text())
    assert report["classifier"] is None and "fd" not in report["results"][0]


@pytest.mark.parametrize("sampler", ["heun", "ancestral"])
def test_sigma_grid_samplers_without_the_denoiser_need_two_steps(trained, capsys, sampler):
    code, out = evaluate(trained, "--sampler", sampler, "--tweedie", "0", "--num_steps", "1", capsys=capsys)
    assert code == 2 and "--num_steps" in out.err
