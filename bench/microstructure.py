"""The microstructure study: do the networks trained at 32 make detail on the 64 and 128 grids?

    python bench/microstructure.py --data_root ../shared/data --commit

For every network (the CPU profile's size and recipe, seed 0) and prior (`standard` and the smoother,
trace-class `matern`), main.py trains on the generated microstructures (`--dataset microstructure`, the
default law: tau 0, ell 0.06, band 12) at 32 for --minutes; test.py then samples at 32, 64 and 128 in
the three modes (`resample`, `native-bl`, raw `native`) and scores every grid against true samples of
the same grid: MMD with its true-vs-true floor, volume fraction, S2 error, interface length per area,
sharpness N mean(u (1 - u)) and the share of power above the training grid's band, beside the continuum
values (microstructure.py). One more row per network: 32 -> 64 (`--levels 32:0.75,64:0.25`, the
final grid 64), for what real fine data buy.

Records: results/microstructure/NAME.json; then results/microstructure.md, results/microstructure.png
(the radially averaged power spectra at 128: true, and each mode of each network) and
results/microstructure_samples_MODEL.png (the same seeds at 128: true | resample | native-bl | native).
Finished runs are skipped, interrupted ones resume.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reproduce  # noqa: E402
import test as evaluation  # noqa: E402
from bench.compute import machine_tag  # noqa: E402
from bench.report import add_study_flags, read_records  # noqa: E402
from utils import (UserError, load_checkpoint, run_main, save_grid, save_side_by_side, versions,  # noqa: E402
                   write_json, write_text)

RECIPES = {"32": {"input_height": 32}, "32-64": {"input_height": 64, "levels": "32:0.75,64:0.25"}}
PRIORS = ("standard", "matern")
GRIDS = (32, 64, 128)


def settings_for(args, model, prior, recipe):
    cpu = reproduce.PROFILES["cpu"]
    train = {**cpu["train"], "val_every": 0, "sampler": "auto", "dataset": "microstructure",
             "dataset_option": list(args.dataset_option or [])}
    models = {model: {**cpu["models"][model], "n_epochs": 10**6, "minutes": float(args.minutes), **RECIPES[recipe]}}
    return {"train": train, "models": models, "eval": {}}


def record_path(args, model, prior, recipe):
    return os.path.join(args.results, "microstructure", f"{model}_{prior}_{recipe}_{args.minutes:g}min_s{args.seed}.json")


def evaluate(args, run_folder, n0):
    """test.py's rows: n0 and the finer grids of GRIDS below the finest at --num_samples, the finest at
    --fine_samples, each in the three modes (raw native at --native_samples or fewer)."""
    state = load_checkpoint(os.path.join(run_folder, "last.pt"))
    folder = os.path.join(run_folder, "eval")
    os.makedirs(folder, exist_ok=True)
    finest = max(GRIDS)
    groups = [([n for n in GRIDS if n0 < n < finest], args.num_samples),
              ([finest] if n0 < finest else [], args.fine_samples)]
    rows = []
    for index, (grids, count) in enumerate(groups):
        if index and not grids:
            break
        flags = ["--save_model", run_folder, "--checkpoint", "last", "--seed", str(args.seed), "--sampler", "auto",
                 "--data_root", args.data_root, "--device", args.device, "--progress", str(args.progress),
                 "--num_samples_mmd", str(count), "--num_samples_native", str(min(count, args.native_samples)),
                 "--resample_noise", "n0", "--results_dir", folder, "--sample_mode", "resample", "native-bl", "native",
                 *(["--resolution", *map(str, grids)] if grids else ["--upscale", "1"])]
        eval_args = evaluation.build_parser().parse_args(flags)
        found, _ = evaluation.evaluate(eval_args, state, evaluation.resolve_device(args.device), folder)
        rows += found if index == 0 else found[1:]  # the n0 row once, at --num_samples
    return state, [{**row, "grid_path": os.path.join(folder, row["grid"])} for row in rows]


def run_one(args, model, prior, recipe, command):
    settings = settings_for(args, model, prior, recipe)
    folder = os.path.join(args.runs_dir, recipe)
    os.makedirs(folder, exist_ok=True)
    reproduce.train_run(args, settings, model, prior, args.seed, folder)
    run_folder = os.path.join(folder, reproduce.run_name(model, prior, args.seed))
    print(f"[microstructure] evaluating {model} {prior} {recipe}", flush=True)
    state, rows = evaluate(args, run_folder, RECIPES[recipe]["input_height"])
    write_json({"model": model, "prior": prior, "recipe": recipe, "minutes": args.minutes, "seed": args.seed,
                "steps": state["step"], "levels": state.get("level_stats"), "results": rows,
                "train_config": state["config"], "command": command, "train_versions": state.get("versions"),
                "versions": versions()}, record_path(args, model, prior, recipe))


def load_records(args):
    return read_records(os.path.join(args.results, "microstructure"), lambda record: report_lines(args, [record]))


def row_line(record, row):
    return (f"| {record['model']} | {record['prior']} | {record['recipe']} | {row['resolution']} | {row['mode']} | "
            f"{row['n']} | {row['mmd']:.4f} ({row['floor_real']:.4f}) | {row['volume_fraction']:.3f} / "
            f"{row['volume_fraction_true']:.3f} | {row['s2_error']:.4f} ({row['s2_error_true']:.4f}) | "
            f"{row['interface']:.2f} / {row['interface_true']:.2f} | {row['sharpness']:.2f} / {row['sharpness_true']:.2f} | "
            f"{100 * row['high_band']:.2f}% / {100 * row['high_band_true']:.2f}% |")


def report_lines(args, records):
    """results/microstructure.md's lines for `records`, in their order."""
    continuum = next((row for r in records for row in r["results"]), None)
    lines = ["# Microstructures: detail on grids finer than the training grid", "", "Made by", "",
             f"    python bench/microstructure.py --data_root ../shared/data --minutes {args.minutes:g} --commit", "",
             f"Each network at the CPU profile's size and recipe, seed {args.seed}, trained {args.minutes:g} minutes "
             "on generated microstructures at 32 (`--dataset microstructure`, the default law), sampled with "
             "its `auto` sampler at 32, 64 and 128 and scored against true samples of each grid (n as stated). "
             "Figures: samples / true samples at the same N; MMD and S2 error with the true-vs-true (resp. "
             "true-vs-continuum) figure in brackets.", ""]
    if continuum:
        lines += [f"Continuum values: volume fraction {continuum['volume_fraction_continuum']:.4f}, interface length "
                  f"per area {continuum['interface_continuum']:.3f}.", ""]
    hosts = sorted({machine_tag(reproduce.hardware(r)) + ": " + reproduce.hardware(r) for r in records})
    lines += [f"torch {versions()['torch']}. Machines: {'; '.join(hosts) or '-'}.", "",
              "| model | prior | recipe | N | mode | n | MMD (floor) | volume fraction | S2 error (true) | interface "
              "length | sharpness | power above the training band (|k| > n0/2) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return lines + [row_line(r, row) for r in records for row in r["results"]]


def relative_error(row, key):
    """|sample - true| / true; infinite where the true figure is 0 and the sample's is not (binary true
    images: a supersampling grid no finer than N)."""
    error, true = abs(row[key] - row[key + "_true"]), row[key + "_true"]
    return error / true if true > 0 else (math.inf if error > 0 else 0.0)


def closeness(row):
    """How far a row is from true samples at its grid: the mean of the relative errors of the sharpness
    N mean u(1 - u) and of the power above the training grid's band (0: both exact)."""
    return (relative_error(row, "sharpness") + relative_error(row, "high_band")) / 2


def finest_rows(records):
    """(record, row) at the finest grid for every sampled mode, closest to the truth first."""
    found = [(r, row) for r in records for row in r["results"] if row["resolution"] == max(GRIDS)]
    return sorted(found, key=lambda pair: closeness(pair[1]))


def closeness_lines(records):
    """The table that answers the study's question: at the finest grid, each mode's sharpness and high-band
    power against the truth, and against the Fourier interpolation of the same network's own samples."""
    pairs = finest_rows(records)
    if not pairs:
        return []
    interpolated = {(r["model"], r["prior"], r["recipe"]): closeness(row) for r, row in pairs
                    if row["mode"].startswith("resample")}
    lines = ["", f"## At {max(GRIDS)}: which network and mode comes closest", "",
             "Distance = the mean of the relative errors of the sharpness and of the power above the training grid's "
             "band (|k| > n0/2: 16 for recipe 32, 32 for 32-64, so compare the distance within a recipe) against "
             "true samples of the grid (0: both exact); 'against its interpolation' = the distance of the same run's "
             "Fourier-interpolated samples (resample) divided by this row's (above 1: closer than interpolation). "
             "Closest first. MMD beside its true-vs-true floor says whether the detail is the right kind.", "",
             "| model | prior | recipe | mode | sharpness (true) | power above the training band (true) | distance | "
             "against its interpolation | MMD (floor) |", "|---|---|---|---|---|---|---|---|---|"]
    for r, row in pairs:
        base = interpolated.get((r["model"], r["prior"], r["recipe"]))
        gain = f"{base / closeness(row):.2f}x" if base is not None and 0 < closeness(row) < math.inf else "-"
        power = f"{100 * row['high_band']:.2f}% ({100 * row['high_band_true']:.2f}%)"
        lines.append(f"| {r['model']} | {r['prior']} | {r['recipe']} | {row['mode']} | {row['sharpness']:.2f} "
                     f"({row['sharpness_true']:.2f}) | {power} | {closeness(row):.3f} | {gain} | "
                     f"{row['mmd']:.4f} ({row['floor_real']:.4f}) |")
    return lines


def interpolation_lines(args):
    """The yardstick of "only interpolates": true test images on each training grid, Fourier-interpolated to the
    finest grid, against true images there (sharpness; power above the training grid's band)."""
    import data
    import microstructure
    from resample import resample

    options = data.dataset_options("microstructure", args.dataset_option)
    test = data.load_split("microstructure", options, args.data_root, train=False)
    index, finest = list(range(min(args.fine_samples, test.count))), max(GRIDS)
    true = test.at_grid(index, finest)
    parts = []
    for n0 in sorted({recipe["input_height"] for recipe in RECIPES.values()}):
        interpolated = resample(test.at_grid(index, n0), finest, "fourier").clamp(0, 1)
        parts.append(f"from {n0}: sharpness {microstructure.sharpness(interpolated):.2f}, power above |k| = {n0 // 2} "
                     f"{100 * microstructure.high_band_share(interpolated, n0 // 2):.2f}% (true "
                     f"{100 * microstructure.high_band_share(true, n0 // 2):.2f}%)")
    return ["", f"True test images Fourier-interpolated to {finest} (n = {len(index)}), against the true sharpness "
            f"{microstructure.sharpness(true):.2f} there: " + "; ".join(parts) + "."]


def write_report(args, records):
    records = sorted(records, key=lambda r: (reproduce.MODELS.index(r["model"]), PRIORS.index(r["prior"]), r["recipe"]))
    lines = report_lines(args, records) + interpolation_lines(args) + closeness_lines(records)
    write_text("\n".join(lines) + "\n", os.path.join(args.results, "microstructure.md"))
    if records:
        draw_spectra(records, os.path.join(args.results, "microstructure.png"))
        for model in reproduce.MODELS:
            mine = [r for r in records if r["model"] == model and r["recipe"] == "32" and r["prior"] == "standard"]
            if mine:
                rows = {row["mode"]: row for row in mine[0]["results"] if row["resolution"] == max(GRIDS)}
                true_path = os.path.join(args.results, "microstructure", f"true_{max(GRIDS)}.png")
                save_side_by_side([true_path] + [rows[m]["grid_path"] for m in ("resample-fourier", "native-bl", "native")
                                                 if m in rows],
                                  os.path.join(args.results, f"microstructure_samples_{model}.png"))


def draw_spectra(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn_true = False
    for r in records:
        for row in r["results"]:
            if row["resolution"] != max(GRIDS):
                continue
            if not drawn_true:
                ax.loglog(row["spectrum_k"][1:], row["spectrum_true"][1:], color="black", linewidth=2, label="true")
                drawn_true = True
            ax.loglog(row["spectrum_k"][1:], row["spectrum"][1:], linewidth=0.8,
                      label=f"{r['model']} {r['prior']} {r['recipe']} {row['mode']}")
    ax.axvline(16, color="gray", linestyle=":", label="the 32 grid's band")
    ax.set_xlabel("|k|")
    ax.set_ylabel(f"radial power at {max(GRIDS)}")
    ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_true_grid(args):
    """The first 64 test microstructures at the finest grid (the seeds the samples' grids do not share:
    true samples have no noise seed), for the side-by-side panels."""
    import data

    options = data.dataset_options("microstructure", args.dataset_option)
    test = data.load_split("microstructure", options, args.data_root, train=False)
    path = os.path.join(args.results, "microstructure", f"true_{max(GRIDS)}.png")
    if not os.path.exists(path):
        save_grid(test.at_grid(list(range(min(64, test.count))), max(GRIDS)), path, nrow=8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=reproduce.MODELS, choices=reproduce.MODELS,
                        help="the networks, each at the CPU profile's size")
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS, help="the priors Q")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                        help="32: trained at 32 only; 32-64: a quarter of the minutes on the 64 grid after 32")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per run")
    parser.add_argument("--dataset_option", action="append", metavar="KEY=VALUE",
                        help="a microstructure option (main.py --dataset_option), repeatable")
    parser.add_argument("--seed", type=int, default=0, help="one seed for data, init, training and sampling")
    parser.add_argument("--num_samples", type=int, default=1000,
                        help="samples per figure on the grids below the finest (raw native: --native_samples)")
    parser.add_argument("--fine_samples", type=int, default=250,
                        help="samples per figure on the finest grid (%d)" % max(GRIDS))
    parser.add_argument("--native_samples", type=int, default=250, help="samples of raw native sampling")
    add_study_flags(parser, "where the generated microstructures are cached", "runs/microstructure")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    if min(args.num_samples, args.native_samples, args.fine_samples) < evaluation.MIN_SAMPLES:
        raise UserError(f"--num_samples, --native_samples and --fine_samples must be at least {evaluation.MIN_SAMPLES}")
    return args


def main(argv=None):
    args = parse_args(argv)
    args.profile, args.native_seeds = "cpu", []
    command = "python bench/microstructure.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.join(args.results, "microstructure"), exist_ok=True)
    save_true_grid(args)
    if not args.summary_only:
        for recipe in args.recipes:
            for prior in args.priors if recipe == "32" else ["standard"]:
                for model in args.models:
                    if os.path.exists(record_path(args, model, prior, recipe)):
                        continue
                    run_one(args, model, prior, recipe, command)
                    write_report(args, load_records(args))
                    if args.commit:
                        reproduce.commit_results(args, f"results (microstructure): {model} {prior} {recipe}")
    write_report(args, load_records(args))
    print(f"written {os.path.join(args.results, 'microstructure.md')}")


if __name__ == "__main__":
    run_main(main, "interrupted; finished runs are kept: run the same command again to go on")
