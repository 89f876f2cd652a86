"""Resolution study: MMD * n0 / N on N-grids finer than the training grid, every sample mode.

    python bench/resolution.py --checkpoints runs/reproduce/cpu/cno_standard_s0/last.pt \
        --data_root ~/mnist --resolutions 56 84 112 --sampler ancestral --num_steps 50

For each checkpoint, `test.py` runs with --sample_mode all (native-bl, resample, native) and
--resample_noise fine, so resample and native-bl draw the same noise: grids N <= 2 n0 with
--num_samples images, finer grids with --num_samples_fine (native sampling there costs
(N/n0)^2 a sample). Each call also scores n0 at its n. Evaluations stay in --work_dir (one
folder per checkpoint and sample count, reused when its results.json exists); the study is
written to results/resolution.md, .json, .png (MMD * n0 / N against N, with the Fourier
oracle and the real-vs-real floor at the same n) and, per checkpoint, one PNG of the same
seeds, results/resolution_grids_RUN.png: 28 | resample 56 | native-bl 56 | native 56. The Riesz MMD of the same images grows
like N (DESIGN.md section 5), so rows at different N are compared through MMD * n0 / N.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sde  # noqa: E402
import test as evaluation  # noqa: E402
from bench.report import write_report  # noqa: E402
from utils import run_main, save_side_by_side, versions  # noqa: E402

MODES = ("resample-fourier", "native-bl", "native")


def run_label(path):
    """The run folder's name of a checkpoint path (e.g. cno_standard_s0)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def finished_reports(args, path, count):
    """[(report, folder)]: this checkpoint's finished evaluations in --work_dir at this n and sampler."""
    prefix = f"{run_label(path)}_n{count}_{args.sampler}{args.num_steps}_"
    found = []
    for name in sorted(os.listdir(args.work_dir)) if os.path.isdir(args.work_dir) else []:
        report = os.path.join(args.work_dir, name, "results.json")
        if name.startswith(prefix) and os.path.exists(report):
            found.append((json.load(open(report)), os.path.join(args.work_dir, name)))
    return found


def holds(report, resolutions, modes):
    """True when a test.py report has a row for every (grid, mode) asked for."""
    rows = {(r["resolution"], r["mode"]) for r in report["results"]}
    wanted = {("resample-fourier" if m == "resample" else m) for m in modes}
    return all((n, m) in rows for n in resolutions for m in wanted)


def evaluate(args, path, resolutions, count, modes):
    """test.py on `path` at these resolutions in these modes, `count` samples a row. A finished
    evaluation of the same checkpoint, n and sampler that holds these rows is reused."""
    for report, folder in finished_reports(args, path, count):
        if holds(report, resolutions, modes):
            return report, folder
    folder = os.path.join(args.work_dir, f"{run_label(path)}_n{count}_{args.sampler}{args.num_steps}_"
                                         f"{'-'.join(m.replace('native-bl', 'bl') for m in modes)}_"
                                         f"{'-'.join(map(str, resolutions))}")
    evaluation.main(["--save_model", path, "--checkpoint", "last", "--resolution", *map(str, resolutions),
                     "--sample_mode", *modes, "--num_samples_mmd", str(count),
                     "--seed", str(args.seed), "--device", args.device, "--results_dir", folder,
                     "--resample_noise", "fine", "--sampler", args.sampler, "--num_steps",
                     str(args.num_steps), "--progress", str(args.progress),
                     *(["--data_root", args.data_root] if args.data_root else [])])
    return json.load(open(os.path.join(folder, "results.json"))), folder


def evaluation_plan(args, n0, resolutions=None):
    """[(grids, n, modes)]: one test.py call per sample count and mode set. Grids N <= 2 n0 get
    --num_samples, finer ones --num_samples_fine; the raw native ablation runs only on
    --native_resolutions (default: every grid), with --num_samples_native images when given (then
    in a call of its own), else with the grid's n beside the other modes."""
    resolutions = args.resolutions if resolutions is None else resolutions
    native_on = set(resolutions if args.native_resolutions is None else args.native_resolutions)
    native_on &= set(resolutions)
    apart = args.num_samples_native is not None and "native" in args.modes
    with_native = [m for m in args.modes if m != "native"] if apart else list(args.modes)
    without = [m for m in args.modes if m != "native"]
    plan = []
    for grids, count in (([n for n in resolutions if n <= 2 * n0], args.num_samples),
                         ([n for n in resolutions if n > 2 * n0], args.num_samples_fine)):
        for modes, chosen in ((without, [n for n in grids if apart or n not in native_on]),
                              (with_native, [] if apart else [n for n in grids if n in native_on])):
            if chosen and modes:
                plan.append((chosen, count, modes))
    if apart and native_on:
        plan.append((sorted(native_on), args.num_samples_native, ["native"]))
    return plan


