"""Multilevel training against training on the fine grid only, judged at 28 against real 28 digits.

    python bench/multilevel.py --data_root ../shared/data --commit

For every network (the CPU profile's size and recipe, seed 0, prior `standard`, full MNIST) and every
recipe and budget B (minutes of training on this machine, `main.py --minutes B`), main.py trains:
  28        the 28 grid only (the compute curves' base recipe);
  14        the 14 grid only (`--input_height 14`): the 28 training digits reduced by Fourier truncation;
  14-28_S   14 then 28, S percent of the minutes at 14 (`--levels 14:S/100,28:1-S/100`);
  7-14-28   7, 14, 28 with half, a quarter and a quarter of the minutes.
Each run is scored by test.py at n = --num_samples against MNIST test at 28 (a 14-only run also at 14,
and at 28 in every sample mode: resample, native-bl, raw native, and raw native told the grid's pixel
noise level, `--grid_conditioning pixel`): MMD, Frechet distance, the classifier's confident share,
precision and recall, each beside its real-vs-real floor; the interpolation floor of a 14-only model
is the real 28 digits reduced to 14 and Fourier-interpolated back (test.py's oracle at 28). Runs that
end on the 28 grid also get the per-band error of their denoiser at 28 (`band_errors`: the band a 14
grid holds, |k_i| <= 7, and the band above it) at fixed noise levels, on the same test digits and noise.

Records: results/multilevel/NAME.json (one per run, committed as it lands with --commit); then
results/multilevel.md, results/multilevel.png (FD at 28 against minutes, a line per recipe, a panel
per network, the floor as a band), results/multilevel_loss.png (the training loss on the 28 grid
against minutes, multilevel against 28 only) and results/multilevel_samples_MODEL.png (the same
seeds: 14-only resample | native-bl | raw native | the best multilevel run | 28 only). Finished runs are
skipped, interrupted ones resume (reproduce.py's machinery). A budget is wall-clock time on one
machine: compare runs of one machine (the record names it), and note the load column.

Variants: `--variant NAME --train_option KEY=VALUE` trains the recipes with main.py's options changed
(e.g. `--variant ema_carry --train_option level_ema=carry`), recorded beside the base runs.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import reproduce  # noqa: E402
import sde  # noqa: E402
import test as evaluation  # noqa: E402
from bench.compute import machine_tag, parse_train_options  # noqa: E402
from bench.report import add_study_flags, read_records  # noqa: E402
from utils import (UserError, load_checkpoint, run_main, save_side_by_side, versions,  # noqa: E402
                   write_json, write_text)

FINE = 28
# recipe name -> the main.py options that make it (beside the CPU profile's)
RECIPES = {
    "28": {},
    "14": {"input_height": 14},
    "14-28_50": {"levels": "14:0.5,28:0.5"},
    "14-28_75": {"levels": "14:0.75,28:0.25"},
    "14-28_90": {"levels": "14:0.9,28:0.1"},
    "7-14-28": {"levels": "7:0.5,14:0.25,28:0.25"},
}
# the study of the issue: every recipe at 10 and 20 minutes but 14-only and 7-14-28 at 20
DEFAULT_PLAN = [("28", 10), ("28", 20), ("14-28_50", 10), ("14-28_75", 10), ("14-28_90", 10), ("14", 20),
                ("14-28_50", 20), ("14-28_75", 20), ("14-28_90", 20), ("7-14-28", 20)]
MULTILEVEL = [name for name, options in RECIPES.items() if "levels" in options]  # the recipes that end at 28
BASE = "base"
BAND_TIMES = (0.02, 0.05, 0.1, 0.2, 0.3)  # sigma(t) = 0.08, 0.17, 0.34, 0.72, 1.23 (pixel sd of the data 0.28)
LOW_BAND = 7  # |k_i| <= 7: the modes a 14 grid holds


def settings_for(args, model, recipe, budget):
    """reproduce.py's settings for one run: the CPU profile's network and recipe, a time budget, the
    recipe's grids and the variant's options."""
    cpu = reproduce.PROFILES["cpu"]
    train = {**cpu["train"], "val_every": 0, "sampler": "auto"}
    models = {model: {**cpu["models"][model], "n_epochs": 10**6, "minutes": float(budget), **RECIPES[recipe],
                      **args.options}}
    return {"train": train, "models": models, "eval": {}}


def run_label(recipe, budget, variant):
    return f"{recipe}_{budget:g}min" + ("" if variant == BASE else f"_{variant}")


def record_path(args, model, recipe, budget):
    return os.path.join(args.results, "multilevel", f"{model}_{run_label(recipe, budget, args.variant)}_s{args.seed}.json")


def evaluation_flags(args, run_folder, results_dir, n0, extra=()):
    return ["--save_model", run_folder, "--checkpoint", "last", "--seed", str(args.seed), "--sampler", "auto",
            "--data_root", args.data_root, "--device", args.device, "--progress", str(args.progress),
            "--num_samples_mmd", str(args.num_samples), "--resample_noise", "n0", "--results_dir", results_dir,
            *(["--resolution", str(FINE), "--sample_mode", "resample", "native-bl", "native"] if n0 < FINE
              else ["--upscale", "1"]), *extra]


def evaluate(args, run_folder, n0):
    """test.py's rows for a run: at 28 (a coarse run: at n0 and at 28 in every mode, then raw native told
    the pixel noise level), with the classifier's figures."""
    state = load_checkpoint(os.path.join(run_folder, "last.pt"))
    device = evaluation.resolve_device(args.device)
    critic, _ = evaluation.load_critic(None)
    passes = [((), "")]
    if n0 < FINE:
        passes.append((("--sample_mode", "native", "--grid_conditioning", "pixel"), " (pixel conditioning)"))
    rows = []
    for extra, label in passes:
        folder = os.path.join(run_folder, "eval" + label.replace(" (pixel conditioning)", "_pixel"))
        os.makedirs(folder, exist_ok=True)
        flags = evaluation_flags(args, run_folder, folder, n0)
        eval_args = evaluation.build_parser().parse_args(flags + list(extra))
        found, _ = evaluation.evaluate(eval_args, state, device, folder, critic)
        rows += [{**row, "mode": row["mode"] + label, "grid_path": os.path.join(folder, row["grid"])} for row in found
                 if not (label and row["resolution"] != FINE)]
    return state, rows


