"""reproduce.py end to end on a tiny profile: table, CSV, grids, plot, and a no-op second call."""
import csv
import dataclasses
import json
import os

import pytest

import reproduce
import sde
from utils import run_main

TINY_PROFILE = {
    "train": {"profile": "small", "subset": 0, "batch_size": 32, "lr": 1e-3, "val_every": 1,
              "num_samples_mmd": 8, "train_limit": 64, "num_steps": 3, "sample_batch_size": 8},
    "models": {"unet": {"n_epochs": 1, "model_arg": ["ch=8", "ch_mult=(1,2)"]},
               "fno": {"n_epochs": 1, "model_arg": ["width=8", "modes=4", "n_layers=2"]},
               "cno": {"n_epochs": 1, "model_arg": ["n_levels=2", "channel_multiplier=4", "lift_channels=4"]}},
    "eval": {"num_samples_mmd": 10, "num_samples_native": 6, "resample_noise": "n0", "native_seeds": [0],
             "num_steps": 3},
}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(reproduce.PROFILES, "tiny", TINY_PROFILE)
    monkeypatch.setattr(reproduce.evaluation, "build_parser", _fast_eval_parser(reproduce.evaluation.build_parser))


def _fast_eval_parser(original):
    """test.py's parser with --num_steps 3 as default, so the tiny evaluation is quick."""
    def build():
        parser = original()
        parser.set_defaults(num_steps=3)
        return parser
    return build


def call(argv):
    try:
        run_main(lambda: reproduce.main(argv))
    except SystemExit as exit:
        return exit.code
    return 0


