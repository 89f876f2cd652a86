"""The bench scripts' planning and bookkeeping (the measurements themselves are run by hand)."""
import json
import math

import torch

import pytest

import sde
from utils import UserError
from bench.resolution import (best_per_prior, evaluate, evaluation_plan, parse_args, ratio_summary,
                              ratio_to_resample, rows_of)
from bench.samplers import configurations, load_earlier, merge, write_outputs


def test_sampler_plan_follows_the_chosen_samplers_and_budgets():
    plan = configurations([25, 100], samplers=("em", "heun", "ancestral", "em+tweedie"), heun_budgets=[25])
    assert [(label, steps) for label, _, steps, _, _ in plan] == [
        ("em", 25), ("heun", 13), ("ancestral", 25), ("em+tweedie", 25),
        ("em", 100), ("ancestral", 100), ("em, raw weights", 100)]
    only = configurations([50], samplers=("ancestral", "dpm2m"), compare_raw=False)
    assert only == [("ancestral", "ancestral", 50, True, "ema"), ("dpm2m", "dpm2m", 50, True, "ema")]
    assert all(weights == "ema" for *_, weights in configurations([50], has_ema=False))


def test_a_new_run_replaces_its_own_rows_and_keeps_the_others():
    def row(checkpoint, sampler, steps, mmd, seed=0):
        return {"checkpoint": checkpoint, "sampler": sampler, "steps": steps, "weights": "ema", "mmd_28": mmd,
                "seed": seed}

    earlier = [row("a.pt", "em", 50, 0.1), row("a.pt", "heun", 25, 0.2), row("b.pt", "em", 50, 0.3)]
    merged = merge(earlier, [row("a.pt", "em", 50, 0.05), row("a.pt", "ancestral", 50, 0.04)])
    assert [(r["checkpoint"], r["sampler"], r["mmd_28"]) for r in merged] == [
        ("a.pt", "heun", 0.2), ("b.pt", "em", 0.3), ("a.pt", "em", 0.05), ("a.pt", "ancestral", 0.04)]

    other_seed = merge(merged, [row("a.pt", "em", 50, 0.06, seed=1)])
    assert [(r["seed"], r["mmd_28"]) for r in other_seed if r["sampler"] == "em" and r["checkpoint"] == "a.pt"] \
        == [(0, 0.05), (1, 0.06)]


def test_sampler_report_names_each_rows_run_so_seeds_of_one_model_stay_apart(tmp_path):
    def row(run, mmd):
        return {"checkpoint": f"runs/{run}/last.pt", "model": "cno", "prior": "standard", "sampler": "heun",
                "steps": 13, "weights": "ema", "nfe": 25, "n": 8, "seed": 0, "mmd_28": mmd,
                "mmd_56_resample": 2 * mmd, "seconds": 1.0, "command": "python bench/samplers.py"}

    output = tmp_path / "samplers.md"
    args = type("Args", (), {"output": str(output), "seed": 0})
    scored = {**row("cno_s2", 0.0125), "fd": 31.24, "fd_floor": 12.71, "confident": 0.8123, "confident_floor": 0.9512,
              "precision": 0.7012, "precision_floor": 0.7705, "recall": 0.5521, "recall_floor": 0.7811,
              "vendi": 8.123, "vendi_floor": 9.456}
    write_outputs(args, [row("cno_s0", 0.0117), row("cno_s1", 0.0131), scored])
    table = [line for line in output.read_text().splitlines() if line.startswith("| cno")]
    assert table == ["| cno / standard (cno_s0) | heun | ema | 13 | 25 | 8 | 0 | 0.0117 | 0.0234 | - | - | - | - | 1 |",
                     "| cno / standard (cno_s1) | heun | ema | 13 | 25 | 8 | 0 | 0.0131 | 0.0262 | - | - | - | - | 1 |",
                     "| cno / standard (cno_s2) | heun | ema | 13 | 25 | 8 | 0 | 0.0125 | 0.0250 | 31.2 (12.7) | "
                     "0.812 (0.951) | 0.701 / 0.552 (0.770 / 0.781) | 8.12 (9.46) | 1 |"]


def test_rows_of_reports_written_before_rows_had_a_seed_take_the_reports_seed(tmp_path):
    path = tmp_path / "samplers.json"
    path.write_text(json.dumps({"seed": 3, "results": [{"checkpoint": "a.pt"}, {"checkpoint": "b.pt", "seed": 5}]}))
    assert [r["seed"] for r in load_earlier(str(path))] == [3, 5]