def band_errors(model, prior, images, times=BAND_TIMES, seed=0, low_band=LOW_BAND):
    """Per-band relative error of the denoiser D(x_t, t) = E[X_0 | X_t] on the grid of `images`:
    |P (D - x0)|^2 / |P x0|^2 summed over the images, P the Fourier projection on the modes
    |k_1|, |k_2| <= low_band ('low') or on the rest ('high'), at each t of `times`, with noise of the
    run's prior drawn from `seed` (the same for every run)."""
    n = images.shape[-1]
    modes = torch.fft.fftfreq(n, 1.0 / n).round().abs()
    low = (modes[:, None] <= low_band) & (modes[None, :] <= low_band)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch.inference_mode():
        for t_value in times:
            t = torch.full((len(images),), float(t_value))
            m, s = sde.mean_coef(t).reshape(-1, 1, 1, 1), sde.noise_std(t).reshape(-1, 1, 1, 1)
            noisy = m * images + s * prior.sample(images.shape, generator)
            error = torch.fft.fft2(sde.tweedie_denoise(model, noisy, t) - images).abs().pow(2)
            signal = torch.fft.fft2(images).abs().pow(2)
            rows.append({"t": t_value, "sigma": float(sde.sigma_of_t(torch.tensor(t_value))),
                         "low": float(error[..., low].sum() / signal[..., low].sum()),
                         "high": float(error[..., ~low].sum() / signal[..., ~low].sum())})
    return rows