def rows_of(report, wanted=None):
    """Study rows from one test.py report (the n0 row and the rows of the `wanted` grids)."""
    name = f"{report['model']} / {prior_label(report['prior'])}"
    n0 = report["train_config"]["input_height"] if "train_config" in report else report["results"][0]["resolution"]
    for r in report["results"]:
        resolution = r["resolution"]
        if wanted is not None and resolution != n0 and resolution not in wanted:
            continue
        scale = n0 / resolution
        oracle = r.get("oracle_fourier")  # none at n0: nothing is upsampled
        yield {"run": name, "N": resolution, "mode": r["mode"], "n": r["n"], "mmd": r["mmd"],
               "mmd_scaled": r["mmd"] * scale, "floor_scaled": r["floor_real"] * scale,
               "oracle_scaled": None if oracle is None else oracle * scale,
               "digits": r.get("class_histogram")}


def prior_label(prior):
    """'lap_conv (spectral)' for the exactly consistent Laplacian, else the prior's name."""
    if prior["name"] in ("lap_conv", "combined_conv") and prior.get("laplacian") == "spectral":
        return f"{prior['name']} (spectral)"
    return prior["name"]


def ratio_to_resample(rows):
    """{(run, N, n): native-bl / resample} for the rows that have both."""
    by_key = {(r["run"], r["N"], r["n"], r["mode"]): r["mmd"] for r in rows}
    return {(run, N, n): mmd / by_key[(run, N, n, "resample-fourier")]
            for (run, N, n, mode), mmd in by_key.items()
            if mode == "native-bl" and (run, N, n, "resample-fourier") in by_key}


def ratio_summary(rows, ratios):
    """Markdown lines: MMD(native-bl) / MMD(resample) per run (rows) and grid N (columns), with n."""
    if not ratios:
        return []
    grids = sorted({N for _, N, _ in ratios})
    lines = ["MMD(native-bl) / MMD(resample), same N, n, seed and noise (n in brackets):", "",
             "| run | " + " | ".join(f"N = {N}" for N in grids) + " |", "|---|" + "---|" * len(grids)]
    for run in dict.fromkeys(r["run"] for r in rows):
        cells = [", ".join(f"{ratio:.3f} ({n})" for (r, N_, n), ratio in ratios.items() if r == run and N_ == N)
                 or "-" for N in grids]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    worst = max(ratios.values())
    return lines + ["", f"Largest ratio: {worst:.3f}; smallest: {min(ratios.values()):.3f}.", ""]