def test_resolution_rows_scale_by_n0_over_n_and_pair_native_bl_with_resample():
    report = {"model": "cno", "prior": {"name": "lap_conv", "laplacian": "spectral"}, "train_config": {"input_height": 28},
              "results": [
                  {"resolution": 28, "mode": "n0", "n": 8, "mmd": 0.1, "floor_real": 0.05},
                  {"resolution": 42, "mode": "resample-fourier", "n": 8, "mmd": 0.3, "floor_real": 0.06,
                   "oracle_fourier": 0.09},
                  {"resolution": 42, "mode": "native-bl", "n": 8, "mmd": 0.33, "floor_real": 0.06,
                   "oracle_fourier": 0.09},
                  {"resolution": 56, "mode": "native", "n": 8, "mmd": 0.4, "floor_real": 0.1, "oracle_fourier": 0.12}]}
    rows = list(rows_of(report, wanted={42}))
    assert [(r["run"], r["N"], r["mode"]) for r in rows] == [
        ("cno / lap_conv (spectral)", 28, "n0"), ("cno / lap_conv (spectral)", 42, "resample-fourier"),
        ("cno / lap_conv (spectral)", 42, "native-bl")]
    assert rows[1]["mmd_scaled"] == pytest.approx(0.3 * 28 / 42) and rows[1]["oracle_scaled"] == pytest.approx(0.06)
    assert rows[0]["oracle_scaled"] is None and rows[0]["mmd_scaled"] == 0.1
    assert ratio_to_resample(rows) == {("cno / lap_conv (spectral)", 42, 8): pytest.approx(1.1)}
    summary = ratio_summary(rows, ratio_to_resample(rows))
    assert "| cno / lap_conv (spectral) | 1.100 (8) |" in summary and "Largest ratio: 1.100; smallest: 1.100." in summary


def test_resolution_plan_groups_grids_by_sample_count_and_runs_the_ablation_only_where_asked():
    args = parse_args(["--checkpoints", "a.pt", "--resolutions", "42", "50", "56", "84", "112",
                       "--native_resolutions", "56", "84", "112"])
    assert evaluation_plan(args, 28) == [
        ([42, 50], 1000, ["resample", "native-bl"]), ([56], 1000, ["resample", "native-bl", "native"]),
        ([84, 112], 250, ["resample", "native-bl", "native"])]
    apart = parse_args(["--checkpoints", "a.pt", "--resolutions", "56", "84", "--native_resolutions", "56",
                        "--num_samples_native", "250"])
    assert evaluation_plan(apart, 28) == [([56], 1000, ["resample", "native-bl"]), ([84], 250, ["resample", "native-bl"]),
                                          ([56], 250, ["native"])]
    assert evaluation_plan(apart, 28, [84]) == [([84], 250, ["resample", "native-bl"])]
    every = parse_args(["--checkpoints", "a.pt", "--resolutions", "56", "--modes", "native-bl"])
    assert evaluation_plan(every, 28) == [([56], 1000, ["native-bl"])]


def test_resolution_reuses_a_finished_evaluation_that_holds_the_rows_and_picks_the_best_run_per_prior(
        tmp_path, monkeypatch):
    import bench.resolution as resolution

    def report(rows):
        return {"results": [{"resolution": n, "mode": mode} for n, mode in rows]}

    work = tmp_path / "work"
    for name, rows in (("unet_standard_s0_n250_ancestral50_resample-bl-native", [(84, "resample-fourier"),
                                                                                 (84, "native-bl"), (84, "native")]),
                       ("unet_standard_s0_n1000_ancestral50_resample-bl", [(56, "resample-fourier")])):
        (work / name).mkdir(parents=True)
        (work / name / "results.json").write_text(json.dumps(report(rows)))
    calls = []
    monkeypatch.setattr(resolution.evaluation, "main", lambda argv: calls.append(argv))
    args = parse_args(["--checkpoints", "x", "--work_dir", str(work)])
    path = str(tmp_path / "runs" / "unet_standard_s0" / "last.pt")
    _, folder = evaluate(args, path, [84], 250, ["resample", "native-bl"])  # a superset of modes: reused
    assert folder.endswith("resample-bl-native") and not calls
    with pytest.raises(FileNotFoundError):  # 56 lacks native-bl: test.py runs (here a stub that writes nothing)
        evaluate(args, path, [56], 1000, ["resample", "native-bl"])
    assert calls and calls[0][calls[0].index("--resolution") + 1] == "56"
    assert calls[0][calls[0].index("--results_dir") + 1].endswith("_n1000_ancestral50_resample-bl_56")

    rows = [{"run": run, "mode": mode, "n": n, "mmd": mmd} for run, mode, n, mmd in (
        ("unet / standard", "n0", 1000, 0.02), ("cno / standard", "n0", 1000, 0.03),
        ("fno / matern", "n0", 1000, 0.05), ("unet / matern", "n0", 1000, 0.04),
        ("unet / matern", "n0", 250, 0.01), ("cno / matern", "native-bl", 1000, 0.001))]
    assert best_per_prior(rows, {"unet / standard", "cno / standard", "fno / matern", "unet / matern",
                                 "cno / matern"}, 1000) == {"standard": "unet / standard", "matern": "unet / matern"}