def band_rows(args, state):
    """band_errors of a run's EMA weights on --band_samples MNIST test digits at 28 (the same digits and
    noise for every run); None for a run that does not end on the 28 grid."""
    if state["config"]["input_height"] != FINE:
        return None
    model, prior, _ = evaluation.restore(state, torch.device("cpu"))
    test = data.load_mnist(args.data_root, train=False, quiet=True)
    order = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(args.seed))
    return band_errors(model, prior, data.training_images(test.images[order[:args.band_samples]], FINE), seed=args.seed)


def run_one(args, model, recipe, budget, command):
    settings = settings_for(args, model, recipe, budget)
    folder = os.path.join(args.runs_dir, run_label(recipe, budget, args.variant))
    os.makedirs(folder, exist_ok=True)
    reproduce.train_run(args, settings, model, args.prior, args.seed, folder)
    run_folder = os.path.join(folder, reproduce.run_name(model, args.prior, args.seed))
    print(f"[multilevel] evaluating {model} {recipe} {budget:g} min", flush=True)
    state, rows = evaluate(args, run_folder, settings["models"][model].get("input_height", FINE))
    history = state["history"]
    record = {"model": model, "recipe": recipe, "budget_minutes": budget, "variant": args.variant,
              "train_options": args.options, "seed": args.seed, "prior": args.prior, "steps": state["step"],
              "train_seconds": state["train_seconds"], "levels": state.get("level_stats"),
              "trace": state.get("trace", []), "results": rows, "bands": band_rows(args, state),
              "max_load_1min": max((h["load_1min"] for h in history if h.get("load_1min", "") != ""), default=None),
              "train_config": state["config"], "model_kwargs": state["model_kwargs"], "command": command,
              "train_versions": state.get("versions"), "versions": versions()}
    write_json(record, record_path(args, model, recipe, budget))


# ---------------------------------------------------------------- the report

def load_records(args):
    return read_records(os.path.join(args.results, "multilevel"), lambda record: report_lines(args, [record]))


def at_fine(record, mode=None):
    """The record's row at 28: a 28 run's n0 row, a coarse run's row of `mode`."""
    for row in record["results"]:
        if row["resolution"] == FINE and (mode is None or row["mode"] == mode):
            return row
    return None


def fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def steps_text(record):
    levels = record.get("levels") or []
    if len(levels) <= 1:
        return str(record["steps"])
    return " + ".join(f"{s['steps']} @{s['grid']}" for s in levels)


def result_line(record, row, label, extra=None):
    """A table row of a record's figures at 28; `extra`: one more cell before the machine's."""
    host = reproduce.hardware({"train_versions": record["train_versions"], "versions": record["versions"]})
    return (f"| {record['model']} | {label} | {record['budget_minutes']:g} | {steps_text(record)} | {row['n']} | "
            f"{fmt(row['mmd'])} ({fmt(row['floor_real'])}) | {fmt(row.get('fd'), 1)} ({fmt(row.get('fd_floor'), 1)}) | "
            f"{fmt(row.get('confident'), 3)} ({fmt(row.get('confident_floor'), 3)}) | "
            f"{fmt(row.get('precision'), 3)} / {fmt(row.get('recall'), 3)} "
            f"({fmt(row.get('precision_floor'), 3)} / {fmt(row.get('recall_floor'), 3)}) | "
            + ("" if extra is None else f"{extra} | ") + f"{machine_tag(host)} | {fmt(record.get('max_load_1min'), 2)} |")


