"""Why the probability-flow ODE (Heun) fails for a network: where along sigma its trajectories leave the data.

    python bench/ode_diagnosis.py --checkpoints runs/reproduce/cpu/unet_standard_s0/last.pt \
        runs/reproduce/cpu/cno_standard_s0/last.pt --data_root ../shared/data

For each checkpoint: Heun on the sigma grid (the sampler of `sde.heun_ode`, written out here so
that every step can be looked at), --num_samples trajectories. A trajectory counts as "noise"
when its final image has a pixel standard deviation above --noise_std (MNIST digits: about 0.3;
the UNet's failed samples: about 1.2). Per step it prints the pixel standard deviation of the
denoiser output D(x~, sigma) for the trajectories that end as digits and those that end as
noise, and it samples again with D clipped to the data range [0, 1].
Writes results/ode_diagnosis.md.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import sde  # noqa: E402
import test as evaluation  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from priors import PerSampleGenerator  # noqa: E402
from utils import load_checkpoint, run_main, versions  # noqa: E402


class ClippedDenoiser(torch.nn.Module):
    """The score whose denoiser is the network's clipped to [lo, hi]: a = g (m clip(D) - y) / s^2."""

    def __init__(self, net, lo=0.0, hi=1.0):
        super().__init__()
        self.net, self.lo, self.hi = net, lo, hi

    def forward(self, y, t):
        m, s, g = (v.reshape(-1, 1, 1, 1) for v in (sde.mean_coef(t), sde.noise_std(t), sde.beta(t).sqrt()))
        return g * (m * sde.tweedie_denoise(self.net, y, t).clamp(self.lo, self.hi) - y) / s**2


@torch.inference_mode()
def heun_trace(model, prior, count, steps, seed):
    """(final images, [(sigma, per-sample pixel std of D)]) of Heun's method with the final denoiser."""
    x, sigmas, run = sde._start_on_sigma_grid("heun", prior, (count, 1, 28, 28), steps, True, None,
                                              PerSampleGenerator(seed, 0, count), None)
    trace = []
    for i in range(run):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        denoised = sde.denoise_at_sigma(model, x, sigma)
        trace.append((sigma, denoised.flatten(1).std(1)))
        slope = (x - denoised) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        if sigma_next > 0:
            x = x + (sigma_next - sigma) * 0.5 * (slope + (x_euler - sde.denoise_at_sigma(model, x_euler, sigma_next))
                                                  / sigma_next)
        else:
            x = x_euler
    return x.clamp(0, 1), trace


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--num_samples", type=int, default=300)
    parser.add_argument("--num_steps", type=int, default=13, help="Heun steps (2N - 1 score evaluations)")
    parser.add_argument("--noise_std", type=float, default=0.45, help="a final pixel std above this is noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_root", default=None, help="MNIST root (default: each run's own)")
    parser.add_argument("--output", default="results/ode_diagnosis.md")
    args = parser.parse_args()
    lines = ["# The probability-flow ODE, step by step", "",
             f"Command: `python bench/ode_diagnosis.py {' '.join(sys.argv[1:])}`; Heun {args.num_steps} steps "
             f"({2 * args.num_steps - 1} score evaluations), n = {args.num_samples} against as many MNIST test "
             f"images (seed {args.seed}); torch {versions()['torch']}, CPU.", ""]
    for path in args.checkpoints:
        state = load_checkpoint(path)
        model, prior, config = evaluation.restore(state, torch.device("cpu"))
        root = args.data_root or evaluation.trained_data_root(state)
        test = data.load_mnist(root, train=False, quiet=True)
        order = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(args.seed))
        reference = data.training_images(test.images[order[:args.num_samples]], config["input_height"])
        images, trace = heun_trace(model, prior, args.num_samples, args.num_steps, args.seed)
        noise = images.flatten(1).std(1) > args.noise_std
        clipped = sde.generate(ClippedDenoiser(model), prior, args.num_samples, config["input_height"],
                               seed=args.seed, num_steps=args.num_steps, sampler="heun", tweedie=True,
                               show_progress=False)
        ancestral = sde.generate(model, prior, args.num_samples, config["input_height"], seed=args.seed,
                                 num_steps=2 * args.num_steps - 1, sampler="ancestral", show_progress=False)
        name = f"{state['model_name']} / {state['prior_config']['name']} ({path})"
        lines += [f"## {name}", "",
                  f"MMD: Heun {riesz_mmd(images, reference):.4f} ({int(noise.sum())} of {args.num_samples} "
                  f"samples are noise); Heun with D clipped to [0, 1] {riesz_mmd(clipped, reference):.4f} "
                  f"({int((clipped.flatten(1).std(1) > args.noise_std).sum())} noise); ancestral with the same "
                  f"number of evaluations {riesz_mmd(ancestral, reference):.4f}.", "",
                  "| sigma | pixel std of D, trajectories ending as digits | ending as noise |", "|---|---|---|"]
        for sigma, spread in trace:
            bad = f"{spread[noise].mean():.3f}" if noise.any() else "-"
            lines.append(f"| {sigma:.4f} | {spread[~noise].mean():.3f} | {bad} |")
        lines.append("")
        print("\n".join(lines[-len(trace) - 6:]), flush=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    run_main(main)