def test_compute_curves_train_to_a_budget_score_and_skip_finished_runs(tmp_path, monkeypatch, capsys):
    import bench.compute as compute
    import reproduce
    from tests.test_reproduce import TINY_PROFILE

    monkeypatch.setitem(reproduce.PROFILES, "cpu", TINY_PROFILE)
    argv = ["--models", "unet", "fno", "--budgets", "0.005", "--runs_dir", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), "--data_root", str(tmp_path / "mnist"), "--num_samples", "8",
            "--num_steps", "2", "--warmup_steps", "2"]
    compute.main(argv)
    records = compute.load_records(compute.parse_args(argv))
    assert sorted(r["model"] for r in records) == ["fno", "unet"]
    for record in records:
        assert record["budget_minutes"] == 0.005 and record["train_config"]["minutes"] == 0.005
        assert record["train_config"]["lr_schedule"] == "cosine" and record["steps"] >= 1
        assert reproduce.column(record, "resample")["n"] == 8
        assert reproduce.column(record, "native-bl") is None  # the curves score resample only
        assert record["variant"] == "base" and record["train_config"]["ema_decay"] == 0.999
    assert {r["model"]: r["sampler"] for r in records} == {m: f"{sde.AUTO_SAMPLERS[m][0]} 2" for m in ("unet", "fno")}
    assert all(r["train_config"]["sampler"] == "auto" for r in records)  # validated the same way
    table = (tmp_path / "results" / "compute.md").read_text()
    assert table.count("| 0.005 |") == 2 and (tmp_path / "results" / "compute.png").exists()
    tag = compute.machine_tag(reproduce.hardware(records[0]))
    assert table.count(f"| base | 0.005 | {tag} |") == 2 and f"the machine column): {tag}: " in table  # one machine
    assert all(r["train_versions"]["platform"] == r["versions"]["platform"] for r in records)  # trained here
    assert "## Levers" not in table
    assert f"Made by\n\n    {compute.BASE_COMMAND}\n" in table  # one command for every base curve

    # a lever: the same budget with one option changed, recorded beside the base run and compared with it
    lever = ["--models", "unet"] + argv[3:] + ["--variant", "fastema", "--train_option", "ema_decay=0.9"]
    compute.main(lever)
    records = compute.load_records(compute.parse_args(argv))
    assert len(records) == 3
    variant = next(r for r in records if r["variant"] == "fastema")
    assert variant["train_config"]["ema_decay"] == 0.9 and variant["train_options"] == {"ema_decay": 0.9}
    assert (tmp_path / "results" / "compute" / "unet_standard_0.005min_s0_fastema.json").exists()
    base = next(r for r in records if r["variant"] == "base" and r["model"] == "unet")
    table = (tmp_path / "results" / "compute.md").read_text()
    before, after = (reproduce.column(r, "n0")["mmd"] for r in (base, variant))
    assert f"| unet | 0.005 | fastema (ema_decay=0.9) | {before:.4f} -> {after:.4f} |" in table
    assert "--variant fastema" in table  # each lever's command is written at the top

    def never(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce, "train_run", never)
    compute.main(argv)
    compute.main(lever)
    # the same variant name with other options is refused, not silently answered by the old run
    with pytest.raises(UserError, match="--variant fastema: unet has a run of that name with options"):
        compute.main(lever[:-1] + ["ema_decay=0.5"])


def test_compute_levers_are_paired_with_the_base_recipe_on_their_own_machine():
    import bench.compute as compute

    base_recipe = {"ema_decay": 0.999, "batch_size": 64}

    def run(variant, host, options=None, minutes=10, mmd=0.02, model="fno", fd=50.0, steps=100):
        return {"model": model, "minutes": minutes, "variant": variant, "host": host, "options": options or {},
                "recipe": {**base_recipe, **(options or {})}, "steps": steps, "mmd_28": mmd, "mmd_56": 2 * mmd,
                "fd_28": fd, "sampler": "heun 13", "n": 1000}

    base = run("base", "A", mmd=0.0163, fd=138.5, steps=2198)
    rerun = run("rerun", "B", {"ema_decay": 0.999}, mmd=0.0170, fd=136.0, steps=2316)
    batch = run("batch32", "B", {"batch_size": 32}, mmd=0.0146, fd=115.7, steps=3855)
    alone = run("ema0.99", "C", {"ema_decay": 0.99})
    other_budget = run("rerun", "C", {"ema_decay": 0.999}, minutes=20)
    lever_beside_it = run("batch32", "C", {"batch_size": 32}, minutes=20)
    cno_base_on_b = run("base", "B", model="cno")
    rows = [base, rerun, batch, alone, other_budget, lever_beside_it, cno_base_on_b]
    assert compute.restates_base(rerun, base) and not compute.restates_base(batch, base)
    assert not compute.restates_base(run("two", "B", {"ema_decay": 0.999, "batch_size": 32}), base)
    assert compute.paired_base(batch, rows) is rerun      # same machine, base recipe (not the cno's base)
    assert compute.paired_base(rerun, rows) is base       # a restatement is itself measured against the base
    assert compute.paired_base(alone, rows) is base       # no run of the base recipe on its machine
    assert compute.paired_base(other_budget, rows) is None  # no base run at that budget, none beside it
    assert compute.paired_base(lever_beside_it, rows) is other_budget  # a restatement beside it will do
    rerun_on_a = run("again", "A", {"ema_decay": 0.999})
    with_a = rows + [rerun_on_a]
    assert compute.paired_base(run("x", "A", {"batch_size": 32}), with_a) is base  # the base before a restatement
    assert compute.paired_base(rerun_on_a, with_a) is base
    assert compute.paired_base(rerun, rows + [run("rerun2", "B", {"ema_decay": 0.999})]) is base  # not each other
    table = "\n".join(compute.lever_lines(rows))
    assert ("| fno | 10 | batch32 (batch_size=32) | 0.0170 -> 0.0146 | 0.0340 -> 0.0292 | 136.0 -> 115.7 | "
            "2316 -> 3855 |") in table
    assert table.count("rerun, same machine |") == 2
    assert table.count(f"base, other machine, {compute.machine_tag('A')} |") == 2