def oracle_line(record, row):
    """The interpolation floor of a coarse run's table: test.py's Fourier oracle at 28 (real coarse digits
    interpolated), each figure beside the same floor as the samples'."""
    detail = f"{row['oracle_detail']:.2%} ({row['detail_real']:.2%})" if "oracle_detail" in row else "-"
    return (f"| {record['model']} | interpolation floor (real {record['train_config']['input_height']} -> 28) | | | "
            f"{row['n']} | {fmt(row.get('oracle_fourier'))} ({fmt(row['floor_real'])}) | "
            f"{fmt(row.get('oracle_fd'), 1)} ({fmt(row.get('fd_floor'), 1)}) | "
            f"{fmt(row.get('oracle_confident'), 3)} ({fmt(row.get('confident_floor'), 3)}) | "
            f"{fmt(row.get('oracle_precision'), 3)} / {fmt(row.get('oracle_recall'), 3)} "
            f"({fmt(row.get('precision_floor'), 3)} / {fmt(row.get('recall_floor'), 3)}) | {detail} | | |")


def recipe_label(record):
    return record["recipe"] + ("" if record["variant"] == BASE else f" ({record['variant']})")


def fine_only_curve(records, model):
    """(minutes, FD) of the 28-only base runs of a network, by minutes."""
    return sorted((r["budget_minutes"], at_fine(r)["fd"]) for r in records
                  if r["model"] == model and r["recipe"] == "28" and r["variant"] == BASE and (at_fine(r) or {}).get("fd"))


def minutes_for_fd(curve, fd):
    """The minutes the 28-only curve needs for `fd`: log-log interpolation between its points; None
    outside the curve (an FD it does not reach, or one it beats at its shortest budget)."""
    for (m1, f1), (m2, f2) in zip(curve, curve[1:]):
        if min(f1, f2) <= fd <= max(f1, f2) and f1 != f2:
            return math.exp(math.log(m1) + (math.log(fd) - math.log(f1)) * (math.log(m2) - math.log(m1))
                            / (math.log(f2) - math.log(f1)))
    return None


def minutes_cells(curve, fd, budget):
    """(the 28-only minutes for `fd`, `budget` as a share of them) as table cells. An FD below every point
    of the curve needs more than its longest budget: the share is then an upper bound ('< x%')."""
    if fd is None or not curve:
        return "-", "-"
    needed = minutes_for_fd(curve, fd) if len(curve) > 1 else None
    if needed is not None:
        return f"{needed:.1f}", f"{100 * budget / needed:.0f}%"
    points = ", ".join(f"{m:g} min: FD {f:.1f}" for m, f in curve)
    longest, longest_fd = curve[-1]
    if fd < min(f for _, f in curve) and longest_fd == min(f for _, f in curve):
        return f"more than {longest:g} ({points})", f"< {100 * budget / longest:.0f}%"
    return f"outside the 28-only curve ({points})", "-"


def speedup_lines(records):
    """Each multilevel run against the 28-only curve of its network: the minutes 28-only needs for the
    same FD at 28, and that as a share of the run's own minutes."""
    lines = []
    for r in records:
        if r["recipe"] not in MULTILEVEL:
            continue
        fd = (at_fine(r) or {}).get("fd")
        where, share = minutes_cells(fine_only_curve(records, r["model"]), fd, r["budget_minutes"])
        lines.append(f"| {r['model']} | {recipe_label(r)} | {r['budget_minutes']:g} | {fmt(fd, 1)} | {where} | {share} |")
    if not lines:
        return []
    return ["", "## Minutes against the 28-only curve", "",
            "The 28-only minutes that reach each multilevel run's FD at 28 (log-log interpolation between the "
            "28-only runs of this study), and the run's minutes as a share of them: below 60% is the issue's "
            "mark. A run whose FD beats the curve's longest 28-only run needs more than its minutes: the share "
            "is then an upper bound.", "", "| model | recipe | minutes | FD 28 | 28-only minutes for that FD | share |",
            "|---|---|---|---|---|---|", *lines]


