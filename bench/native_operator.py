"""Can an operator do better on the fine grid than U_N D_n0(P_n0 y)? Its own fine-grid denoiser, band-limited.

    python bench/native_operator.py --checkpoints runs/reproduce/cpu/fno_matern_s0/last.pt --data_root ../shared/data

`native-bl` evaluates the network on the n0 grid only. A network that really is discretisation-
invariant could instead be evaluated on the N-grid itself, where it sees the fine state (the
noise above the n0 band included), and only its answer be band-limited:
    D_N(y, t) = U_N P_n0 D_net(y, t)   (D_net: the network's Tweedie denoiser run on the N-grid),
    a = g (m D_N - y) / s^2.
This script samples each checkpoint on the N-grid (default 56) three ways with the same seed and
noise: native-bl, this "operator on the fine grid" variant, and the raw native ablation, and prints
the MMD of each against as many MNIST test images resized to N, beside the real-vs-real floor.
The variant costs a network evaluation on the N-grid per step, like raw native.
"""
import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sde  # noqa: E402
import test as evaluation  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from resample import fourier_resample, truncate_noise  # noqa: E402
from bench.resolution import prior_label  # noqa: E402
from utils import load_checkpoint, run_main, versions  # noqa: E402


class FineGridOperatorScore(nn.Module):
    """a = g (m U_N P_n0 D_net(y, t) - y) / s^2 with the network's denoiser evaluated on y's own grid."""

    def __init__(self, score_net, n0):
        super().__init__()
        self.score_net, self.n0 = score_net, n0

    def forward(self, y, t):
        m, s, g = (v.reshape(-1, 1, 1, 1) for v in (sde.mean_coef(t), sde.noise_std(t), sde.beta(t).sqrt()))
        band = fourier_resample(truncate_noise(sde.tweedie_denoise(self.score_net, y, t), self.n0), y.shape[-1])
        return g * (m * band - y) / s**2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--resolution", type=int, default=56)
    parser.add_argument("--num_samples", type=int, default=250)
    parser.add_argument("--sampler", default="ancestral")
    parser.add_argument("--num_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_root", default=None, help="MNIST root (default: each run's own)")
    parser.add_argument("--output", default="results/native_operator.md")
    args = parser.parse_args()
    n, count = args.resolution, args.num_samples
    lines = ["# An operator's own fine-grid denoiser against native-bl", "",
             f"Command: `python bench/native_operator.py {' '.join(sys.argv[1:])}`; N = {n}, n = {count}, "
             f"{args.sampler} {args.num_steps} steps, seed {args.seed}; torch {versions()['torch']}, CPU. "
             f"MMD against {count} MNIST test digits resized to N; floor: as many training digits.", "",
             "| model / prior | native-bl | operator on the N-grid, band-limited | native (ablation) | floor |",
             "|---|---|---|---|---|"]
    for path in args.checkpoints:
        state = load_checkpoint(path)
        model, prior, config = evaluation.restore(state, torch.device("cpu"))
        n0 = config["input_height"]
        refs = evaluation.References(args.data_root or evaluation.trained_data_root(state), n0,
                                     args.seed)
        test_high, train_high = refs.images("test", count, n)[1], refs.images("train", count, n)[1]

        def draw(net, mode):
            return sde.generate(net, prior, count, n0, mode=mode, seed=args.seed, num_steps=args.num_steps,
                                sampler=args.sampler, tweedie=True, resolution=n, show_progress=False)

        figures = [riesz_mmd(draw(model, "native-bl"), test_high),
                   riesz_mmd(draw(FineGridOperatorScore(model, n0), "native"), test_high),
                   riesz_mmd(draw(model, "native"), test_high), riesz_mmd(train_high, test_high)]
        lines.append(f"| {state['model_name']} / {prior_label(state['prior_config'])} | "
                     + " | ".join(f"{f:.4f}" for f in figures) + " |")
        print(lines[-1], flush=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