def test_compute_recipe_is_what_a_run_trained_whatever_the_record_predates():
    import bench.compute as compute

    def record(model_kwargs=None, **options):
        return {"model": "cno", "train_config": {"ema_decay": 0.999, "out_dir": "runs/x", "minutes": 10.0, **options},
                "model_kwargs": model_kwargs or {"channel_multiplier": 16}}

    old = compute.recipe(record())
    assert compute.recipe(record(t_sampling="uniform", minutes=80.0, out_dir="elsewhere", progress=0)) == old
    assert compute.recipe(record(t_sampling="lognormal")) != old
    assert compute.recipe(record(ema_decay=0.99)) != old
    assert compute.recipe(record(model_kwargs={"channel_multiplier": 24})) != old
    assert compute.recipe(record(model_arg=["channel_multiplier=16"])) == old  # as the network read it
    # bf16 autocast: a record from before the flag, an integer flag and its string are one fp32 recipe
    assert compute.recipe(record(amp=0)) == compute.recipe(record(amp="0")) == old
    assert compute.recipe(record(amp="1")) == compute.recipe(record(amp=1)) != old


def test_compute_machine_tags_stay_as_records_are_added():
    import bench.compute as compute

    tags = {compute.machine_tag(h) for h in ("Linux-fc-v1045, torch threads 2", "Linux-fc-v1272, torch threads 2")}
    assert len(tags) == 2 and all(t.startswith("m") and len(t) == 5 for t in tags)
    line = compute.hardware_line({"Linux-fc-v1272, torch threads 2"})
    assert f"{compute.machine_tag('Linux-fc-v1272, torch threads 2')}: Linux-fc-v1272, torch threads 2." in line


def test_compute_notes_are_written_once_per_network_with_their_budgets():
    import bench.compute as compute

    rows = [{"model": "cno", "minutes": 5, "note": "made as a lever"}, {"model": "fno", "minutes": 5, "note": None},
            {"model": "cno", "minutes": 10.0, "note": "made as a lever"}]
    assert compute.note_lines(rows) == ["cno (5, 10 min): made as a lever.", ""]


def test_compute_names_base_runs_the_profile_has_moved_away_from_and_refuses_to_extend_their_curve(
        tmp_path, monkeypatch):
    import json
    import bench.compute as compute
    import reproduce

    cpu = reproduce.PROFILES["cpu"]
    asked = {**cpu["train"], **cpu["models"]["fno"]}

    def record(minutes, variant="base", **options):
        return {"model": "fno", "prior": "standard", "seed": 0, "epochs": 1, "variant": variant, "budget_minutes": minutes,
                "train_config": {**asked, "n_epochs": 10**6, "minutes": minutes, "val_every": 0, **options}}

    assert compute.profile_drift(record(10)) == {}  # the budget, epochs and validation are the bench's own
    assert compute.profile_drift(record(10, batch_size=asked["batch_size"] * 2)) == {
        "batch_size": (asked["batch_size"] * 2, asked["batch_size"])}
    assert compute.profile_drift(record(10, model_arg=["width=8"])) == {"model_arg": (["width=8"], asked["model_arg"])}
    old = [record(20, batch_size=7), record(5, batch_size=7), record(10), record(10, "lever", batch_size=7)]
    assert compute.drift_lines(old) == [
        "fno base (5, 20 min): trained before reproduce.py's cpu profile changed (batch_size: 7 -> "
        f"{asked['batch_size']}: as trained -> as the profile asks now); these points are of the recipe they "
        "were trained with, and a variant of the new options stands for the profile.", ""]

    (tmp_path / "compute").mkdir()
    (tmp_path / "compute" / "fno_standard_5min_s0.json").write_text(json.dumps(old[1]))

    def never(*args, **kwargs):
        raise AssertionError("a run was trained into a curve of another recipe")

    monkeypatch.setattr(reproduce, "train_run", never)
    with pytest.raises(UserError, match=r"fno: its base curve .* \(batch_size: 7 -> "):
        compute.main(["--models", "fno", "--budgets", "10", "--results", str(tmp_path), "--runs_dir",
                      str(tmp_path / "runs")])


@pytest.mark.parametrize("flags, message", [
    (["--variant", "x", "--train_option", "seed=3"], "seed: set by bench/compute.py"),
    (["--variant", "x", "--train_option", "widht=3"], "widht: not an option of main.py"),
    (["--variant", "x", "--train_option", "ema_decay"], "expected KEY=VALUE"),
    (["--variant", "x"], "give both, or neither"),
    (["--train_option", "ema_decay=0.9"], "give both, or neither"),
    (["--variant", "a/b", "--train_option", "ema_decay=0.9"], "letters, digits"),
    (["--variant", "", "--train_option", "ema_decay=0.9"], "letters, digits"),
    (["--variant", "x", "--train_option", "ema_decay=fast"], "ema_decay=fast: expected a float"),
    (["--variant", "x", "--train_option", "amp=2"], "amp=2: expected one of auto, 0, 1"),
    (["--variant", "x", "--train_option", "lr=-1"], "--lr must be a positive number"),
    (["--num_steps", "0"], "--num_steps must be a positive integer"),
    (["--models", "cno", "--variant", "x", "--train_option", "model_arg=local_path=1"], "cno has no argument"),
])
def test_compute_levers_refuse_bad_options_with_the_flag_named(flags, message):
    import bench.compute as compute

    with pytest.raises(UserError, match=message):
        compute.parse_args(flags)


