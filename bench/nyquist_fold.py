"""What the Nyquist fold of native-bl's projection P_n0 is for: gain 1/sqrt(2) against the plain band projection.

    python bench/nyquist_fold.py --checkpoint runs/reproduce/cpu/unet_standard_s0/last.pt --data_root ../shared/data

Samples natively on the 2 n0 grid through the band-limited denoiser with both gains (same seed, same
noise) and prints the MMD against as many MNIST test images resized to 2 n0, and how many samples
are noise (pixel standard deviation above 0.45; digits have about 0.3); writes them to --output.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import sde  # noqa: E402
import test as evaluation  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from utils import load_checkpoint, run_main, versions  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--sampler", default="ancestral", choices=list(sde.SAMPLERS))
    parser.add_argument("--num_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_root", default=None, help="MNIST root (default: the run's own)")
    parser.add_argument("--output", default="results/nyquist_fold.md", help="Markdown file of the figures")
    args = parser.parse_args()
    lines = ["# The Nyquist fold of native-bl's projection", "",
             f"Command: `python bench/nyquist_fold.py {' '.join(sys.argv[1:])}`; seed {args.seed}; torch "
             f"{versions()['torch']}, {versions()['cpu_threads']} CPU threads. Same seed and noise for both gains.", "",
             "| run | N | Nyquist gain | MMD | n | sampler | samples that are noise |", "|---|---|---|---|---|---|---|"]
    state = load_checkpoint(args.checkpoint)
    model, prior, config = evaluation.restore(state, torch.device("cpu"))
    n0 = config["input_height"]
    test = data.load_mnist(args.data_root or evaluation.trained_data_root(state), train=False,
                           quiet=True)
    order = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(args.seed))
    reference = data.evaluation_images(test.images[order[:args.num_samples]], n0, 2 * n0)[1]
    for gain in (1 / math.sqrt(2), 1.0):
        # the band-limited score with this fold, run on the fine grid ('native' takes it as it is)
        samples = sde.generate(sde.BandLimitedScore(model, n0, nyquist_gain=gain), prior, args.num_samples, n0,
                               mode="native", seed=args.seed, num_steps=args.num_steps, sampler=args.sampler,
                               tweedie=True, resolution=2 * n0, show_progress=False)
        noise = int((samples.flatten(1).std(1) > 0.45).sum())
        mmd = riesz_mmd(samples, reference)
        print(f"{state['model_name']} / {state['prior_config']['name']}, native-bl at {2 * n0}, Nyquist gain "
              f"{gain:.4f}: MMD {mmd:.4f} (n = {args.num_samples}, {args.sampler} "
              f"{args.num_steps}), {noise} samples are noise", flush=True)
        lines.append(f"| {state['model_name']} / {state['prior_config']['name']} | {2 * n0} | {gain:.4f} | {mmd:.4f} | "
                     f"{args.num_samples} | {args.sampler} {args.num_steps} | {noise} |")
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
