"""MMD, FD and precision / recall against the number of score evaluations, per sampler, for checkpoints.

    python bench/samplers.py --checkpoints runs/reproduce/cpu/fno_standard_s0/last.pt \
        --data_root ~/mnist --num_samples 500          # writes results/samplers.md, .png, .json

For each checkpoint and each budget of score evaluations (NFE, --budgets): Euler-Maruyama
(the reference), Euler-Maruyama ending with Tweedie's denoiser (budgets <= 50, where the
last step is large), Heun on the probability-flow ODE (N steps = 2N - 1 evaluations, N chosen
so that 2N - 1 <= budget), ancestral sampling on the same sigma grid (N steps = N
evaluations) and DPM-Solver++(2M), its second-order form (the same cost). Every configuration
draws --num_samples images at 28 with the same seed; the 56 figure is the same samples
Fourier-upsampled (the resample protocol with n0 noise). Also the raw weights against the EMA
weights at the largest EM budget.
"""
import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import frechet  # noqa: E402
import sde  # noqa: E402
import test as evaluation  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from resample import resample  # noqa: E402
from bench.report import run_label, write_report  # noqa: E402
from utils import load_checkpoint, run_main, versions  # noqa: E402


SAMPLER_LABELS = ("em", "em+tweedie", "heun", "ancestral", "dpm2m")
CLASSIFIER_KEYS = ("fd", "fd_floor", "confident", "confident_floor", "precision", "precision_floor", "recall",
                   "recall_floor", "vendi", "vendi_floor")
COLORS = {"em": "tab:blue", "em+tweedie": "tab:green", "heun": "tab:orange", "ancestral": "tab:red",
          "dpm2m": "tab:purple"}