def test_compute_lever_options_are_typed_by_main_py():
    import bench.compute as compute

    args = compute.parse_args(["--models", "fno", "--variant", "v", "--train_option", "ema_decay=0.99",
                               "--train_option", "parametrization=edm", "--train_option", "model_arg=local_path=1",
                               "--train_option", "model_arg=width=16", "--train_option", "batch_size=32"])
    assert args.options == {"ema_decay": 0.99, "parametrization": "edm",
                            "model_arg": ["local_path=1", "width=16"], "batch_size": 32}


def test_mutation_scores_count_crashes_and_timeouts_as_killed_and_leave_judged_equivalents_out():
    from bench.mutation import read_results, scores

    lines = ["    sde.x_sigma_grid__mutmut_1: killed", "    sde.x_sigma_grid__mutmut_2: survived",
             "    sde.x_sigma_grid__mutmut_3: timeout", "    sde.x_sigma_grid__mutmut_4: segfault",
             "    sde.x_sigma_grid__mutmut_5: survived", "    priors.operators.x_matern__mutmut_1: no tests",
             "header line without a mutant"]
    statuses = read_results(lines)
    assert len(statuses) == 6 and statuses["priors.operators.x_matern__mutmut_1"] == "no tests"
    table = scores(statuses, {"sde.x_sigma_grid__mutmut_5": "a chunk size"})
    assert table["sde"] == {"mutants": 5, "killed": 3, "survived": 1, "equivalent": 1, "score": 0.75}
    assert table["priors.operators"]["score"] == 0.0


def test_a_speed_section_measured_again_replaces_its_old_version_and_keeps_the_others():
    from bench.speed import merge_sections

    old = ("# Speed\n\nCommand: `python bench/speed.py `\nHardware: A\n\n## Score networks\n\nrow a\n\n"
           "## Against the original code (side by side)\n\nNot measured.\n")
    new = ("# Speed\n\nCommand: `python bench/speed.py --only reference`\nHardware: B\n\n"
           "## Against the original code (side by side)\n\n| ratio |\n\n## Riesz MMD\n\n| mmd |\n")
    merged = merge_sections(old, new)
    assert merged == ("# Speed\n\nCommand: `python bench/speed.py `\nHardware: A\n\n## Score networks\n\nrow a\n\n"
                      "## Against the original code (side by side)\n\n(Command: `python bench/speed.py --only "
                      "reference` Hardware: B)\n\n| ratio |\n\n## Riesz MMD\n\n(Command: `python bench/speed.py "
                      "--only reference` Hardware: B)\n\n| mmd |\n")


def test_the_fno_without_film_probe_is_the_network_with_each_film_as_the_identity():
    import models
    from bench.speed import without_film
    torch.manual_seed(0)
    kwargs = dict(width=8, modes=4, n_layers=2)
    model = models.build_model("fno", **kwargs)
    with torch.no_grad():  # FiLM starts as the identity: give it a real effect first
        for layer in model.layers:
            layer.film.proj[1].weight.normal_()
    y, t = torch.randn(3, 1, 12, 12), torch.rand(3)
    conditioned = model(y, t)
    probe = without_film(model)
    with torch.no_grad():
        for layer in probe.layers:
            assert not any(True for _ in layer.film.parameters())
    expected = models.build_model("fno", **kwargs)
    expected.load_state_dict(model.state_dict(), strict=False)
    for layer in expected.layers:  # zero FiLM = identity: the probe's output, computed another way
        torch.nn.init.zeros_(layer.film.proj[1].weight)
    assert torch.allclose(probe(y, t), expected(y, t), atol=1e-6)
    assert not torch.allclose(probe(y, t), conditioned, atol=1e-3)


def test_channels_last_moves_the_convolutions_and_leaves_the_spectral_weights_and_the_output():
    import models
    from bench.speed import to_channels_last
    torch.manual_seed(0)
    model = models.build_model("fno", width=8, modes=4, n_layers=2, local_path=True)  # 3x1 stencils
    y, t = torch.randn(2, 1, 12, 12), torch.rand(2)
    before = model(y, t)
    to_channels_last(model)
    convolutions = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() == 5)
    assert torch.allclose(model(y, t), before, atol=1e-5)


def test_interleaved_times_rotate_the_order_and_take_each_steps_median(monkeypatch):
    import bench.speed as speed
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock) * 1.0)
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = speed.interleaved_times(steps, 3, torch.device("cpu"))
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-ups, then rotated rounds
    assert times == {"a": 1.0, "b": 1.0, "c": 1.0}  # each timed call spans one tick of the fake clock