def band_lines(records):
    lines = []
    for r in records:
        if not r.get("bands"):
            continue
        cells = " | ".join(f"{b['low']:.3f} / {b['high']:.3f}" for b in r["bands"])
        lines.append(f"| {r['model']} | {recipe_label(r)} | {r['budget_minutes']:g} | {cells} |")
    if not lines:
        return []
    sigmas = " | ".join(f"t {t:g} (sigma {float(sde.sigma_of_t(torch.tensor(t))):.2f})" for t in BAND_TIMES)
    return ["", "## Where the denoiser errs at 28", "",
            "|P(D - x0)|^2 / |P x0|^2 of the EMA denoiser D(x_t, t) at 28 on the same MNIST test digits and noise "
            "for every run, P the band a 14 grid holds (|k_i| <= 7, 'low') or the band above it ('high'): "
            "low / high at each t.", "", f"| model | recipe | minutes | {sigmas} |",
            "|---|---|---|" + "---|" * len(BAND_TIMES), *lines]


def report_lines(args, records):
    """results/multilevel.md's lines for `records`."""
    records = sorted(records, key=lambda r: (reproduce.MODELS.index(r["model"]), r["budget_minutes"],
                                             list(RECIPES).index(r["recipe"]), r["variant"]))
    commands = sorted({r["command"] for r in records})
    lines = ["# Multilevel training against the fine grid only", "", "Made by", "",
             "    python bench/multilevel.py --data_root ../shared/data --commit", "",
             "(resumable; each record in `multilevel/` keeps the command that made it; these were run:", "",
             *[f"    {c}" for c in commands], "",
             f"Each network at the CPU profile's size and recipe, seed {args.seed}, prior `{args.prior}`, full "
             "MNIST, trained for the budget (`main.py --minutes B`, the cosine schedule over the final level, "
             "`--level_lr final`; the EMA restarted at each switch, `--level_ema restart`), scored by test.py with "
             "the network's `auto` sampler (25 score evaluations) at 28 against MNIST test, at the n stated. "
             "Each figure with its real-vs-real floor in brackets (real training digits against the same test "
             "digits). Steps: per level where there are several. Max load: the highest 1-minute load average in "
             "training; above the 2 torch threads + 0.5 the run shared the CPU with other work, and its steps are not "
             "its machine's. Recipes: " + "; ".join(
                 f"`{name}` " + (" ".join(f"`--{k} {v}`" for k, v in options.items()) or "the 28 grid only")
                 for name, options in RECIPES.items()) + ".", "",
             f"torch {versions()['torch']}. Machines: " + "; ".join(sorted(
                 {f"{machine_tag(h)}: {h}" for h in (reproduce.hardware(r) for r in records)})) + ".", "",
             "| model | recipe | minutes | steps | n | MMD 28 (floor) | FD 28 (floor) | confident (floor) "
             "| precision / recall (floor) | machine | max load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["train_config"]["input_height"] == FINE:
            lines.append(result_line(r, at_fine(r), recipe_label(r)))
    coarse = [r for r in records if r["train_config"]["input_height"] < FINE]
    if coarse:
        lines += ["", "## Trained on the coarse grid only, sampled at 28", "",
                  "The interpolation floor: real 28 digits reduced to the coarse grid and Fourier-interpolated "
                  "back (the best any coarse-only model can do by resampling), against the same test digits. "
                  "Detail: the share of the power (each image's mean removed) at the modes the coarse grid does "
                  "not hold, max(|k_1|, |k_2|) > n0 / 2, in the samples, beside the real 28 test digits' share "
                  "(`resample.power_outside_band`).", "",
                  "| model | recipe, mode at 28 | minutes | steps | n | MMD 28 (floor) | FD 28 (floor) | confident "
                  "(floor) | precision / recall (floor) | detail (real) | machine | max load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in coarse:
            rows = [row for row in r["results"] if row["resolution"] == FINE]
            for row in rows:
                detail = (f"{row['detail']:.2%} ({row['detail_real']:.2%})" if "detail" in row else "-")
                lines.append(result_line(r, row, f"{recipe_label(r)}, {row['mode']}", detail))
            lines.append(oracle_line(r, rows[0]) if rows else "")
    return lines + speedup_lines(records) + band_lines(records)


def write_report(args, records):
    os.makedirs(args.results, exist_ok=True)
    write_text("\n".join(report_lines(args, records)) + "\n", os.path.join(args.results, "multilevel.md"))
    if records:
        draw_fd(records, os.path.join(args.results, "multilevel.png"))
        draw_loss(records, os.path.join(args.results, "multilevel_loss.png"))
        write_sample_panels(args, records)


def model_panels(records, path, draw_panel):
    """One panel per network of `records` (draw_panel(ax, model)), saved as a PNG at `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in reproduce.MODELS if any(r["model"] == m for r in records)]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        draw_panel(ax, model)
        ax.set_yscale("log")
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_fd(records, path):
    """FD at 28 against minutes, a line per recipe (coarse-only: its resample mode), a panel per network."""
    def panel(ax, model):
        mine = [r for r in records if r["model"] == model]
        for label in dict.fromkeys(recipe_label(r) for r in mine):
            points = sorted((r["budget_minutes"], row["fd"]) for r in mine if recipe_label(r) == label
                            for row in [at_fine(r, None if r["train_config"]["input_height"] == FINE
                                                else "resample-fourier")] if row and row.get("fd"))
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if label == "28" else "--", label=label)
        floors = [at_fine(r)["fd_floor"] for r in mine if at_fine(r) and at_fine(r).get("fd_floor")]
        if floors:
            ax.axhspan(min(floors), max(floors) * 1.02, color="gray", alpha=0.3, label="real vs real")
        ax.set_xscale("log")
        budgets = sorted({r["budget_minutes"] for r in mine})
        if budgets:  # the budgets run as ticks, a little room either side
            ax.set_xlim(budgets[0] / 1.3, budgets[-1] * 1.3)
            ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
            ax.minorticks_off()
        ax.set_title(model)
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("Frechet distance at 28")

    model_panels(records, path, panel)


def draw_loss(records, path):
    """The training loss on the 28 grid against training minutes (the trace's points on the 28 grid, a
    running mean of 8), multilevel against 28 only: each recipe's run at its longest budget (base
    options only)."""
    def panel(ax, model):
        mine = [r for r in records if r["model"] == model and r["train_config"]["input_height"] == FINE
                and r["trace"] and r["variant"] == BASE]
        longest = {}
        for r in mine:
            if r["budget_minutes"] > longest.get(r["recipe"], (0, None))[0]:
                longest[r["recipe"]] = (r["budget_minutes"], r)
        for r in (r for _, r in longest.values()):
            points = [(p["minutes"], p["loss"]) for p in r["trace"] if p["grid"] == FINE]
            if len(points) >= 8:
                minutes, losses = zip(*points)
                smooth = [sum(losses[max(0, i - 7):i + 1]) / len(losses[max(0, i - 7):i + 1]) for i in range(len(losses))]
                ax.plot(minutes, smooth, label=f"{recipe_label(r)}, {r['budget_minutes']:g} min",
                        linestyle="-" if r["recipe"] == "28" else "--")
        ax.set_title(model)
        ax.set_xlabel("training minutes")
        ax.set_ylabel("training loss on the 28 grid")

    model_panels(records, path, panel)


def write_sample_panels(args, records):
    """results/multilevel_samples_MODEL.png: 14-only resample | 14-only native-bl | 14-only raw native | the
    multilevel run with the lowest FD | 28 only, at the longest budget each has (the same sampling seed:
    the same noise on the 28 grid, so the same digits but for resample, whose noise is drawn at 14)."""
    for model in reproduce.MODELS:
        mine = [r for r in records if r["model"] == model and r["variant"] == BASE]
        def pick(recipes, mode=None):
            found = [r for r in mine if r["recipe"] in recipes and at_fine(r, mode)]
            if not found:
                return None
            best = min(found, key=lambda r: (-r["budget_minutes"], at_fine(r, mode).get("fd") or math.inf))
            return at_fine(best, mode).get("grid_path")
        panels = [pick(["14"], "resample-fourier"), pick(["14"], "native-bl"), pick(["14"], "native"), pick(MULTILEVEL),
                  pick(["28"])]
        save_side_by_side([p for p in panels if p], os.path.join(args.results, f"multilevel_samples_{model}.png"))


# ---------------------------------------------------------------- the command

def parse_plan(items):
    """['14-28_75:10', ...] -> [('14-28_75', 10.0), ...]; default: DEFAULT_PLAN."""
    if not items:
        return list(DEFAULT_PLAN)
    plan = []
    for item in items:
        recipe, sep, minutes = item.rpartition(":")
        if not sep or recipe not in RECIPES:
            raise UserError(f"--runs {item!r}: expected RECIPE:MINUTES with RECIPE one of {', '.join(RECIPES)}")
        try:
            budget = float(minutes)
        except ValueError:
            budget = -1
        if not (math.isfinite(budget) and budget > 0):
            raise UserError(f"--runs {item!r}: the minutes must be a positive number")
        plan.append((recipe, budget))
    return plan


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fno", "cno", "unet"], choices=reproduce.MODELS,
                        help="the networks, each at the CPU profile's size and recipe")
    parser.add_argument("--runs", nargs="+", default=None, metavar="RECIPE:MINUTES",
                        help=f"the runs, in order (default: the study, {' '.join(f'{r}:{m}' for r, m in DEFAULT_PLAN)}); "
                             f"recipes: {', '.join(RECIPES)}")
    parser.add_argument("--prior", default="standard", choices=reproduce.FULL_PRIORS, help="the prior Q")
    parser.add_argument("--seed", type=int, default=0, help="one seed for split, init, training and sampling")
    parser.add_argument("--variant", default=BASE, help="name of the options set by --train_option")
    parser.add_argument("--train_option", action="append", metavar="KEY=VALUE",
                        help="a main.py option of this variant, repeatable (e.g. level_ema=carry)")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples and test digits per figure")
    parser.add_argument("--band_samples", type=int, default=500, help="test digits of the per-band denoiser error")
    add_study_flags(parser, "the MNIST folder", "runs/multilevel")
    args = parser.parse_args(argv)
    args.plan = parse_plan(args.runs)
    if not args.variant or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in args.variant):
        raise UserError(f"--variant {args.variant!r}: letters, digits, '-', '_' and '.' only (it names files)")
    args.options = parse_train_options(args.train_option)
    for key in ("levels", "input_height"):
        if key in args.options:
            raise UserError(f"--train_option {key}: set by the recipe (--runs)")
    if (args.variant == BASE) != (not args.options):
        raise UserError("--variant names the options that --train_option sets: give both, or neither")
    if args.num_samples < evaluation.MIN_SAMPLES or args.band_samples < 1:
        raise UserError(f"--num_samples must be at least {evaluation.MIN_SAMPLES} and --band_samples positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    args.profile, args.native_seeds = "cpu", []  # what reproduce.py's run functions read
    command = "python bench/multilevel.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.join(args.results, "multilevel"), exist_ok=True)
    if not args.summary_only:
        for recipe, budget in args.plan:  # run-major: every network has the plan's early runs early
            for model in args.models:
                if os.path.exists(record_path(args, model, recipe, budget)):
                    continue
                run_one(args, model, recipe, budget, command)
                write_report(args, load_records(args))
                if args.commit:
                    reproduce.commit_results(args, f"results (multilevel): {model} {run_label(recipe, budget, args.variant)}")
    write_report(args, load_records(args))
    print(f"written {os.path.join(args.results, 'multilevel.md')}")


if __name__ == "__main__":
    run_main(main, "interrupted; finished runs are kept: run the same command again to go on")