def write_outputs(args, rows, command):
    ratios = ratio_to_resample(rows)
    lines = ["# Resolution study: MMD * n0 / N on N-grids", "",
             f"Command: `{command}`; sampler {args.sampler}, {args.num_steps} steps; seed {args.seed}; device "
             f"{args.device}, torch {versions()['torch']}. Resample and native-bl draw the same noise on the "
             f"N-grid (`--resample_noise fine`). `native` is the ablation (the network run on the N-grid as it "
             f"is). The last column is MMD(native-bl) / MMD(resample) at the same N and n.", "",
             *ratio_summary(rows, ratios),
             "| model / prior | N | mode | n | MMD | MMD n0/N | real-vs-real n0/N | Fourier oracle n0/N "
             "| native-bl / resample |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        oracle = "-" if r["oracle_scaled"] is None else f"{r['oracle_scaled']:.4f}"
        ratio = ratios.get((r["run"], r["N"], r["n"])) if r["mode"] == "native-bl" else None
        lines.append(f"| {r['run']} | {r['N']} | {r['mode']} | {r['n']} | {r['mmd']:.4f} | {r['mmd_scaled']:.4f} | "
                     f"{r['floor_scaled']:.4f} | {oracle} | {'-' if ratio is None else f'{ratio:.3f}'} |")
    write_report(args.output, lines, rows, args.seed, lambda r: r["run"], draw_panel)


def draw_panel(ax, mine):
    """MMD * n0 / N against N per mode (the n0 row starts every curve), the oracle, the floor."""
    start = [r for r in mine if r["mode"] == "n0" and r["n"] == max(x["n"] for x in mine)]
    for mode in MODES:
        points = sorted((r["N"], r["mmd_scaled"]) for r in start + [r for r in mine if r["mode"] == mode])
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", label=mode)
    oracle = sorted({(r["N"], r["oracle_scaled"]) for r in mine if r["oracle_scaled"] is not None})
    if oracle:
        ax.plot(*zip(*oracle), linestyle="--", color="gray", label="Fourier oracle")
    floor = sorted({(r["N"], r["floor_scaled"]) for r in mine if r["mode"] in ("n0", "native-bl")})
    ax.plot(*zip(*floor), linestyle=":", color="black", label="real vs real")
    ax.set_xlabel("N (grid N x N)")
    ax.set_ylabel("MMD * n0 / N")
    ax.set_yscale("log")
    ax.set_title(mine[0]["run"])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (.pt)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[56, 84, 112],
                        help="grids N (any N > n0; e.g. 42 50 56 84 112)")
    parser.add_argument("--modes", nargs="+", default=["resample", "native-bl", "native"],
                        choices=list(sde.SAMPLE_MODES), help="sample modes of test.py")
    parser.add_argument("--best_resolutions", type=int, nargs="*", default=[],
                        help="more grids (e.g. 42 50), evaluated after --resolutions only for the run with the "
                             "lowest MMD at n0 under each prior")
    parser.add_argument("--native_resolutions", type=int, nargs="+", default=None,
                        help="grids on which the raw native ablation runs too (default: all of --resolutions)")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples (and test images) for N <= 2 n0")
    parser.add_argument("--num_samples_fine", type=int, default=250, help="samples for N > 2 n0")
    parser.add_argument("--num_samples_native", type=int, default=None,
                        help="samples for the raw native ablation, in a call of its own (default: the grid's n)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--data_root", default=None, help="MNIST root (default: each run's own)")
    parser.add_argument("--work_dir", default="runs/resolution", help="per-checkpoint evaluations")
    parser.add_argument("--output", default="results/resolution.md", help="Markdown file (+ .json, .png)")
    parser.add_argument("--sampler", default="ancestral", choices=list(sde.SAMPLERS), help="sampler of test.py")
    parser.add_argument("--num_steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bars")
    return parser.parse_args(argv)


def best_per_prior(rows, names, count):
    """{prior: run name} of the run with the lowest MMD at n0 (n = count) under each prior."""
    best = {}
    for r in rows:
        if r["mode"] == "n0" and r["n"] == count and r["run"] in names:
            prior = r["run"].split(" / ", 1)[1]
            if prior not in best or r["mmd"] < best[prior]["mmd"]:
                best[prior] = r
    return {prior: r["run"] for prior, r in best.items()}


def study_checkpoint(args, path, n0, resolutions, rows):
    """Evaluate one checkpoint on these grids (as evaluation_plan splits them), add its rows, and
    draw results/resolution_grids_RUN.png (28 | resample | native-bl | native at 2 n0, same seeds)."""
    panels = {}
    for grids, count, modes in evaluation_plan(args, n0, resolutions):
        report, folder = evaluate(args, path, grids, count, modes)
        seen = {(r["run"], r["N"], r["mode"], r["n"]) for r in rows}
        rows += [r for r in rows_of(report, set(grids)) if (r["run"], r["N"], r["mode"], r["n"]) not in seen]
        if 2 * n0 in grids:  # sample i depends on (seed, i) only: panels of calls with other n match
            for n, mode in ((n0, "native"), *((2 * n0, m) for m in ("resample", "native-bl", "native"))):
                image = os.path.join(folder, f"samples_{n}_{mode}.png")
                if (n, mode) not in panels and os.path.exists(image):
                    panels[(n, mode)] = image
        yield report
    order = [(n0, "native"), (2 * n0, "resample"), (2 * n0, "native-bl"), (2 * n0, "native")]
    if all(key in panels for key in order):
        save_side_by_side([panels[key] for key in order],
                          os.path.join(os.path.dirname(args.output), f"resolution_grids_{run_label(path)}.png"))


def main(argv=None):
    args = parse_args(argv)
    command = "python bench/resolution.py " + " ".join(sys.argv[1:] if argv is None else argv)
    training_grids = [evaluation.load_checkpoint(path)["config"]["input_height"] for path in args.checkpoints]
    rows, names = [], {}
    for path, n0 in zip(args.checkpoints, training_grids):
        for report in study_checkpoint(args, path, n0, args.resolutions, rows):
            names[f"{report['model']} / {prior_label(report['prior'])}"] = (path, n0)
        write_outputs(args, rows, command)
    if args.best_resolutions:  # the extra grids, only for the best run under each prior
        for run in best_per_prior(rows, names, args.num_samples).values():
            path, n0 = names[run]
            for _ in study_checkpoint(args, path, n0, args.best_resolutions, rows):
                pass
            write_outputs(args, rows, command)
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