def test_draws_score_each_sampling_seed_against_one_fixed_test_set(tmp_path, capsys, monkeypatch):
    import statistics

    import bench.draws as draws
    import frechet
    import test as evaluation
    from mmd import riesz_mmd
    from tests.test_main import call as train, tiny_args
    from utils import load_checkpoint

    code, err = train(tiny_args(tmp_path, "--n_epochs", "1"), capsys)
    assert code == 0, err
    path = str(tmp_path / "runs" / "run" / "last.pt")
    output = tmp_path / "draws.md"
    calls = []  # the sampling protocol of every draw: a tiny model's samples may saturate and hide it
    original = sde.generate

    def recording(*args, **kwargs):
        names = ("model", "prior", "num_samples", "n0", "upscale", "mode", "seed", "batch_size", "num_steps")
        bound = {**dict(zip(names, args)), **kwargs}
        calls.append({k: bound.get(k) for k in ("mode", "seed", "num_steps", "sampler", "tweedie", "resolution")})
        return original(*args, **kwargs)

    monkeypatch.setattr(sde, "generate", recording)
    draws.main(["--checkpoints", path, "--seeds", "1", "5", "--ref_seed", "1", "--num_samples", "8",
                "--output", str(output), "--progress", "0"])
    records = json.loads(output.with_suffix(".json").read_text())["results"]
    assert [(r["run"], r["seed"]) for r in records] == [("unet / standard (run)", 1), ("unet / standard (run)", 5),
                                                         (draws.REAL, 1), (draws.REAL, 5)]
    # seed 1 against references of seed 1: exactly what test.py --seed 1 reports (sampler, last step, scores)
    evaluation.main(["--save_model", path, "--upscale", "2", "--sample_mode", "resample", "--resample_noise", "n0",
                     "--seed", "1", "--num_samples_mmd", "8", "--data_root", str(tmp_path / "mnist"),
                     "--progress", "0", "--results_dir", str(tmp_path / "eval")])
    reported = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    drawn, evaluated = calls[0], calls[-1]
    assert drawn["seed"] == evaluated["seed"] == 1 and evaluated["mode"] == "native"
    assert (drawn["sampler"], drawn["num_steps"], bool(drawn["tweedie"])) == \
        (evaluated["sampler"], evaluated["num_steps"], bool(evaluated["tweedie"]))
    assert evaluated["resolution"] in (None, 28) and drawn.get("resolution") in (None, 28)
    assert records[0]["mmd_28"] == pytest.approx(reported[0]["mmd"], rel=1e-6)
    assert records[0]["mmd_56_resample"] == pytest.approx(reported[1]["mmd"], rel=1e-6)
    assert records[0]["fd_28"] == pytest.approx(reported[0]["fd"], rel=1e-5)
    # seed 5 is another draw scored against the same test images; the real digits are drawn by their seed
    assert records[0]["mmd_28"] != records[1]["mmd_28"]
    refs = evaluation.References(str(tmp_path / "mnist"), 28, 1)
    test_low = refs.images("test", 8, 56)[0]
    real = evaluation.References(str(tmp_path / "mnist"), 28, 5).images("train", 8, 28)[0]
    assert records[3]["mmd_28"] == pytest.approx(riesz_mmd(real, test_low), rel=1e-6)
    critic, _ = evaluation.load_critic(None)
    fd = frechet.frechet_distance(frechet.apply(critic, real)[0], frechet.apply(critic, test_low)[0])
    assert records[3]["fd_28"] == pytest.approx(fd, rel=1e-5)
    assert load_checkpoint(path)["model_name"] == "unet"
    values = [r["mmd_28"] for r in records[:2]]
    cell = (f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f} "
            f"[{min(values):.4f}, {max(values):.4f}]")
    table = output.read_text()
    sampler, steps = sde.AUTO_SAMPLERS["unet"]
    assert f"| unet / standard (run) | {sampler} {steps} | 8 | 1 5 | {cell} |" in table
    assert output.with_suffix(".png").exists()


