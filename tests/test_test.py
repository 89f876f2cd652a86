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


def evaluate(trained, *extra, capsys, name="run"):
    argv = ["--save_model", name, "--out_dir", str(trained / "runs"), "--data_root",
            str(trained / "mnist"), "--num_samples_mmd", "12", "--num_steps", "3", "--progress", "0",
            *extra]
    try:
        run_main(lambda: evaluate_cli.main(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr()


def test_evaluation_reports_every_mode_with_floors_and_oracles(trained, tmp_path, capsys):
    """Every row's figures recomputed here from the protocol: the samples regenerated from the seed,
    the reference images picked and transformed, the MMDs of both."""
    import torch

    import data
    import sde
    from mmd import riesz_mmd
    from resample import power_outside_band, resample
    from utils import load_checkpoint

    results = tmp_path / "eval"
    code, out = evaluate(trained, "--upscale", "2", "--resolution", "42", "--sample_mode", "all", "--sampler", "em",
                         "--num_samples_native", "6", "--results_dir", str(results), capsys=capsys)
    assert code == 0, out.err
    assert "'native' runs the network trained at 28 on the 42x42 grid as it is" in out.out
    report = json.loads((results / "results.json").read_text())
    rows = {(r["resolution"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(28, "n0"), *((n, mode) for n in (42, 56)
                                       for mode in ("native-bl", "resample-fourier", "native"))}
    state = load_checkpoint(str(trained / "runs" / "run" / "best.pt"))
    model, prior, _ = evaluate_cli.restore(state, torch.device("cpu"))
    digits = {split: data.load_mnist(str(trained / "mnist"), train=split == "train", quiet=True)
              for split in ("test", "train")}

    def references(split, count, resolution):
        order = torch.randperm(len(digits[split].labels), generator=torch.Generator().manual_seed(int(split == "train")))
        return data.evaluation_images(digits[split].images[order[:count]], 28, resolution)

    for (resolution, mode), row in rows.items():
        count = 6 if mode == "native" else 12
        assert row["n"] == count
        samples = sde.generate(model, prior, count, 28, mode={"n0": "native", "resample-fourier": "resample"}.get(
            mode, mode), seed=0, num_steps=3, show_progress=False, resolution=resolution)
        test_low, test_high = references("test", count, resolution)
        train_low, train_high = references("train", count, resolution)
        assert row["mmd"] == pytest.approx(riesz_mmd(samples, test_high), rel=1e-9)
        assert row["floor_real"] == pytest.approx(riesz_mmd(train_high, test_high), rel=1e-9)
        assert row["mmd_scaled"] == pytest.approx(row["mmd"] * 28 / resolution, rel=1e-12)
        if resolution > 28:
            oracle_images = resample(train_low, resolution).clamp(0, 1)
            assert row["oracle_fourier"] == pytest.approx(riesz_mmd(oracle_images, test_high), rel=1e-9)
            for key, images in (("detail", samples), ("detail_real", test_high), ("oracle_detail", oracle_images)):
                assert row[key] == pytest.approx(power_outside_band(images, 28), rel=1e-9), key
            assert row["ends_with_denoiser"] == (mode != "resample-fourier")
        else:
            assert "oracle_fourier" not in row and "detail" not in row and row["ends_with_denoiser"] is False
    assert report["seed"] == 0 and report["versions"]["torch"]
    assert report["batch_size"] == "auto" and report["device"] == "cpu"
    assert {"results.md", "samples_28_native.png", "samples_56_resample.png",
            "samples_42_native-bl.png", "samples_all_grids.png"} <= set(os.listdir(results))
    from PIL import Image

    panels = [Image.open(results / name) for name in ("samples_28_native.png", "samples_42_native-bl.png",
                                                       "samples_56_native-bl.png")]
    height = max(p.height for p in panels)
    assert Image.open(results / "samples_all_grids.png").size == (
        sum(p.width * height // p.height for p in panels) + 16, height)  # n0, then native-bl at 42 and 56
    assert "fallback sample, not MNIST test" in (results / "results.md").read_text()


def test_the_default_samples_digits_on_the_fine_grid_without_the_raw_native_ablation(trained, tmp_path, capsys):
    code, out = evaluate(trained, "--results_dir", str(tmp_path / "d"), capsys=capsys)
    assert code == 0, out.err
    rows = json.loads((tmp_path / "d" / "results.json").read_text())["results"]
    assert [(r["resolution"], r["mode"]) for r in rows] == [(28, "n0"), (56, "resample-fourier"), (56, "native-bl")]
    assert "as it is" not in out.out


def test_a_run_is_scored_against_its_own_data_root_by_default(tmp_path, capsys):
    """Trained with --data_root X (MNIST files there), test.py without the flag scores against X's test
    split; a run whose MNIST files are gone is refused, not scored against the fallback digits."""
    import torch

    from tests.conftest import write_fake_mnist
    from utils import load_checkpoint

    root = write_fake_mnist(str(tmp_path / "my_mnist"), train_count=300, test_count=40)
    argv = [*tiny_args(tmp_path, "--n_epochs", "1")]
    argv[argv.index("--data_root") + 1] = root
    assert train(argv, capsys)[0] == 0
    flags = ["--save_model", "run", "--out_dir", str(tmp_path / "runs"), "--num_samples_mmd", "8", "--num_steps",
             "2", "--progress", "0", "--upscale", "1"]
    code = 0
    try:
        run_main(lambda: evaluate_cli.main([*flags, "--results_dir", str(tmp_path / "e")]))
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"scoring against the test split of torchvision MNIST under {root} (40 images)" in out.out
    report = json.loads((tmp_path / "e" / "results.json").read_text())
    assert report["data"] == f"torchvision MNIST under {root}" and report["data_root"] == root
    assert f"torchvision MNIST under {root} (40 images)" in (tmp_path / "e" / "results.md").read_text()

    state = load_checkpoint(str(tmp_path / "runs" / "run" / "best.pt"))
    state["config"]["data_root"] = state["data_root_abs"] = str(tmp_path / "gone")
    torch.save(state, tmp_path / "moved.pt")
    try:
        run_main(lambda: evaluate_cli.main([*flags, "--save_model", str(tmp_path / "moved.pt")]))
        code = 0
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and "was trained on torchvision MNIST" in err and "--data_root" in err


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


@pytest.mark.parametrize("sampler, evaluations", [("heun", 5), ("ancestral", 3), ("dpm2m", 3)])
def test_the_sigma_grid_samplers_are_selectable_and_recorded(trained, tmp_path, capsys, sampler, evaluations):
    code, out = evaluate(trained, "--upscale", "1", "--sampler", sampler, "--results_dir", str(tmp_path / "h"),
                         capsys=capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "h" / "results.json").read_text())
    assert report["sampler"] == sampler and report["tweedie"] is True
    assert report["score_evaluations"] == evaluations


def test_the_default_sampler_is_the_networks_measured_choice(trained, tmp_path, capsys):
    """No --sampler: the network's entry of AUTO_SAMPLERS (the tiny run is a UNet), said on the
    console and recorded; --num_steps still overrides the steps."""
    code, out = evaluate(trained, "--upscale", "1", "--results_dir", str(tmp_path / "a"), capsys=capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    sampler, _ = evaluate_cli.AUTO_SAMPLERS["unet"]
    assert report["sampler"] == sampler and report["num_steps"] == 3  # the helper passes --num_steps 3
    assert f"sampler: auto -> {sampler} with 3 steps for the unet" in out.out
    assert report["tweedie"] is (sampler != "em")  # each sampler's own default for the last step


@pytest.mark.parametrize("model", sorted(evaluate_cli.AUTO_SAMPLERS))
def test_auto_resolves_per_network_and_an_explicit_sampler_keeps_200_steps(model):
    import sde

    parser = evaluate_cli.build_parser()
    args = parser.parse_args(["--save_model", "x"])
    line = evaluate_cli.resolve_sampler(args, model)
    sampler, steps = evaluate_cli.AUTO_SAMPLERS[model]
    assert (args.sampler, args.num_steps) == (sampler, steps) and model in line
    evaluations = sde.score_evaluations(sampler, steps, evaluate_cli.tweedie_flag(args))
    assert evaluations <= 50  # the promise of auto
    assert evaluate_cli.resolve_sampler(args, model) is None and (args.sampler, args.num_steps) == (sampler, steps)
    explicit = parser.parse_args(["--save_model", "x", "--sampler", "em"])
    assert evaluate_cli.resolve_sampler(explicit, model) is None and explicit.num_steps == 200


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
    assert "multiples of 16 only" in out.out
    report = json.loads((tmp_path / "g" / "results.json").read_text())
    assert report["classifier"] is None and "fd" not in report["results"][0]


@pytest.mark.parametrize("sampler", ["heun", "ancestral", "dpm2m"])
def test_sigma_grid_samplers_without_the_denoiser_need_two_steps(trained, capsys, sampler):
    code, out = evaluate(trained, "--sampler", sampler, "--tweedie", "0", "--num_steps", "1", capsys=capsys)
    assert code == 2 and "--num_steps" in out.err


def test_the_sampler_benchmark_runs_on_a_trained_checkpoint_and_scores_56_against_56(trained, tmp_path,
                                                                                    monkeypatch):
    """bench/samplers.py end to end (it once asked for 2x2 references at 56 and crashed)."""
    import bench.samplers as samplers

    output = tmp_path / "samplers.md"
    monkeypatch.setattr(sys, "argv", ["samplers.py", "--checkpoints", str(trained / "runs" / "run" / "last.pt"),
                                      "--budgets", "2", "--num_samples", "6", "--samplers", "em", "--compare_raw",
                                      "0", "--output", str(output)])
    samplers.main()
    rows = json.loads((tmp_path / "samplers.json").read_text())["results"]
    assert len(rows) == 1 and rows[0]["steps"] == 2 and rows[0]["mmd_28"] > 0
    assert rows[0]["mmd_56_resample"] > 0


def test_a_microstructure_run_trains_and_is_scored_by_its_statistics_on_a_finer_grid(tmp_path, capsys):
    """--dataset microstructure end to end: generated at 16 and 32 (a small law), trained at 16, scored at 16
    and 32 against true samples with the volume fraction, S2, interface length, sharpness and high band,
    and without the digit classifier's figures."""
    import main

    small = ["--dataset", "microstructure", "--dataset_option", "band=4", "--dataset_option", "ell=0.15",
             "--dataset_option", "fine=64", "--dataset_option", "train_count=96", "--dataset_option", "test_count=40",
             "--dataset_option", "tau=0.3"]
    argv = ["--model", "fno", "--model_arg", "width=8", "--model_arg", "modes=4", "--model_arg", "n_layers=2",
            "--input_height", "16", "--n_epochs", "1", "--batch_size", "32", "--num_samples_mmd", "16", "--num_steps",
            "2", "--progress", "0", "--data_root", str(tmp_path / "data"), "--out_dir", str(tmp_path / "runs"),
            "--save_model", "micro", "--parametrization", "edm", *small]
    main.main(argv)
    assert any(name.startswith("train_96_") for name in os.listdir(next((tmp_path / "data" / "microstructure").iterdir())))
    code, out = evaluate(tmp_path, "--upscale", "2", "--sample_mode", "resample", "native-bl", "--num_samples_mmd", "12",
                         "--num_steps", "2", "--results_dir", str(tmp_path / "eval"), "--data_root", str(tmp_path / "data"),
                         capsys=capsys, name="micro")
    assert code == 0, out.err
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["dataset"]["name"] == "microstructure" and report["dataset"]["options"]["tau"] == 0.3
    rows = report["results"]
    assert [(r["resolution"], r["mode"]) for r in rows] == [(16, "n0"), (32, "resample-fourier"), (32, "native-bl")]
    for r in rows:
        assert "fd" not in r and 0 <= r["volume_fraction"] <= 1
        assert r["volume_fraction_continuum"] == pytest.approx(0.3820885778, rel=1e-6)  # Phi(-0.3)
        assert r["interface_true"] > 0 and r["sharpness_true"] > 0 and len(r["spectrum"]) == r["resolution"] // 2 + 1
    assert "Microstructure statistics" in (tmp_path / "eval" / "results.md").read_text()