def configurations(budgets, has_ema=True, samplers=SAMPLER_LABELS, heun_budgets=None, compare_raw=True):
    """(label, sampler, steps, tweedie, weights) for every budget, plus raw-vs-EMA."""
    rows = []
    for budget in budgets:
        if "em" in samplers:
            rows.append(("em", "em", budget, False, "ema"))
        if "heun" in samplers and budget in (heun_budgets or budgets):
            rows.append(("heun", "heun", (budget + 1) // 2, True, "ema"))
        for name in ("ancestral", "dpm2m"):
            if name in samplers:
                rows.append((name, name, budget, True, "ema"))
        if "em+tweedie" in samplers and budget <= 50:  # the denoiser matters where the last EM step is large
            rows.append(("em+tweedie", "em", budget, True, "ema"))
    if has_ema and compare_raw:  # without EMA weights the two rows would be the same network
        rows.append(("em, raw weights", "em", max(budgets), False, "raw"))
    return rows


def row_key(row):
    return (row["checkpoint"], row["sampler"], row["steps"], row["weights"], row["seed"])


def load_earlier(path):
    """Rows of an earlier report; rows from before rows carried their seed get the report's seed."""
    report = json.load(open(path))
    return [{**row, "seed": row.get("seed", report["seed"])} for row in report["results"]]


def merge(earlier, new):
    """Rows of earlier runs (other checkpoints or samplers) kept, those measured again replaced."""
    fresh = {row_key(r) for r in new}
    return [r for r in earlier if row_key(r) not in fresh] + new


def measure(args, path, refs_cache, critic=None):
    state = load_checkpoint(path)
    n0 = state["config"]["input_height"]
    root = args.data_root or evaluation.trained_data_root(state)
    refs = refs_cache.setdefault((root, n0), evaluation.References(root, n0, args.seed))
    test_low, test_high = refs.images("test", args.num_samples, 2 * n0)
    train_low = refs.images("train", args.num_samples, 2 * n0)[0] if critic is not None else None  # its floor
    results = []
    plan = configurations(args.budgets, state.get("ema") is not None, args.samplers, args.heun_budgets,
                          bool(args.compare_raw))
    for label, sampler, steps, tweedie, weights in plan:
        model, prior, _ = evaluation.restore(state, "cpu", weights)
        started = time.time()
        samples = sde.generate(model, prior, args.num_samples, n0, 1, "native", args.seed, None, steps,
                               "cpu", desc=f"{label} {steps}", sampler=sampler, tweedie=tweedie)
        seconds = time.time() - started
        row = {"checkpoint": path, "model": state["model_name"], "prior": state["prior_config"]["name"],
               "sampler": label, "steps": steps, "weights": weights, "seed": args.seed,
               "nfe": sde.score_evaluations(sampler, steps, tweedie), "n": args.num_samples,
               "mmd_28": riesz_mmd(samples, test_low),
               "mmd_56_resample": riesz_mmd(resample(samples, 2 * n0, "fourier").clamp(0, 1), test_high),
               "seconds": seconds, "command": "python bench/samplers.py " + " ".join(sys.argv[1:])}
        if critic is not None and n0 % critic.n0 == 0:  # FD, confident share, precision / recall, Vendi, floors
            figures = frechet.classifier_figures(critic, samples, train_low, test_low)
            row.update({key: figures[key] for key in CLASSIFIER_KEYS})
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def write_outputs(args, results):
    commands = dict.fromkeys(r["command"] for r in results)
    lines = ["# Samplers: MMD and the classifier's figures against score evaluations", "",
             "Commands (rows of earlier runs are kept; each row names its own):", ""]
    lines += [f"- `{c}`" for c in commands]
    lines += ["", "n samples per figure against as many MNIST test images, chosen by the row's seed (which also "
              "seeds the sampler); 56 = the 28 samples "
              f"Fourier-upsampled. CPU, torch {versions()['torch']}.", "",
              "FD, confident share (softmax above 0.9), precision / recall (k = 5) and Vendi: the classifier's "
              "figures at 28 (frechet.py), each with its real-vs-real floor in brackets ('-': not measured).", "",
              "| run | sampler | weights | steps | NFE | n | seed | MMD 28 | MMD 56 (resample) | FD 28 (floor) "
              "| confident (floor) | precision / recall (floor) | Vendi (floor) | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {c: i for i, c in enumerate(dict.fromkeys(r["checkpoint"] for r in results))}
    for r in sorted(results, key=lambda r: (order[r["checkpoint"]], r["weights"] != "ema", r["nfe"], r["sampler"])):
        lines.append(f"| {row_label(r)} | {r['sampler']} | {r['weights']} | {r['steps']} | "
                     f"{r['nfe']} | {r['n']} | {r['seed']} | {r['mmd_28']:.4f} | {r['mmd_56_resample']:.4f} | "
                     f"{classifier_cells(r)} | {r['seconds']:.0f} |")
    write_report(args.output, lines, results, args.seed, lambda r: r["checkpoint"], draw_panel)


def classifier_cells(row):
    """The table's classifier cells of a row: value (floor), '-' where a row has none."""
    if "fd" not in row:
        return "- | - | - | -"
    return (f"{row['fd']:.1f} ({row['fd_floor']:.1f}) | {row['confident']:.3f} ({row['confident_floor']:.3f}) | "
            f"{row['precision']:.3f} / {row['recall']:.3f} ({row['precision_floor']:.3f} / "
            f"{row['recall_floor']:.3f}) | {row['vendi']:.2f} ({row['vendi_floor']:.2f})")


def row_label(row):
    return run_label(row["model"], row["prior"], row["checkpoint"])


def draw_panel(ax, rows):
    """MMD at 28 against score evaluations, one line per sampler (EMA weights)."""
    mine = [r for r in rows if r["weights"] == "ema"]
    for label in dict.fromkeys(r["sampler"] for r in mine):
        points = sorted((r["nfe"], r["mmd_28"]) for r in mine if r["sampler"] == label)
        ax.plot(*zip(*points), marker="o", label=label, color=COLORS.get(label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("score evaluations")
    ax.set_ylabel("MMD at 28")
    ax.set_title(row_label(mine[0]), fontsize=9)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files (.pt)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[25, 50, 100, 200],
                        help="numbers of score evaluations")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples per figure")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (also picks the test images)")
    parser.add_argument("--data_root", default=None, help="MNIST root (default: each run's own)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLER_LABELS), choices=SAMPLER_LABELS,
                        help="samplers to run (em+tweedie only at budgets <= 50)")
    parser.add_argument("--heun_budgets", type=int, nargs="+", default=None,
                        help="budgets for heun (default: --budgets)")
    parser.add_argument("--compare_raw", type=int, default=1, choices=[0, 1],
                        help="1: also Euler-Maruyama with the raw (non-EMA) weights at the largest budget")
    parser.add_argument("--classifier", default=None,
                        help="MNIST classifier for FD, confident share, precision / recall and Vendi (default: "
                             "frechet.py's; 'none': MMD only)")
    parser.add_argument("--output", default="results/samplers.md", help="Markdown file (+ .json, .png)")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new report instead of keeping the rows of OUTPUT.json that this "
                             "run does not measure again")
    args = parser.parse_args()
    earlier_path = os.path.splitext(args.output)[0] + ".json"
    results = []
    if os.path.exists(earlier_path) and not args.fresh:
        results = load_earlier(earlier_path)
    refs_cache = {}
    critic = evaluation.load_critic(args.classifier)[0]
    for path in args.checkpoints:
        results = merge(results, measure(args, path, refs_cache, critic))
        write_outputs(args, results)
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