def test_draws_spread_is_the_sample_sd_and_one_seed_is_refused():
    import bench.draws as draws
    assert draws.spread([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(1.5275252), 1.0, 4.0)
    with pytest.raises(UserError, match="--seeds"):
        draws.parse_args(["--checkpoints", "x.pt", "--seeds", "2", "2"])


def test_multilevel_study_trains_each_recipe_scores_it_at_28_and_skips_finished_runs(tmp_path, monkeypatch):
    import bench.multilevel as multilevel
    import reproduce
    from tests.test_reproduce import TINY_PROFILE, _fast_eval_parser

    monkeypatch.setitem(reproduce.PROFILES, "cpu", TINY_PROFILE)
    monkeypatch.setattr(multilevel.evaluation, "build_parser", _fast_eval_parser(multilevel.evaluation.build_parser))
    argv = ["--models", "fno", "--runs", "28:0.004", "14:0.004", "14-28_50:0.004", "--runs_dir", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--data_root", str(tmp_path / "mnist"), "--num_samples", "8",
            "--band_samples", "4"]
    multilevel.main(argv)
    records = {r["recipe"]: r for r in multilevel.load_records(multilevel.parse_args(argv))}
    assert set(records) == {"28", "14", "14-28_50"}
    fine, coarse, both = records["28"], records["14"], records["14-28_50"]
    assert [row["resolution"] for row in fine["results"]] == [28] and fine["bands"] and coarse["bands"] is None
    assert [(row["resolution"], row["mode"]) for row in coarse["results"]] == [
        (14, "n0"), (28, "resample-fourier"), (28, "native-bl"), (28, "native"), (28, "native (pixel conditioning)")]
    at_28 = multilevel.at_fine(coarse, "native-bl")
    assert at_28["n"] == 8 and "oracle_fourier" in at_28 and "confident" in at_28 and "fd" in at_28
    assert {"detail", "detail_real", "oracle_detail", "oracle_fd"} <= set(at_28)
    assert [level["grid"] for level in both["levels"]] == [14, 28] and both["train_config"]["levels"] == "14:0.5,28:0.5"
    assert all(0 < band["low"] and 0 < band["high"] for band in both["bands"]) and len(both["bands"]) == 5
    assert coarse["train_config"]["input_height"] == 14 and both["train_config"]["minutes"] == 0.004
    report = (tmp_path / "results" / "multilevel.md").read_text()
    assert "| fno | 14-28_50 | 0.004 |" in report and "interpolation floor (real 14 -> 28)" in report
    oracle_row = next(line for line in report.splitlines() if line.startswith("| fno | interpolation floor"))
    assert f"{at_28['oracle_fd']:.1f} ({at_28['fd_floor']:.1f})" in oracle_row
    assert f"{at_28['oracle_detail']:.2%} ({at_28['detail_real']:.2%})" in oracle_row
    assert f"| {at_28['detail']:.2%} ({at_28['detail_real']:.2%}) |" in report
    assert "## Where the denoiser errs at 28" in report
    assert "## Minutes against the 28-only curve" in report and "| fno | 14-28_50 | 0.004 |" in report.split(
        "## Minutes against")[1]
    for name in ("multilevel.png", "multilevel_loss.png", "multilevel_samples_fno.png"):
        assert (tmp_path / "results" / name).exists()
    monkeypatch.setattr(multilevel, "run_one", lambda *a: pytest.fail("a finished run was trained again"))
    multilevel.main(argv)


def test_multilevel_minutes_for_an_fd_interpolate_the_fine_only_curve_log_log():
    import bench.multilevel as multilevel

    curve = [(10.0, 100.0), (20.0, 50.0), (40.0, 40.0)]
    assert multilevel.minutes_for_fd(curve, 50.0) == pytest.approx(20.0)
    assert multilevel.minutes_for_fd(curve, 100 / 2 ** 0.5) == pytest.approx(10 * 2 ** 0.5)  # halfway in logs
    assert multilevel.minutes_for_fd(curve, 120.0) is None and multilevel.minutes_for_fd(curve, 30.0) is None
    assert multilevel.minutes_cells(curve, 50.0, 10) == ("20.0", "50%")
    # better than the longest 28-only run: more than its 40 minutes, so 10 minutes are under 25% of them
    assert multilevel.minutes_cells(curve, 30.0, 10) == ("more than 40 (10 min: FD 100.0, 20 min: FD 50.0, "
                                                         "40 min: FD 40.0)", "< 25%")
    assert multilevel.minutes_cells(curve, 120.0, 10)[1] == "-" and multilevel.minutes_cells([], 50.0, 10) == ("-", "-")
    assert multilevel.minutes_cells([(10.0, 100.0)], 60.0, 5) == ("more than 10 (10 min: FD 100.0)", "< 50%")


@pytest.mark.parametrize("flags,message", [
    (["--runs", "15-28:10"], "--runs"), (["--runs", "28:0"], "--runs"), (["--runs", "28"], "--runs"),
    (["--variant", "x", "--train_option", "levels=14:0.5,28:0.5"], "--train_option levels"),
    (["--variant", "x"], "--variant"), (["--num_samples", "3"], "--num_samples")])
def test_multilevel_refuses_bad_plans_in_one_line(flags, message):
    import bench.multilevel as multilevel

    with pytest.raises(UserError, match=message):
        multilevel.parse_args(flags)


def test_band_errors_split_the_denoisers_error_at_the_14_grids_band():
    """A 'denoiser' that returns the clean images but for one added mode: all of its error is in that
    mode's band, as a share of the images' energy there."""
    import bench.multilevel as multilevel
    from priors import build_prior

    images = torch.rand(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = (torch.arange(28, dtype=torch.float64) + 0.5) / 28
    for k, band in ((3, "low"), (10, "high")):
        wave = 0.1 * torch.cos(2 * math.pi * k * x)[None, None, :, None].expand(1, 1, 28, 28)

        class Off(torch.nn.Module):
            def forward(self, y, t):  # a of the denoiser x0 + wave: g (m D - y) / s^2
                m, s, g = (v.reshape(-1, 1, 1, 1) for v in (sde.mean_coef(t), sde.noise_std(t), sde.beta(t).sqrt()))
                return g * (m * (images + wave) - y) / s**2

        rows = multilevel.band_errors(Off(), build_prior("standard", 28), images, times=(0.1,))
        spectrum = torch.fft.fft2(images).abs().pow(2)
        modes = torch.fft.fftfreq(28, 1 / 28).round().abs()
        low = (modes[:, None] <= 7) & (modes[None, :] <= 7)
        mask = low if band == "low" else ~low
        expected = 3 * torch.fft.fft2(wave).abs().pow(2).sum() / spectrum[..., mask].sum()
        assert rows[0][band] == pytest.approx(expected.item(), rel=1e-6)
        assert rows[0]["high" if band == "low" else "low"] < 1e-12


def test_microstructure_study_trains_at_32_and_scores_every_grid_in_every_mode(tmp_path, monkeypatch):
    import bench.microstructure as study
    import reproduce
    from tests.test_reproduce import TINY_PROFILE, _fast_eval_parser

    monkeypatch.setitem(reproduce.PROFILES, "cpu", TINY_PROFILE)
    monkeypatch.setattr(study.evaluation, "build_parser", _fast_eval_parser(study.evaluation.build_parser))
    small = ["--dataset_option", "band=4", "--dataset_option", "ell=0.15", "--dataset_option", "fine=128",
             "--dataset_option", "train_count=80", "--dataset_option", "test_count=24"]
    argv = ["--models", "fno", "--priors", "standard", "--minutes", "0.004", "--runs_dir", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--data_root", str(tmp_path / "data"), "--num_samples", "8",
            "--native_samples", "6", "--fine_samples", "7", *small]
    study.main(argv)
    records = {r["recipe"]: r for r in study.load_records(study.parse_args(argv))}
    assert set(records) == {"32", "32-64"}
    assert [(row["resolution"], row["mode"]) for row in records["32"]["results"]] == [
        (32, "n0"), (64, "resample-fourier"), (64, "native-bl"), (64, "native"),
        (128, "resample-fourier"), (128, "native-bl"), (128, "native")]
    assert [row["resolution"] for row in records["32-64"]["results"]] == [64, 128, 128, 128]
    assert [level["grid"] for level in records["32-64"]["levels"]] == [32, 64]
    assert [row["n"] for row in records["32"]["results"]] == [8, 8, 8, 6, 7, 7, 6]  # the finest grid at 7
    assert [row["n"] for row in records["32-64"]["results"]] == [8, 7, 7, 6]
    native_128 = records["32"]["results"][-1]
    assert native_128["interface_true"] > 0 and "s2_error" in native_128
    report = (tmp_path / "results" / "microstructure.md").read_text()
    assert "| fno | standard | 32 | 128 | native-bl | 7 |" in report and "Continuum values" in report
    assert "Fourier-interpolated to 128 (n = 7)" in report and "from 64: sharpness" in report
    assert (tmp_path / "results" / "microstructure.png").exists()
    assert (tmp_path / "results" / "microstructure_samples_fno.png").exists()


@pytest.mark.parametrize("study,folder", [("multilevel", "multilevel"), ("microstructure", "microstructure")])
@pytest.mark.parametrize("text", ['{"model": "fno"}', "[]", "", '{"model": "fno", "recipe": "28", "results": 3}'])
def test_a_study_refuses_a_damaged_record_in_one_line_naming_it(tmp_path, study, folder, text):
    import importlib

    module = importlib.import_module(f"bench.{study}")
    records = tmp_path / "results" / folder
    records.mkdir(parents=True)
    (records / "damaged.json").write_text(text)
    with pytest.raises(UserError, match="damaged.json"):
        module.main(["--summary_only", "--results", str(tmp_path / "results")])


def test_the_flop_count_of_a_step_is_two_m_k_n_per_matmul_and_counts_the_backward():
    from bench.speed import step_flops

    a = torch.randn(64, 32, requires_grad=True)
    b = torch.randn(32, 16)
    assert step_flops(lambda: a @ b) == 2 * 64 * 32 * 16
    # backward of a @ b with respect to a: grad (64 x 16) @ b^T (16 x 32), another 2 m k n
    assert step_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 64 * 32 * 16)


def test_the_fft_share_of_a_step_is_near_one_for_ffts_alone_and_zero_without_them():
    from bench.speed import fft_share

    v = torch.randn(64, 8, 64, 64)
    assert fft_share(lambda: torch.fft.rfft2(v)) > 0.5
    w = torch.randn(256, 256)
    assert fft_share(lambda: w @ w) == 0.0


def test_the_microstructure_reading_ranks_modes_by_their_distance_to_true_sharpness_and_high_band_power():
    from bench.microstructure import closeness_lines

    def row(mode, sharpness, high_band, resolution=128):
        return {"resolution": resolution, "mode": mode, "sharpness": sharpness, "sharpness_true": 1.4,
                "high_band": high_band, "high_band_true": 0.08, "mmd": 0.02, "floor_real": 0.01}

    record = {"model": "fno", "prior": "standard", "recipe": "32",
              "results": [row("n0", 1.4, 0.0, resolution=32), row("resample-fourier", 7.0, 0.01),
                          row("native-bl", 2.8, 0.04), row("native", 1.4, 0.16)]}
    lines = closeness_lines([record])
    body = [line for line in lines if line.startswith("| fno")]
    # distances: resample (4.0 + 0.875) / 2 = 2.4375, native-bl (1 + 0.5) / 2 = 0.75, native (0 + 1) / 2 = 0.5
    assert [line.split(" | ")[3] for line in body] == ["native", "native-bl", "resample-fourier"]
    assert "| 0.500 | 4.88x |" in body[0] and "| 0.750 | 3.25x |" in body[1] and "| 2.438 | 1.00x |" in body[2]
    assert closeness_lines([{**record, "results": record["results"][:1]}]) == []
    binary = closeness_lines([{**record, "results": [row("native", 0.3, 0.1) | {"sharpness_true": 0.0}]}])
    assert "| inf | - |" in binary[-1]


def test_a_reference_folder_without_the_files_or_with_garbage_is_refused_by_name(tmp_path):
    from bench.speed import load_reference
    with pytest.raises(UserError, match=r"--reference .*: no fno.py there"):
        load_reference(str(tmp_path))
    (tmp_path / "fno.py").write_bytes(b"\x00\x01garbage(")
    with pytest.raises(UserError, match=r"--reference .*: fno.py could not be imported"):
        load_reference(str(tmp_path))