def test_reproduce_writes_the_table_and_skips_finished_runs(tiny, tmp_path, monkeypatch):
    argv = ["--profile", "tiny", "--models", "unet", "cno", "--priors", "standard", "--seeds", "0", "1",
            "--runs_dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--data_root", str(tmp_path / "mnist"), "--progress", "0"]
    assert call(argv) == 0
    results = tmp_path / "results"
    assert {"table.md", "runs.csv", "val_mmd.png", "samples_unet_standard.png",
            "samples_cno_standard.png"} <= set(os.listdir(results))
    rows = list(csv.DictReader(open(results / "runs.csv")))
    assert len(rows) == 4
    natives = {(r["model"], r["seed"]): r["mmd_56_native"] for r in rows}
    assert natives[("unet", "0")] != "" and natives[("unet", "1")] == ""  # native on seed 0 only
    assert all(r["mmd_56_native_bl"] != "" and r["n_56_native_bl"] == "10" for r in rows)  # every seed
    table = (results / "table.md").read_text()
    assert "Prior `standard`" in table and "n=10" in table and "n=6" in table and "+-" in table
    assert "real-vs-real 28" in table and "oracle" in table
    for key in reproduce.CLASSIFIER_FIGURES:  # the classifier's figures beside the FD, each with its floor
        assert all(0 <= float(r[f"{key}_28"]) and 0 <= float(r[f"{key}_floor_28"]) for r in rows)
        assert f"{key} real-vs-real 28: " in table
    assert "| confident 28 | precision 28 | recall 28 | Vendi 28 |" in table
    assert "MMD 56 native-bl (n=10)" in table and reproduce.COLUMNS_NOTE in table
    assert reproduce.seeds_note([], [1, 2]) == "" and reproduce.seeds_note([0.1], [1, 2, 3]) == ""
    assert reproduce.seeds_note([0.1, 0.2], [1, 2, 3]) == " (2 seeds)"
    assert "Hardware, all runs: " in table and all(r["host"] for r in rows)
    record = json.load(open(results / "runs" / "tiny" / "unet_standard_s0.json"))
    assert record["max_load_1min"] is not None and record["max_load_1min"] >= 0
    assert (record["sampler"], record["num_steps"]) == ("em", 3)  # the profile's eval, as test.py resolved it
    assert "Samplers at n0: unet: em 3 steps, 3 score evaluations; cno: em 3 steps, 3 score evaluations." in table
    floors = json.load(open(results / "runs" / "tiny_val_floors.json"))
    assert set(floors) == {"0", "1"} and all(f["n"] == 8 and f["mmd"] > 0 for f in floors.values())
    for seed in (0, 1):  # the floor main.py computed while training, not a second computation
        written = json.load(open(tmp_path / "runs" / "tiny" / f"unet_standard_s{seed}" / "config.json"))
        assert floors[str(seed)]["mmd"] == written["val_floor_n0"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained, evaluated or its floor recomputed again")
    for name in ("train_run", "evaluate_run"):
        monkeypatch.setattr(reproduce, name, must_not_run)
    monkeypatch.setattr(reproduce.training, "load_training_data", must_not_run)
    moved = results / "runs" / "tiny" / "cno_standard_s1.json"  # as if this run had finished elsewhere
    record = json.load(open(moved))
    assert record["train_versions"]["platform"] == record["versions"]["platform"]  # trained and scored here
    record["train_versions"]["platform"] = "another-machine"  # the hardware is where it trained, not where scored
    del record["sampler"], record["num_steps"]  # as records written before these fields (v1's)
    record["max_load_1min"] = record["train_versions"]["cpu_threads"] + 3.5  # trained beside other work
    moved.write_text(json.dumps(record))
    assert call(argv) == 0  # everything finished: only the summary is rebuilt
    assert len(list(csv.DictReader(open(results / "runs.csv")))) == 4
    table = (results / "table.md").read_text()
    assert "Hardware, 1 run (cno_standard_s1): another-machine," in table
    assert "Hardware, 3 runs (cno_standard_s0, unet_standard_s0, unet_standard_s1): " in table
    assert "cno: em 3 steps (the profile's) / em 3 steps, 3 score evaluations." in table
    assert f"cno_standard_s1 (load {record['max_load_1min']:.1f})" in table.split("not timings: ")[1]


def test_a_run_is_called_contended_only_above_its_threads_plus_the_margin():
    def record(name, load, threads=2):
        model, prior, seed = name
        return {"model": model, "prior": prior, "seed": seed, "max_load_1min": load,
                "versions": {"cpu_threads": threads}}
    assert reproduce.SHARED_LOAD_MARGIN == 0.5
    records = [record(("unet", "standard", 0), 2.4), record(("fno", "standard", 0), 2.6),
               record(("cno", "standard", 0), None), record(("cno", "standard", 1), 8.4, threads=8)]
    lines = reproduce.shared_cpu_lines(records)
    assert len(lines) == 1 and lines[0].endswith("not timings: fno_standard_s0 (load 2.6).")
    assert "above the torch threads + 0.5 in an epoch" in lines[0]
    assert reproduce.shared_cpu_lines(records[:1] + records[2:]) == []


@pytest.mark.parametrize("profile", sorted(reproduce.PROFILES))
def test_every_profile_names_only_options_main_and_test_know(profile):
    """A misspelt key in a profile would fail only hours into a table run: every training option
    must be a TrainConfig field, every evaluation sampler one test.py accepts."""
    settings = reproduce.PROFILES[profile]
    for model, options in settings["models"].items():
        reproduce.training.validate(reproduce.training.TrainConfig(model=model, **{**settings["train"], **options}))
    assert settings["eval"].get("sampler", "em") in ("auto", *sde.SAMPLERS)



def test_a_run_killed_before_its_first_checkpoint_is_kept_aside_and_restarted(tiny, tmp_path):
    stale = tmp_path / "runs" / "tiny" / "unet_standard_s0"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    argv = ["--profile", "tiny", "--models", "unet", "--priors", "standard", "--seeds", "0",
            "--runs_dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--data_root", str(tmp_path / "mnist"), "--progress", "0"]
    assert call(argv) == 0
    kept = [name for name in os.listdir(tmp_path / "runs" / "tiny") if name.startswith("unet_standard_s0.incomplete-")]
    assert len(kept) == 1 and (tmp_path / "runs" / "tiny" / kept[0] / "config.json").exists()
    assert (stale / "last.pt").exists()


def test_a_run_trained_with_other_options_is_kept_aside_and_trained_anew(tiny, tmp_path, monkeypatch):
    """After a profile changes, a checkpoint of the old options must not be resumed or reused."""
    argv = ["--profile", "tiny", "--models", "unet", "--priors", "standard", "--seeds", "0", "--train_only",
            "--runs_dir", str(tmp_path / "runs"), "--data_root", str(tmp_path / "mnist"), "--progress", "0"]
    runs = tmp_path / "runs" / "tiny"
    assert call(argv) == 0
    first = (runs / "unet_standard_s0" / "last.pt").stat().st_mtime_ns
    assert call(argv) == 0  # the same options: a finished run is kept as it is
    assert (runs / "unet_standard_s0" / "last.pt").stat().st_mtime_ns == first
    changed = {**TINY_PROFILE, "models": {**TINY_PROFILE["models"],
                                          "unet": {**TINY_PROFILE["models"]["unet"], "ema_decay": 0.5}}}
    monkeypatch.setitem(reproduce.PROFILES, "tiny", changed)
    assert call(argv) == 0
    kept = [name for name in os.listdir(runs) if name.startswith("unet_standard_s0.other-options-")]
    assert len(kept) == 1 and (runs / kept[0] / "last.pt").stat().st_mtime_ns == first
    assert reproduce.load_checkpoint(str(runs / "unet_standard_s0" / "last.pt"))["config"]["ema_decay"] == 0.5


def test_option_changes_name_what_differs_and_let_a_constant_rate_run_go_on():
    config = reproduce.training.TrainConfig(model="fno", n_epochs=6, sampler="auto")
    saved = {**reproduce.dataclasses.asdict(config), "data_root": "elsewhere", "device": "cuda"}
    assert reproduce.option_changes(config, saved) == {}  # this machine's options are not the run's
    assert reproduce.option_changes(config, {**saved, "n_epochs": 2}) == {}  # more epochs, constant rate
    assert reproduce.option_changes(config, {**saved, "n_epochs": 9}) == {"n_epochs": (9, 6)}
    config.lr_schedule = "cosine"
    assert reproduce.option_changes(config, {**saved, "lr_schedule": "cosine", "n_epochs": 2}) == {"n_epochs": (2, 6)}
    del saved["sampler"]  # a checkpoint from before --sampler validated with Euler-Maruyama
    assert reproduce.option_changes(config, {**saved, "lr_schedule": "cosine"}) == {"sampler": ("em", "auto")}


def test_the_per_run_records_under_results_are_not_git_ignored():
    """The table is rebuilt from results/runs/PROFILE/*.json: they must be committed with it
    (a bare `runs/` pattern in .gitignore, meant for the checkpoints, once hid them)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check = subprocess.run(["git", "check-ignore", "--no-index", "-q", "results/runs/cpu/unet_standard_s0.json"],
                           cwd=root, capture_output=True)
    assert check.returncode == 1, "results/runs/ records are git-ignored"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", "runs/reproduce/cpu/x/last.pt"], cwd=root)
    assert ignored.returncode == 0, "checkpoints under runs/ should stay ignored"


def test_validation_floors_come_from_the_records_else_from_the_data(tmp_path, monkeypatch):
    import torch

    def fake_data(config):
        generator = torch.Generator().manual_seed(config.seed)
        images = torch.rand(40, 1, 8, 8, generator=generator)
        return images[:32], images[32:], None, "torchvision MNIST under x"
    monkeypatch.setattr(reproduce.training, "load_training_data", fake_data)
    args = reproduce.build_parser().parse_args(["--profile", "cpu", "--results", str(tmp_path), "--data_root", "x"])
    (tmp_path / "runs").mkdir()
    recorded = {"seed": 0, "val_floor": {"mmd": 0.5, "n": 8, "resolution": 8}}
    older = {"seed": 1, "data": "torchvision MNIST under y", "train_config": {"seed": 1}}  # no val_floor
    floors = reproduce.validation_floors(args, [recorded, older])
    expected = reproduce.training.validation_floor(*fake_data(reproduce.training.TrainConfig(seed=1))[:2], 1)
    assert floors == {0: 0.5, 1: pytest.approx(expected)}
    assert json.load(open(tmp_path / "runs" / "cpu_val_floors.json"))["1"]["n"] == 8


def _record(settings, model, prior, seed, **trained):
    """A finished run's record as evaluate_run writes it, trained with the profile's options."""
    config = reproduce.profile_config(settings, model, prior, seed, data_root="elsewhere", device="cuda")
    saved = {**reproduce.dataclasses.asdict(config), **trained}
    return {"model": model, "prior": prior, "seed": seed, "epochs": saved["n_epochs"], "train_config": saved}


def test_record_changes_name_what_moves_the_weights_and_nothing_else():
    settings = TINY_PROFILE  # constant rate, 1 epoch per model
    assert reproduce.record_changes(_record(settings, "unet", "standard", 1), settings) == {}
    # validation sampling and this machine's options never make a record stale
    quiet = _record(settings, "unet", "standard", 1, num_steps=200, sampler="heun", num_samples_mmd=1000, threads=7)
    assert reproduce.record_changes(quiet, settings) == {}
    assert reproduce.record_changes(_record(settings, "cno", "standard", 0, ema_decay=0.5), settings) == {
        "ema_decay": (0.5, 0.999)}
    # the prior seed moves only the random priors; None (old checkpoints) means the training seed
    assert reproduce.record_changes(_record(settings, "fno", "standard", 2, prior_seed=None), settings) == {}
    changes = reproduce.record_changes(_record(settings, "fno", "fno", 2, prior_seed=None), settings)
    assert changes == {"prior options": ({"prior_seed": 2}, {"prior_seed": 0})}
    assert reproduce.record_changes(_record(settings, "fno", "fno", 0, prior_seed=None), settings) == {}
    # a shorter record is not the longer run even where a constant rate would let the run go on
    longer = {**settings, "models": {**settings["models"], "unet": {**settings["models"]["unet"], "n_epochs": 3}}}
    assert reproduce.record_changes(_record(settings, "unet", "standard", 0), longer) == {"n_epochs": (1, 3)}


def test_a_record_of_other_options_is_set_aside_flagged_and_its_run_redone(tiny, tmp_path, monkeypatch):
    argv = ["--profile", "tiny", "--models", "unet", "--priors", "standard", "--seeds", "0",
            "--runs_dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--data_root", str(tmp_path / "mnist"), "--progress", "0"]
    assert call(argv) == 0
    records = tmp_path / "results" / "runs" / "tiny"
    first = json.load(open(records / "unet_standard_s0.json"))
    changed = {**TINY_PROFILE, "models": {**TINY_PROFILE["models"],
                                          "unet": {**TINY_PROFILE["models"]["unet"], "n_epochs": 2}}}
    monkeypatch.setitem(reproduce.PROFILES, "tiny", changed)
    assert call(argv + ["--summary_only"]) == 0  # the old record is still shown, and named
    table = (tmp_path / "results" / "table.md").read_text()
    assert "not yet its figures" in table and "unet_standard_s0 (n_epochs: 1 -> 2)" in table
    assert "| unet | 1 | 1 |" in table  # the epochs column
    moved_data = str(tmp_path / "mnist-elsewhere")  # resumed on a machine whose data lie elsewhere
    assert call([*argv[:-4], "--data_root", moved_data, "--progress", "0"]) == 0
    resumed = reproduce.load_checkpoint(str(tmp_path / "runs" / "tiny" / "unet_standard_s0" / "last.pt"))
    assert resumed["config"]["data_root"] == moved_data  # this call's, not the checkpoint's
    kept = os.listdir(records / "superseded")
    assert len(kept) == 1 and kept[0].startswith("unet_standard_s0.other-options-")
    assert json.load(open(records / "superseded" / kept[0])) == first  # nothing is lost
    assert json.load(open(records / "unet_standard_s0.json"))["epochs"] == 2
    table = (tmp_path / "results" / "table.md").read_text()
    assert "not yet its figures" not in table and "| unet | 1 | 2 |" in table


def test_the_table_names_the_runs_trained_in_bf16_and_says_nothing_when_none_were():
    def record(model, seed, amp):
        return {"model": model, "prior": "standard", "seed": seed, "train_config": {"amp": amp}}

    assert reproduce.precision_lines([record("unet", 0, 0), record("cno", 0, "0")]) == []  # old int flags too
    mixed = [record("unet", 0, "1"), record("unet", 1, "0"), record("fno", 0, 1)]
    assert reproduce.precision_lines(mixed) == [
        "Trained in bf16 autocast (`main.py --amp`): 2 of 3 runs (fno_standard_s0, unet_standard_s0); "
        "the others in float32."]
    assert reproduce.precision_lines([record("unet", 2, "1")]) == [
        "Trained in bf16 autocast (`main.py --amp`): all runs."]


def test_a_record_counts_as_changed_where_this_machine_would_train_it_in_another_precision(monkeypatch):
    import main
    monkeypatch.setattr(main, "bf16_hardware", lambda device: True)  # --amp auto: bf16 for the UNet here
    settings = reproduce.PROFILES["cpu"]
    unet = reproduce.profile_config(settings, "unet", "standard", 0)
    fno = reproduce.profile_config(settings, "fno", "standard", 0)
    assert reproduce.option_changes(unet, {**dataclasses.asdict(unet), "amp": 0}) == {"amp": ("0", "1")}
    assert reproduce.option_changes(unet, {**dataclasses.asdict(unet), "amp": "1"}) == {}
    assert reproduce.option_changes(fno, {**dataclasses.asdict(fno), "amp": 0}) == {}  # auto: float32 for it
    v1 = reproduce.profile_config(reproduce.PROFILES["cpu-v1"], "unet", "standard", 0)
    assert reproduce.option_changes(v1, {**dataclasses.asdict(v1), "amp": 0}) == {}  # pinned to float32
