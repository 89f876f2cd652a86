"""Resolution study: MMD / K against K = 1..4, native and resample, beside the upsample oracles.

    python bench/resolution.py --checkpoints runs/reproduce/cpu/unet_standard_s0/last.pt \
        --data_root ~/mnist --num_samples 250

Runs `test.py --upscale 1 2 3 4 --sample_mode both` on each checkpoint (its JSON and grids
stay in --work_dir) and writes results/resolution.md, .json and .png. The Riesz MMD of
the same images grows like K (DESIGN.md section 5), so figures are divided by K. Every row
uses the same n (the V-statistic's bias depends on n), so the curves compare like with like.
An evaluation folder that already holds a results.json is reused as it is.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sde  # noqa: E402
import test as evaluation  # noqa: E402
from bench.report import write_report  # noqa: E402
from utils import versions  # noqa: E402


def evaluate(args, path, index):
    folder = os.path.join(args.work_dir, f"{index}_{os.path.basename(os.path.dirname(os.path.abspath(path)))}")
    report = os.path.join(folder, "results.json")
    if not os.path.exists(report):  # finished evaluations are kept and reused
        evaluation.main(["--save_model", path, "--upscale", *map(str, args.upscales), "--sample_mode", "both",
                         "--num_samples_mmd", str(args.num_samples), "--seed", str(args.seed),
                         "--data_root", args.data_root, "--device", args.device,
                         "--results_dir", folder, "--resample_noise", "n0", "--classifier", "none",
                         "--sampler", args.sampler, "--num_steps", str(args.num_steps),
                         "--progress", str(args.progress)])
    return json.load(open(report))


def rows_of(report):
    name = f"{report['model']} / {report['prior']['name']}"
    for r in report["results"]:
        k = r["upscale"]
        oracle = r.get("oracle_fourier")  # none at K = 1: nothing is upsampled
        yield {"run": name, "K": k, "mode": "n0" if k == 1 else r["mode"], "n": r["n"], "mmd_over_k": r["mmd"] / k,
               "floor_over_k": r["floor_real"] / k,
               "oracle_fourier_over_k": None if oracle is None else oracle / k}


def write_outputs(args, rows):
    lines = ["# Resolution study: MMD / K at K x 28", "", f"Command: `python bench/resolution.py "
             f"{' '.join(sys.argv[1:])}`; sampler {args.sampler}, {args.num_steps} steps; seed {args.seed}; "
             f"device {args.device}, torch {versions()['torch']}. "
             f"Resample rows reuse "
             f"the n0 samples (`--resample_noise n0`).", "",
             "| model / prior | K | mode | n | MMD / K | real-vs-real / K | oracle Fourier / K |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        oracle = r["oracle_fourier_over_k"]
        lines.append(f"| {r['run']} | {r['K']} | {r['mode']} | {r['n']} | {r['mmd_over_k']:.4f} | "
                     f"{r['floor_over_k']:.4f} | {'-' if oracle is None else f'{oracle:.4f}'} |")
    write_report(args.output, lines, rows, args.seed, lambda r: r["run"], draw_panel)


def draw_panel(ax, mine):
    """MMD / K against K, native and resample, beside the upsample oracle and the floor."""
    base = [r for r in mine if r["K"] == 1]
    for mode in ("native", "resample-fourier"):
        points = sorted((r["K"], r["mmd_over_k"]) for r in base + [r for r in mine if r["mode"] == mode])
        ax.plot(*zip(*points), marker="o", label=mode)
    oracle = sorted((r["K"], r["oracle_fourier_over_k"]) for r in mine if r["mode"] == "native")
    if oracle:
        ax.plot(*zip(*oracle), linestyle="--", color="gray", label="upsample oracle")
    floor = sorted({(r["K"], r["floor_over_k"]) for r in mine if r["mode"] in ("n0", "native")})
    ax.plot(*zip(*floor), linestyle=":", color="black", label="real vs real")
    ax.set_xlabel("K (grid K x 28)")
    ax.set_ylabel("MMD / K")
    ax.set_yscale("log")
    ax.set_title(mine[0]["run"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (.pt)")
    parser.add_argument("--upscales", type=int, nargs="+", default=[1, 2, 3, 4], help="factors K")
    parser.add_argument("--num_samples", type=int, default=250, help="samples (and test images) of every row")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--data_root", default="./data", help="MNIST root")
    parser.add_argument("--work_dir", default="runs/resolution", help="per-checkpoint evaluations")
    parser.add_argument("--output", default="results/resolution.md", help="Markdown file (+ .json, .png)")
    parser.add_argument("--sampler", default="em", choices=list(sde.SAMPLERS),
                        help="sampler of test.py (native sampling at K = 4 costs ~16x K = 1)")
    parser.add_argument("--num_steps", type=int, default=200, help="sampler steps")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bars")
    args = parser.parse_args()
    rows = []
    for index, path in enumerate(args.checkpoints):
        rows += list(rows_of(evaluate(args, path, index)))
        write_outputs(args, rows)
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
