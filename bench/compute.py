"""Quality against compute: each network trained for a wall-clock budget, scored at n = 1000.

    python bench/compute.py --data_root ~/mnist --budgets 5 10 20 40 80 --commit

For every network and budget B (minutes of training on this machine), main.py trains the CPU
profile's size of the network with `--minutes B` (the run stops at the budget with a validated
checkpoint, and the cosine learning-rate schedule spans the budget), seed 0, the `standard`
prior, full MNIST. Each run is then scored by test.py at n0 = 28 and at 56 (resample mode, the
n0 samples interpolated) at n = --num_samples against MNIST test, with the Frechet distance,
and its record is written to results/compute/NAME.json. results/compute.md (one row per run,
floors at the same n) and results/compute.png (MMD and FD at 28 against minutes, log-log, a line per
network, the real-vs-real floor as a band) are rebuilt after every run. Finished runs are
skipped, interrupted ones resume (reproduce.py's machinery). A budget is wall-clock time, so
it depends on the machine: every record names its host and the steps it reached.

Levers: `--variant NAME --train_option KEY=VALUE ...` trains the same budgets with main.py's
options changed (e.g. `--variant edm --train_option parametrization=edm`, `--variant local
--train_option model_arg=local_path=1`); such runs are recorded beside the base runs
(NAME in the record's file name) and compute.md gains a lever table, each variant against the
base recipe of the same network and budget on its own machine where there is such a run (a
budget in minutes is steps on one machine): `--variant rerun --train_option ema_decay=0.999`
restates the base options, and levers run beside it are paired with it. Base runs trained before
the profile changed are named in compute.md, and their curve is not extended with the new recipe.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main as training  # noqa: E402
import reproduce  # noqa: E402
import sde  # noqa: E402
from utils import UserError, read_json, run_main, versions, write_text  # noqa: E402


BASE = "base"
# the base curves of every network, as results/compute.md names them (data root: the user's)
BASE_COMMAND = "python bench/compute.py --data_root ../shared/data"
# what every run of the curves shares, set by this script and not by --train_option
FIXED_OPTIONS = {"model", "seed", "minutes", "n_epochs", "prior_name", "data_root", "out_dir", "save_model",
                 "resume", "device", "progress", "val_every", "subset", "train_limit", "input_height"}


def parse_train_options(pairs):
    """--train_option KEY=VALUE ... -> {KEY: value}, typed and checked as main.py types and checks
    its flags (model_arg=K=V is repeatable and replaces the profile's list)."""
    actions = {action.dest: action for action in training.build_parser()._actions}
    options = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--train_option {pair!r}: expected KEY=VALUE, e.g. parametrization=edm")
        if key in FIXED_OPTIONS:
            raise UserError(f"--train_option {key}: set by bench/compute.py itself (budget, seed, prior, "
                            f"data); choose among the other options of `python main.py --help`")
        if key not in training.TrainConfig.__dataclass_fields__:
            raise UserError(f"--train_option {key}: not an option of main.py (see python main.py --help)")
        action = actions[key]
        try:
            value = action.type(text) if action.type else text
        except ValueError:
            raise UserError(f"--train_option {key}={text}: expected a {action.type.__name__}") from None
        if action.choices and value not in action.choices:
            raise UserError(f"--train_option {key}={text}: expected one of {', '.join(map(str, action.choices))}")
        if isinstance(action, argparse._AppendAction):
            value = options.get(key, []) + [value]
        options[key] = value
    return options


def check_same_variant(args, model, out, run_folder):
    """A variant name stands for one set of options: refuse a finished record or a checkpoint of the
    same name trained with others (a resumed run would keep its saved options)."""
    saved = None
    if os.path.exists(out):
        saved = read_json(out, "record").get("train_options", {})
    elif os.path.exists(os.path.join(run_folder, "config.json")):
        config = json.load(open(os.path.join(run_folder, "config.json")))["config"]
        saved = {key: config.get(key) for key in args.options}
    if saved is not None and saved != args.options:
        raise UserError(f"--variant {args.variant}: {model} has a run of that name with options {saved}, not "
                        f"{args.options}; give the new options another --variant name")


def settings_for(args, budget):
    """reproduce.py's settings for one budget: the CPU profile's sizes, a time budget, this sampler,
    the variant's options."""
    cpu = reproduce.PROFILES["cpu"]
    train = {**cpu["train"], "lr_schedule": args.lr_schedule, "warmup_steps": args.warmup_steps,
             "val_every": 0, "sampler": "auto"}  # the final validation with 25 evaluations, not 200
    models = {name: {**cpu["models"][name], "n_epochs": 10**6, "minutes": float(budget), **args.options}
              for name in args.models}
    evaluation = {"num_samples_mmd": args.num_samples, "num_samples_native": args.num_samples,
                  "resample_noise": "n0", "native_seeds": [], "sampler": args.sampler, "num_steps": args.num_steps,
                  "sample_modes": args.sample_modes}
    return {"train": train, "models": models, "eval": evaluation}


def variant_suffix(args):
    return "" if args.variant == BASE else f"_{args.variant}"


def record_path(args, model, budget):
    name = f"{model}_{args.prior}_{budget:g}min_s{args.seed}{variant_suffix(args)}.json"
    return os.path.join(args.results, "compute", name)


def load_records(args):
    folder = os.path.join(args.results, "compute")
    if not os.path.isdir(folder):
        return []
    return [read_json(os.path.join(folder, f), "record") for f in sorted(os.listdir(folder)) if f.endswith(".json")]


def row(record):
    low = reproduce.column(record, "n0")
    res = reproduce.column(record, "resample") or {}
    return {"model": record["model"], "variant": record.get("variant", BASE),
            "options": record.get("train_options", {}), "sampler": sampler_of(record),
            "minutes": record["budget_minutes"], "steps": record["steps"],
            "mmd_28": low["mmd"], "floor_28": low["floor_real"], "mmd_56": res.get("mmd"),
            "floor_56": res.get("floor_real"), "fd_28": low.get("fd"), "fd_floor": low.get("fd_floor"),
            "n": low["n"], "host": reproduce.hardware(record), "note": record.get("note"),
            **{key: low.get(key) for key in reproduce.CLASSIFIER_FIGURES},
            **{f"{key}_floor": low.get(f"{key}_floor") for key in reproduce.CLASSIFIER_FIGURES},
            "recipe": recipe(record), "load": record.get("max_load_1min")}


# options that do not change what a run trains: this machine's, the budget, the validation sampling
NOT_RECIPE = {*training.FRESH_ON_RESUME, "data_root", "save_model", "minutes", "n_epochs", "model_arg",
              *reproduce.VALIDATION_OPTIONS}


def recipe(record):
    """What a record's run trained: its main.py options (main.py's defaults for those it predates)
    less NOT_RECIPE, and the network's resolved arguments (model_arg as the network read it)."""
    options = {**dataclasses.asdict(training.TrainConfig(model=record["model"])), **training.LEGACY_DEFAULTS,
               **record.get("train_config", {})}
    if options["amp"] != "auto":  # the flag was an integer before 'auto': 0 and "0" are one recipe
        options["amp"] = str(int(options["amp"]))
    return {**{k: v for k, v in options.items() if k not in NOT_RECIPE}, "model_kwargs": record.get("model_kwargs")}


# what the profile asks of a run that this script sets itself (the budget, the validation) or that
# the record holds as model_kwargs instead
NOT_PROFILE = (NOT_RECIPE - {"model_arg"}) | FIXED_OPTIONS


def profile_drift(record):
    """{option: (trained, asked now)} where a base run's options differ from what reproduce.py's cpu
    profile asks of its network today: the profile changed after the run (e.g. the FNO's batch 64
    -> 32), so the run is of the recipe it was trained with, not of the profile's."""
    changes = reproduce.record_changes(record, reproduce.PROFILES["cpu"])
    return {key: change for key, change in changes.items() if key not in NOT_PROFILE}


def drift_lines(records):
    """One line per network whose base runs the profile has moved away from (profile_drift)."""
    drifted = {}
    for r in records:
        if r.get("variant", BASE) == BASE and (changes := profile_drift(r)):
            key = (r["model"], reproduce.describe_changes(changes))
            drifted.setdefault(key, []).append(r["budget_minutes"])
    return [line for (model, changes), budgets in sorted(drifted.items())
            for line in (f"{model} base ({', '.join(f'{b:g}' for b in sorted(budgets))} min): trained before reproduce.py's cpu profile "
                         f"changed ({changes}: as trained -> as the profile asks now); these points are of the "
                         f"recipe they were trained with, and a variant of the new options stands for the "
                         f"profile.", "")]


def refuse_mixed_curve(args, model, records):
    """A new base budget would join the profile's recipe of today to base runs of an older one in one
    curve: refuse, naming what changed and the two ways on."""
    drifted = [r for r in records if r["model"] == model and r.get("variant", BASE) == BASE and profile_drift(r)]
    if drifted:
        changes = reproduce.describe_changes(profile_drift(drifted[0]))
        raise UserError(f"{model}: its base curve under {os.path.join(args.results, 'compute')} was trained "
                        f"before the cpu profile changed ({changes}), so a new base budget would mix two "
                        f"recipes in one line; run the new options as a lever (--variant NAME --train_option "
                        f"KEY=VALUE) or move the old base records aside first")


def sampler_of(record):
    """'heun 13 (25 NFE)': the sampler the record's evaluation ran (auto resolved)."""
    low = reproduce.column(record, "n0") or {}
    evaluations = f" ({low['score_evaluations']} NFE)" if "score_evaluations" in low else ""
    return record.get("sampler", "-") + evaluations


def resolved_sampler(args, model):
    """'heun 13': what test.py runs for this network with --sampler/--num_steps (auto resolved)."""
    return "{} {}".format(*sde.resolve_sampler(args.sampler, args.num_steps, model))


def fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def restates_base(r, base):
    """A variant that trained the base run's recipe (e.g. `--variant rerun --train_option
    ema_decay=0.999`, the default restated): the base recipe run again, on whatever machine it ran."""
    return r["variant"] != BASE and r["recipe"] == base["recipe"]


def paired_base(r, rows):
    """The run of the base recipe that a variant is measured against, at its network and budget: on
    the variant's own machine where there is one (a budget in minutes buys different steps on
    different machines), the base run first, then a restatement of it (see restates_base; by
    variant name), never one restatement against another; else the base run on another machine.
    None: the network has no base run, or none at that budget and none of its recipe on the machine."""
    bases = [b for b in rows if b["variant"] == BASE and b["model"] == r["model"]]
    if not bases:
        return None
    r_restates = restates_base(r, bases[0])
    same_host = [b for b in rows if b is not r and b["host"] == r["host"] and (b["model"], b["minutes"]) ==
                 (r["model"], r["minutes"]) and (b["variant"] == BASE or (restates_base(b, bases[0]) and not r_restates))]
    if same_host:
        return min(same_host, key=lambda b: (b["variant"] != BASE, b["variant"]))
    return next((b for b in bases if b["minutes"] == r["minutes"]), None)


def lever_lines(rows):
    """Each variant against the base recipe of its network and budget (paired_base): before -> after."""
    lines = []
    for r in rows:
        before = paired_base(r, rows) if r["variant"] != BASE else None
        if before is None:
            continue
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        machine = "same machine" if before["host"] == r["host"] else f"other machine, {machine_tag(before['host'])}"
        lines.append(f"| {r['model']} | {r['minutes']:g} | {r['variant']} ({options}) | "
                     f"{fmt(before['mmd_28'])} -> {fmt(r['mmd_28'])} | {fmt(before['mmd_56'])} -> {fmt(r['mmd_56'])} | "
                     f"{fmt(before['fd_28'], 1)} -> {fmt(r['fd_28'], 1)} | {before['steps']} -> {r['steps']} | "
                     f"{before['sampler']} / {r['sampler']} | {r['n']} | {before['variant']}, {machine} |")
    if not lines:
        return []
    return ["", "## Levers", "",
            "Each variant against the base recipe of the same network and budget (seed, prior, data and "
            "evaluation as above): before -> variant. A budget in minutes buys a machine's own number of "
            "steps, so the before run is one on the variant's machine where there is one: the base run or "
            "a variant that restates the base options (e.g. `rerun`); the last column names it.", "",
            "| model | budget min | lever (options) | MMD 28 | MMD 56 resample | FD 28 | steps | sampler | n "
            "| against |",
            "|---|---|---|---|---|---|---|---|---|---|", *lines]


def note_lines(rows):
    """A record's note (e.g. why a run made as a lever counts as a base run), once per network."""
    notes = {}
    for r in rows:
        if r["note"]:
            notes.setdefault((r["model"], r["note"]), []).append(f"{r['minutes']:g}")
    return [line for (model, note), budgets in sorted(notes.items())
            for line in (f"{model} ({', '.join(budgets)} min): {note}.", "")]


def machine_tag(host):
    """A short name for a host that does not change as records are added (a digest of its string)."""
    return "m" + hashlib.sha1(host.encode()).hexdigest()[:4]


def hardware_line(hosts):
    """The machines behind the table, under the tags its machine column gives them (machine_tag)."""
    if not hosts:
        return "No run has finished yet."
    machines = "; ".join(f"{machine_tag(host)}: {host}" for host in sorted(hosts, key=machine_tag))
    return (f"Hardware (the machine column): {machines}. A machine is what a record names: the platform "
            "string (kernel build) of the run's last training epoch, so two VMs of one build share a tag. "
            "Max load: the highest 1-minute load average in training ('-': not logged); above the torch "
            f"threads + {reproduce.SHARED_LOAD_MARGIN:g} the run shared the CPU, and its steps are not its "
            "machine's.")


def write_report(args, records, command):
    rows = sorted((row(r) for r in records), key=lambda r: (r["model"], r["minutes"]))
    commands = sorted({r.get("command", "(a run whose command was not recorded)") for r in records},
                      key=lambda c: ("--variant" in c, c))
    lines = ["# Quality against compute", "", "Made by", "", f"    {BASE_COMMAND}", "",
             "(resumable: a budget whose record exists is skipped; a lever is `--variant NAME --train_option "
             "KEY=VALUE`). Each record in `compute/` keeps the command that made it; these were run:", "",
             *[f"    {c}" for c in commands or [command]], "",
             *note_lines(rows), *drift_lines(records),
             f"Each network at the CPU profile's size, seed {args.seed}, prior `{args.prior}`, full MNIST, "
             f"trained for the budget (`main.py --minutes B`; the learning-rate schedule and warm-up as the "
             f"command says, a cosine schedule ends at the budget), scored by test.py with the row's sampler "
             f"(NFE: score evaluations per sample) at n = {args.num_samples} against MNIST test; 56 = the 28 "
             f"samples Fourier-interpolated (resample). Floors: real train vs real test at the same n. "
             f"torch {versions()['torch']}.", ""]
    lines += [hardware_line({r["host"] for r in rows}), "",
              "| model | variant | budget min | machine | steps | sampler | MMD 28 | floor 28 | MMD 56 resample "
              "| floor 56 | FD 28 | FD floor | confident (floor) | precision / recall (floor) | Vendi (floor) | max load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['minutes']:g} | {machine_tag(r['host'])} | {r['steps']} | "
                     f"{r['sampler']} | "
                     f"{fmt(r['mmd_28'])} | {fmt(r['floor_28'])} | {fmt(r['mmd_56'])} | {fmt(r['floor_56'])} | "
                     f"{fmt(r['fd_28'], 1)} | {fmt(r['fd_floor'], 1)} | "
                     f"{fmt(r['confident'], 3)} ({fmt(r['confident_floor'], 3)}) | {fmt(r['precision'], 3)} / "
                     f"{fmt(r['recall'], 3)} ({fmt(r['precision_floor'], 3)} / {fmt(r['recall_floor'], 3)}) | "
                     f"{fmt(r['vendi'], 2)} ({fmt(r['vendi_floor'], 2)}) | {fmt(r['load'], 2)} |")
    lines += lever_lines(rows)
    os.makedirs(args.results, exist_ok=True)
    write_text("\n".join(lines) + "\n", os.path.join(args.results, "compute.md"))
    if rows:
        draw(rows, os.path.join(args.results, "compute.png"))


def draw(rows, path):
    """MMD and Frechet distance at 28 against training minutes, log-log, one line per network
    (variants dashed), the real-vs-real floor as a band: near the floor the MMD at n = 1,000 stops
    ranking models and the FD still does."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    budgets = sorted({r["minutes"] for r in rows})
    for ax, key, floor_key, label in ((axes[0], "mmd_28", "floor_28", "MMD at 28"),
                                      (axes[1], "fd_28", "fd_floor", "Frechet distance at 28")):
        for model, variant in sorted({(r["model"], r["variant"]) for r in rows}):
            points = sorted((r["minutes"], r[key]) for r in rows
                            if (r["model"], r["variant"]) == (model, variant) and r[key] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if variant == BASE else "--",
                        label=model if variant == BASE else f"{model} ({variant})")
        floors = [r[floor_key] for r in rows if r[floor_key] is not None]
        if floors:
            low, high = min(floors), max(floors)
            ax.axhspan(low, high if high > low else low * 1.02, color="gray", alpha=0.3,
                       label=f"real vs real (n = {rows[0]['n']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=reproduce.MODELS, choices=reproduce.MODELS)
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 40, 80],
                        help="training budgets in minutes")
    parser.add_argument("--prior", default="standard", choices=reproduce.FULL_PRIORS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr_schedule", default="cosine", choices=["constant", "cosine"])
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--sampler", default="auto", choices=["auto", *sde.SAMPLERS],
                        help="test.py's sampler (auto: the network's measured default, sde.AUTO_SAMPLERS)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="sampler steps (default: auto's for the network, else 200)")
    parser.add_argument("--sample_modes", nargs="+", default=["resample"], choices=["resample", "native-bl"],
                        help="56-grid modes scored beside 28 (native-bl doubles the evaluation's cost)")
    parser.add_argument("--variant", default=BASE,
                        help=f"name of the lever tried ('{BASE}': the profile as it is); needs --train_option")
    parser.add_argument("--train_option", action="append", metavar="KEY=VALUE",
                        help="a main.py option of this variant, repeatable: e.g. parametrization=edm, "
                             "ema_decay=0.99, model_arg=local_path=1 (model_arg replaces the profile's "
                             "list: repeat the profile's own entries, e.g. the UNet's ch=16)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--data_root", default="./data")
    parser.add_argument("--runs_dir", default="runs/compute", help="checkpoints (not committed)")
    parser.add_argument("--results", default="results", help="records in RESULTS/compute, compute.md and .png")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--commit", action="store_true", help="git-commit the results after each run")
    parser.add_argument("--progress", type=int, default=0, choices=[0, 1])
    parser.add_argument("--summary_only", action="store_true")
    args = parser.parse_args(argv)
    if args.num_steps is not None and args.num_steps <= 0:
        raise UserError(f"--num_steps must be a positive integer, got {args.num_steps}")
    if not args.variant or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in args.variant):
        raise UserError(f"--variant {args.variant!r}: letters, digits, '-', '_' and '.' only (it names files)")
    args.options = parse_train_options(args.train_option)
    for model in args.models:  # ranges (lr > 0) and model_arg names, as main.py checks them
        training.validate(training.TrainConfig(model=model, **args.options))
    if (args.variant == BASE) != (not args.options):
        raise UserError(f"--variant names the lever that --train_option sets: give both, or neither for "
                        f"the base runs (got --variant {args.variant} and {len(args.options)} options)")
    return args


def main(argv=None):
    args = parse_args(argv)
    args.profile, args.native_seeds = "cpu", []  # what reproduce.py's run functions read
    command = "python bench/compute.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if any(b <= 0 for b in args.budgets):
        raise UserError(f"--budgets must be positive minutes, got {args.budgets}")
    os.makedirs(os.path.join(args.results, "compute"), exist_ok=True)
    if not args.summary_only:
        for budget in sorted(args.budgets):  # budget-major: every network has its short runs early
            settings = settings_for(args, budget)
            folder = os.path.join(args.runs_dir, f"{budget:g}min{variant_suffix(args)}")
            for model in args.models:
                out = record_path(args, model, budget)
                if args.variant == BASE and not os.path.exists(out):
                    refuse_mixed_curve(args, model, load_records(args))
                check_same_variant(args, model, out, os.path.join(folder, reproduce.run_name(model, args.prior,
                                                                                            args.seed)))
                if os.path.exists(out):
                    continue
                os.makedirs(folder, exist_ok=True)
                reproduce.train_run(args, settings, model, args.prior, args.seed, folder)
                reproduce.evaluate_run(args, settings, model, args.prior, args.seed, folder, out, extra={
                    "budget_minutes": budget, "variant": args.variant, "train_options": args.options,
                    "sampler": resolved_sampler(args, model), "command": command})
                write_report(args, load_records(args), command)
                if args.commit:
                    reproduce.commit_results(args, f"results (compute): {model} {budget:g} min")
    records = load_records(args)
    write_report(args, records, command)
    if records:
        by_model = {m: [r for r in map(row, records) if r["model"] == m] for m in args.models}
        for model, rows in by_model.items():
            if rows:
                best = min(rows, key=lambda r: r["mmd_28"])
                print(f"{model}: best MMD 28 {best['mmd_28']:.4f} at {best['minutes']:g} min "
                      f"(median floor {statistics.median(r['floor_28'] for r in rows):.4f})")
    print(f"written {os.path.join(args.results, 'compute.md')}")


if __name__ == "__main__":
    run_main(main, "interrupted; finished runs are kept: run the same command again to go on")
