"""How far one figure moves with the sampling seed alone: a checkpoint scored over several draws.

    python bench/draws.py --checkpoints runs/reproduce/cpu/unet_standard_s0/last.pt \
        --seeds 0 1 2 3 4 --data_root ~/mnist        # writes results/draws.md, .json, .png

For each checkpoint and each sampling seed s: --num_samples images at n0 with the network's
default sampler (`auto`, ending with the denoiser as in test.py: seed s is `test.py --seed s`'s
draw), scored against ONE fixed set of MNIST test images (picked by --ref_seed) at n0, at 2 n0
(the samples Fourier-upsampled: the resample protocol with n0 noise) and, with the classifier,
by the Frechet distance at n0. The row `real digits` does the same for real training digits
picked by s: how far the floor moves with its draw. The table gives mean,
sd and range over the seeds; the sd is what a single figure of results/table.md carries from
sampling alone (its sd over training seeds adds training noise to it), so a lever that moves a
figure by less than about two of these sd is not resolved by one draw.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import frechet  # noqa: E402
import sde  # noqa: E402
import test as evaluation  # noqa: E402
from bench.report import run_label, write_report  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from resample import resample  # noqa: E402
from utils import UserError, load_checkpoint, run_main  # noqa: E402

REAL = "real digits"


def spread(values):
    """(mean, sample sd, min, max) of the values; sd 0 for a single value."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), sd, min(values), max(values)


def scores(images, test_low, test_high, critic, test_features):
    """MMD at n0, MMD of the Fourier-upsampled images at 2 n0, FD at n0 against the test images'
    classifier features (None without a classifier)."""
    n0 = images.shape[-1]
    upsampled = resample(images, 2 * n0, "fourier").clamp(0, 1)
    fd = None
    if critic is not None:
        fd = frechet.frechet_distance(frechet.apply(critic, images)[0], test_features)
    return {"mmd_28": riesz_mmd(images, test_low), "mmd_56_resample": riesz_mmd(upsampled, test_high), "fd_28": fd}


def sample_rows(args, path, critic, real_cache):
    """One row per sampling seed for the checkpoint, and one per seed for real training digits
    (scored once per data root and n0: real_cache holds them for the next checkpoint)."""
    state = load_checkpoint(path)
    n0 = state["config"]["input_height"]
    root = args.data_root or evaluation.trained_data_root(state)
    refs = evaluation.References(root, n0, args.ref_seed)
    test_low, test_high = refs.images("test", args.num_samples, 2 * n0)
    test_features = frechet.apply(critic, test_low)[0] if critic is not None else None
    sampler, steps = sde.resolve_sampler("auto", None, state["model_name"])
    model, prior, _ = evaluation.restore(state, "cpu", "ema")
    run = run_label(state["model_name"], state["prior_config"]["name"], path)
    rows = []
    for seed in args.seeds:
        started = time.time()
        images = sde.generate(model, prior, args.num_samples, n0, 1, "native", seed, None, steps, "cpu",
                              desc=f"{run} seed {seed}", sampler=sampler, show_progress=bool(args.progress),
                              tweedie=sde.default_tweedie(sampler))  # as test.py: seed 0 is the table's draw
        rows.append({"checkpoint": path, "run": run, "sampler": f"{sampler} {steps}", "seed": seed,
                     "n": args.num_samples, "ref_seed": args.ref_seed, "seconds": time.time() - started,
                     **scores(images, test_low, test_high, critic, test_features)})
        print(f"{run}, seed {seed}: MMD 28 {rows[-1]['mmd_28']:.4f}, 56 {rows[-1]['mmd_56_resample']:.4f}",
              flush=True)
    if (root, n0) not in real_cache:
        real_cache[(root, n0)] = [
            scores(evaluation.References(root, n0, seed).images("train", args.num_samples, n0)[0],
                   test_low, test_high, critic, test_features) for seed in args.seeds]
    for seed, real in zip(args.seeds, real_cache[(root, n0)]):
        rows.append({"checkpoint": path, "run": REAL, "sampler": "-", "seed": seed, "n": args.num_samples,
                     "ref_seed": args.ref_seed, "seconds": 0.0, **real})
    return rows


def summary_lines(records):
    """One Markdown row per run (real digits once per reference set): mean +- sd [min, max] per figure."""
    lines = ["| run | sampler | n | seeds | MMD 28: mean +- sd [min, max] | MMD 56 resample | FD 28 |",
             "|---|---|---|---|---|---|---|"]
    groups = {}
    for r in records:
        key = (r["run"], r["n"], r["ref_seed"]) if r["run"] == REAL else (r["checkpoint"], r["n"], r["ref_seed"])
        groups.setdefault(key, []).append(r)
    for rows in groups.values():
        unique = {r["seed"]: r for r in rows}.values()  # real digits repeat per checkpoint: count them once
        cells = []
        for field in ("mmd_28", "mmd_56_resample", "fd_28"):
            values = [r[field] for r in unique if r[field] is not None]
            digits = 1 if field == "fd_28" else 4
            cells.append("-" if not values else
                         "{:.{d}f} +- {:.{d}f} [{:.{d}f}, {:.{d}f}]".format(*spread(values), d=digits))
        first = next(iter(unique))
        seeds = " ".join(str(r["seed"]) for r in unique)
        lines.append(f"| {first['run']} | {first['sampler']} | {first['n']} | {seeds} | {' | '.join(cells)} |")
    return lines


def draw_panel(ax, rows):
    """MMD at 28 against the sampling seed, the checkpoint's samples beside the real digits."""
    for run, marker in ((rows[0]["run"], "o"), (REAL, "x")):
        points = sorted((r["seed"], r["mmd_28"]) for r in rows if r["run"] == run)
        if points:
            ax.plot(*zip(*points), marker=marker, linestyle="none", label=run)
    ax.set_xlabel("sampling seed (real digits: draw seed)")
    ax.set_ylabel("MMD at 28")
    ax.set_title(rows[0]["run"])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (.pt)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="sampling seeds (and draw seeds of the real digits)")
    parser.add_argument("--ref_seed", type=int, default=0,
                        help="picks the one set of test images every draw is scored against")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples (and test images) per figure")
    parser.add_argument("--data_root", default=None, help="MNIST root (default: each run's own)")
    parser.add_argument("--classifier", default=None,
                        help="classifier for the Frechet distance (default: checkpoints/mnist_classifier.pt; "
                             "'none' skips it)")
    parser.add_argument("--output", default="results/draws.md", help="Markdown file (+ .json, .png)")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bars")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        raise UserError("--seeds: expected at least two different seeds (a spread needs two draws)")
    for path in args.checkpoints:
        if not os.path.isfile(path):
            raise UserError(f"--checkpoints {path}: no such file")
    return args


def main(argv=None):
    args = parse_args(argv)
    critic, _ = evaluation.load_critic(args.classifier)
    command = "python bench/draws.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# One figure over several sampling draws", "", f"Command: `{command}`", "",
             f"Every figure of a run is scored against the same {args.num_samples} MNIST test images "
             f"(--ref_seed {args.ref_seed}); only the sampling seed changes (for the real digits: which "
             f"training digits). 56 = the 28 samples Fourier-upsampled. CPU.", ""]
    records, real_cache = [], {}
    for path in args.checkpoints:
        records += sample_rows(args, path, critic, real_cache)
        write_report(args.output, lines + summary_lines(records), records, args.ref_seed,
                     lambda r: r["checkpoint"], draw_panel)
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
