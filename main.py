"""Train a score network of an infinite-dimensional diffusion model on MNIST.

    python main.py --model cno --prior_name standard --subset 1

Writes a run folder OUT_DIR/SAVE_MODEL/ with config.json, log.csv, sample grids,
last.pt (every epoch) and best.pt (best validation MMD at n0). See --help.
"""
import argparse
import csv
import dataclasses
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import data
import models
import models.fno as fno_layout
import priors
import sde
from mmd import riesz_mmd
from resample import fourier_resample
from utils import (CHECKPOINT_FORMAT, ArgumentParser, Distributed, UserError, atomic_torch_save, bf16_hardware,
                   check_dtypes, check_writable_dir, ensure_writable_dir, first_line, load_checkpoint, progress_bar,
                   resolve_device, run_main, save_grid, timestamp, versions, write_json)


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Every option of a training run; saved in config.json and in each checkpoint."""

    model: str = _opt("cno", "score network", choices=list(models.MODELS))
    profile: str = _opt("small", "model size: 'small' trains on a laptop CPU, 'paper' is the "
                                 "reference size for a GPU", choices=["small", "paper"])
    model_arg: list = _opt(None, "override one constructor argument of the model, KEY=VALUE "
                                 "(repeatable), e.g. --model_arg ch=48 --model_arg ch_mult=1,2",
                           action="append", metavar="KEY=VALUE")
    prior_name: str = _opt("standard", "prior covariance (noise operator A), see docs/conventions.md",
                           choices=list(priors.PRIORS))
    laplacian: str = _opt("stencil", "symbol of -Lap for lap_conv/combined_conv: 5-point 'stencil' "
                                     "with h=1/n (reference at n0) or 'spectral' (2 pi |k|)^2 "
                                     "(exactly resolution-consistent)", choices=["stencil", "spectral"])
    lap_dc: str = _opt("finite", "mean (DC) mode of lap_conv: 'finite' variance (default) or "
                                 "'zero' (the reference's unnoised mean)", choices=["finite", "zero"])
    matern_s: float = _opt(0.75, "exponent s of the matern prior A = (c - Lap)^(-s); s > 1/2")
    matern_c: float = _opt(4 * math.pi**2, "shift c > 0 of the matern prior")
    prior_seed: int = _opt(0, "seed of the random multipliers of the fno and combined_conv priors: fixed "
                              "(not --seed), so runs with different --seed share one prior, as the protocol asks")
    dataset: str = _opt("mnist", "the training images: 'mnist', or 'microstructure' (level cuts of a Gaussian "
                                 "random field, generated and exact on every grid dividing its fine grid; "
                                 "docs/microstructure.md)", choices=list(data.DATASETS))
    dataset_option: list = _opt(None, "an option of the dataset, KEY=VALUE (repeatable); microstructure: "
                                      + ", ".join(f"{k} ({v})" for k, v in data.MICROSTRUCTURE_DEFAULTS.items()),
                                action="append", metavar="KEY=VALUE")
    seed: int = _opt(0, "one seed (>= 0) for the data split, model init, training noise and "
                        "validation sampling (the random priors have --prior_seed)")
    subset: int = _opt(0, "1: train on the reference's reduced set (5,000 train + 1,000 "
                          "validation images); 0: all training images", choices=[0, 1])
    train_limit: int = _opt(0, "use only the first N training images of the split (0: all); for "
                               "quick checks")
    input_height: int = _opt(28, "training resolution n0 (images are n0 x n0, n0 >= 4); below MNIST's 28 "
                                 "the 28 training images reduced to n0 by Fourier truncation")
    levels: str = _opt("", "multilevel training: a schedule GRID:SHARE[:BATCH],... of rising grids ending at "
                           "--input_height, e.g. 14:0.75,28:0.25 or 7:0.5,14:0.25,28:0.25. SHARE: the fraction "
                           "of --minutes (if set, else of --n_epochs) spent on that grid; BATCH: its batch size "
                           "(default --batch_size). Each level trains the same network, optimizer, EMA and "
                           "schedule on the training images reduced to its grid (Fourier truncation), with "
                           "the prior's noise drawn at --input_height and truncated (the resample law). "
                           "Empty: one level, --input_height")
    level_ema: str = _opt("restart", "the EMA at a level switch: 'restart' (it starts again from the weights "
                                     "of the switch, with its warm-up) or 'carry' (it keeps averaging)",
                          choices=["restart", "carry"])
    level_lr: str = _opt("final", "the learning-rate schedule of a multilevel run: 'final' (the peak rate "
                                  "through the coarse levels, --lr_schedule spans the final level) or "
                                  "'global' (--lr_schedule spans the whole run)", choices=["final", "global"])
    grid_conditioning: str = _opt("physical", "what the network is told on a grid other than n0 (coarse "
                                              "levels, raw native sampling): 'physical' the time t, the same "
                                              "physical noise on every grid; 'pixel' the grid's per-pixel "
                                              "noise level, as if the grid were n0 (sde.ScoreModel)",
                                  choices=list(sde.ScoreModel.GRID_CONDITIONINGS))
    n_epochs: int = _opt(20, "number of training epochs (with --minutes: the most epochs)")
    minutes: float = _opt(0.0, "training budget in minutes of training time (validation not counted); "
                               "0: none. Training stops when it is spent, validates and writes a valid "
                               "checkpoint; the learning-rate schedule spans the budget")
    lr_schedule: str = _opt("constant", "learning rate over the run: 'constant', or 'cosine' (decays to 0 "
                                        "at the end of --minutes, else of --n_epochs)",
                            choices=["constant", "cosine"])
    warmup_steps: int = _opt(0, "linear learning-rate warm-up over this many steps (0: none)")
    parametrization: str = _opt("noise", "what the network outputs: 'noise' (eta; the score is "
                                         "a = -g/s net), 'score' (a = net, the reference) or 'edm' (a "
                                         "denoiser with EDM's preconditioning and loss weight)",
                                choices=list(sde.ScoreModel.PARAMETRIZATIONS))
    t_sampling: str = _opt("uniform", "training times: 'uniform' t ~ U(eps, 1) (the reference) or "
                                      "'lognormal' (EDM's log-normal noise levels, median sigma 0.17; "
                                      "with --parametrization edm this is EDM's training exactly; for the FNO "
                                      "it scored worse, docs/results.md)",
                           choices=list(sde.T_SAMPLINGS))
    lr: float = _opt(1e-3, "Adam learning rate")
    batch_size: int = _opt(64, "training batch size per process; under torchrun the global batch "
                               "is batch_size x number of processes")
    ema_decay: float = _opt(0.999, "decay of the exponential moving average of the weights used "
                                   "for sampling (0 disables EMA)")
    ema_std: float = _opt(0.0, "EDM2's power-function EMA (Karras et al. 2024) in place of the exponential "
                               "one: its relative standard deviation sigma_rel, e.g. 0.10 (a weight t^gamma on "
                               "step t; at most 1/sqrt(12) = 0.289, the plain mean); 0: off")
    amp: str = _opt("auto", "bfloat16 autocast for the training forward pass (the loss reduced in float32; "
                           "sampling stays in float32): '1' on, '0' off, 'auto' on for the UNet where bf16 has "
                           "units of its own (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16: 1.5x more "
                           "UNet steps a minute on this project's CPU, results/speed.md), off elsewhere "
                           "(emulated bf16 was 2.6x slower) and for the FNO and the CNO (not better at equal "
                           "minutes, docs/results.md); config.json records what auto chose",
                    choices=["auto", "0", "1"])
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: no clipping; the norm "
                                 "is logged either way)")
    sampler: str = _opt("auto", "sampler of the validation samples: 'auto' (test.py's default for the "
                                "network: 25 score evaluations, sde.AUTO_SAMPLERS), 'em' "
                                "(Euler-Maruyama, the reference's), 'heun', 'ancestral' or 'dpm2m'",
                        choices=["auto", *sde.SAMPLERS])
    num_steps: int = _opt(0, "steps of the validation sampler (0: 200 for a named sampler, the "
                             "network's for auto); sampler and steps are fixed for a run (--resume "
                             "keeps them)")
    num_samples_mmd: int = _opt(256, "samples (and validation images) for the validation MMD")
    val_every: int = _opt(5, "validate (MMD at n0 and 2 n0, sample grid) every k epochs and at "
                             "the end; 0: only at the end")
    sample_batch_size: int = _opt(0, "batch size of the sampler (0: automatic, a fixed pixel "
                                     "budget on a CPU, 1,000 on a GPU)")
    data_root: str = _opt("./data", "MNIST root (torchvision layout); downloaded there if "
                                    "possible, else the bundled 5,000-digit sample is used")
    out_dir: str = _opt("runs", "folder that holds run folders")
    save_model: str = _opt(None, "run name: the run folder is OUT_DIR/SAVE_MODEL (default: "
                                 "MODEL_PRIOR_sSEED_TIMESTAMP); an existing run is never "
                                 "overwritten, use --resume to continue it")
    resume: bool = _opt(False, "continue the run OUT_DIR/SAVE_MODEL from its last.pt",
                        action="store_true")
    device: str = _opt("auto", "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    threads: int = _opt(0, "CPU threads for torch (0: torch's default)")
    progress: int = _opt(1, "1: show progress bars; 0: quiet", choices=[0, 1])

    # flags that may change when a run is resumed (the rest must match the checkpoint)
    RESUMABLE_CHANGES = ("n_epochs", "minutes", "device", "threads", "progress", "resume", "val_every",
                         "data_root", "out_dir", "sample_batch_size", "amp")


def build_parser():
    parser = ArgumentParser(
        description="Train a score network (UNet, FNO or CNO) of a function-space diffusion model "
                    "on MNIST at n0 x n0 and validate it at n0 and 2 n0 with the Riesz MMD.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        kwargs = {"help": meta.pop("help"), "default": f.default}
        if meta.get("action") == "store_true":
            kwargs.update(action="store_true")
        elif meta.get("action") == "append":
            kwargs.update(action="append", metavar=meta.get("metavar"))
        else:
            kwargs.update(type=type(f.default) if f.default is not None else
                          (int if f.name == "prior_seed" else str))
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def explicit_flags(argv):
    """Names of the options given on the command line (to compare with a checkpoint)."""
    names = set()
    for arg in argv:
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0])
    return names


def validate(config):
    """Refuse bad values with one line naming the flag."""
    positive = ["input_height", "n_epochs", "batch_size", "num_samples_mmd"]
    for name in positive:
        if getattr(config, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(config, name)}")
    for name in ["train_limit", "val_every", "threads", "sample_batch_size", "warmup_steps", "seed", "num_steps"]:
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(config, name)}")
    if not config.lr > 0 or not math.isfinite(config.lr):
        raise UserError(f"--lr must be a positive number, got {config.lr}")
    if not (config.minutes >= 0 and math.isfinite(config.minutes)):
        raise UserError(f"--minutes must be >= 0, got {config.minutes}")
    if not 0 <= config.ema_decay < 1:
        raise UserError(f"--ema_decay must be in [0, 1), got {config.ema_decay}")
    if not 0 <= config.ema_std <= 12 ** -0.5:
        raise UserError(f"--ema_std must be in [0, {12 ** -0.5:.4f}] (0: off), got {config.ema_std}")
    if config.grad_clip < 0:
        raise UserError(f"--grad_clip must be >= 0, got {config.grad_clip}")
    if config.input_height < MIN_GRID:
        raise UserError(f"--input_height must be at least {MIN_GRID}, got {config.input_height}")
    parse_levels(config.levels, config.input_height, config.batch_size)
    if config.prior_name == "matern" and not config.matern_s > 0.5:
        raise UserError(f"--matern_s must be > 1/2 (trace class), got {config.matern_s}")
    if config.prior_name == "matern" and not config.matern_c > 0:
        raise UserError(f"--matern_c must be > 0, got {config.matern_c}")
    try:
        overrides = models.parse_model_args(config.model_arg)
        kwargs = models.model_kwargs(config.model, config.profile, overrides)
    except ValueError as error:
        raise UserError(f"--model_arg: {error}")
    grids = [level.grid for level in parse_levels(config.levels, config.input_height, config.batch_size)]
    probe_network(config.model, kwargs, grids)
    options = data.dataset_options(config.dataset, config.dataset_option)
    if config.dataset == "microstructure":
        fine = options["fine"]
        for n in grids + [2 * config.input_height]:
            if fine % n:
                raise UserError(f"--input_height / --levels: microstructure grids (and 2 n0, the validation's) must "
                                f"divide the fine grid {fine} (--dataset_option fine), got {n}")


def probe_network(name, kwargs, grids):
    """Build the network and run it once on each training grid, so that constructor arguments it cannot
    take (--model_arg ch=-3, a grid too small for its levels) are refused in one line before the run."""
    try:
        net = models.build_model(name, **kwargs)
        with torch.no_grad():
            for n in grids:
                out = net(torch.zeros(1, 1, n, n), torch.full((1,), 0.5))
                if out.shape != (1, 1, n, n):
                    raise ValueError(f"it answers {tuple(out.shape)} for (1, 1, {n}, {n})")
    except Exception as error:  # whatever the layers raise for arguments they cannot take
        raise UserError(f"--model_arg / --input_height: the {name} with {kwargs} does not run on the grids "
                        f"{grids} ({first_line(error)})") from error


MIN_GRID = 4  # the coarsest grid a run trains on


@dataclass(frozen=True)
class Level:
    """One grid of a multilevel schedule: its size, its share of the budget, its batch size."""

    grid: int
    share: float
    batch_size: int


def parse_levels(text, n0, batch_size):
    """--levels 'GRID:SHARE[:BATCH],...' -> [Level, ...]; '' -> one level, n0 with all of the budget.
    UserError (naming --levels) unless the grids rise from >= MIN_GRID to n0 and the shares are
    positive and sum to 1."""
    if not text.strip():
        return [Level(n0, 1.0, batch_size)]
    levels = []
    for item in text.split(","):
        fields = item.strip().split(":")
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            grid, share = int(fields[0]), float(fields[1])
            batch = int(fields[2]) if len(fields) == 3 else batch_size
        except ValueError:
            raise UserError(f"--levels {text!r}: expected GRID:SHARE[:BATCH] items separated by commas, e.g. "
                            f"14:0.75,28:0.25; {item.strip()!r} is not one") from None
        if grid < MIN_GRID:
            raise UserError(f"--levels {text!r}: grid {grid} is below the coarsest allowed, {MIN_GRID}")
        if not (math.isfinite(share) and share > 0):
            raise UserError(f"--levels {text!r}: share {fields[1]} of grid {grid} must be a positive fraction")
        if batch <= 0:
            raise UserError(f"--levels {text!r}: batch size {batch} of grid {grid} must be positive")
        levels.append(Level(grid, share, batch))
    grids = [level.grid for level in levels]
    if any(coarse >= fine for coarse, fine in zip(grids, grids[1:])):
        raise UserError(f"--levels {text!r}: the grids must rise from coarse to fine, got {grids}")
    if grids[-1] != n0:
        raise UserError(f"--levels {text!r}: the last grid must be the training grid --input_height {n0}, "
                        f"got {grids[-1]}")
    total = sum(level.share for level in levels)
    if abs(total - 1) > 1e-6:
        raise UserError(f"--levels {text!r}: the shares must sum to 1, they sum to {total:g}")
    return levels


def prior_options(config):
    """Constructor options of the chosen prior, from the flags."""
    seed = config.seed if config.prior_seed is None else config.prior_seed  # None: checkpoints from before the fixed default
    return {
        "standard": {},
        "lap_conv": {"laplacian": config.laplacian, "dc": config.lap_dc},
        "fno": {"prior_seed": seed},
        "combined_conv": {"prior_seed": seed, "laplacian": config.laplacian, "dc": config.lap_dc},
        "matern": {"s": config.matern_s, "c": config.matern_c},
    }[config.prior_name]


# ---------------------------------------------------------------- the run

def ema_with_warmup(decay):
    """EMA update theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + k) / (10 + k)).

    k = updates so far. The warm-up keeps the average from clinging to the initial
    weights (whose score is 0) in short runs: with d = 0.999 from the start, a run of
    400 steps would still sample with 67% of the initialisation.
    """
    def update(ema_params, params, num_averaged):
        k = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1 - min(decay, (1 + k) / (10 + k)))
    return update


def power_ema_exponent(sigma_rel):
    """EDM2's gamma for a relative standard deviation sigma_rel of the averaging profile t^gamma:
    the largest real root of sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)), i.e. of
    s g^3 + 7 s g^2 + (16 s - 1) g + (12 s - 1) = 0 with s = sigma_rel^2 (Karras et al. 2024, eq. 3)."""
    import numpy as np

    s = sigma_rel ** 2
    roots = np.roots([s, 7 * s, 16 * s - 1, 12 * s - 1])
    return float(max(root.real for root in roots if abs(root.imag) < 1e-9))


def power_ema(gamma):
    """EDM2's power-function EMA: theta_ema <- b_t theta_ema + (1 - b_t) theta, b_t = (1 - 1/t)^(gamma + 1),
    t = 1, 2, ... the weights averaged so far (t = 1 copies them), so that step tau weighs about tau^gamma."""
    def update(ema_params, params, num_averaged):
        t = float(num_averaged) + 1
        torch._foreach_lerp_(ema_params, params, 1 - (1 - 1 / t) ** (gamma + 1))
    return update


def ema_update(config):
    """The EMA update main.py trains with: the power function (--ema_std), else the exponential one."""
    return power_ema(power_ema_exponent(config.ema_std)) if config.ema_std > 0 else ema_with_warmup(config.ema_decay)


class Run:
    """Everything a training run holds: data, prior, model, EMA, optimizer, RNG, history."""

    def __init__(self, config, device, dist=None):
        self.config, self.device = config, device
        self.dist = dist or Distributed()
        torch.manual_seed(config.seed)
        self.prior = priors.build_prior(config.prior_name, config.input_height,
                                        **prior_options(config)).to(device)
        overrides = models.parse_model_args(config.model_arg)
        self.model_kwargs = models.model_kwargs(config.model, config.profile, overrides)
        self.dataset_options = data.dataset_options(config.dataset, config.dataset_option)
        self.model = sde.ScoreModel(models.build_model(config.model, **self.model_kwargs),
                                    config.parametrization, self.prior.pixel_variance(),
                                    data.sigma_data(config.dataset, self.dataset_options),
                                    grid_conditioning=config.grid_conditioning,
                                    grid_variance=self.prior.pixel_variance).to(device)
        self.ema = None
        if config.ema_decay > 0 or config.ema_std > 0:
            self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=ema_update(config))
        self.trained = self.model  # what the loss calls: the DDP wrapper under torchrun
        if self.dist.active:
            ids = [device.index] if device.type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        # shared by all ranks: each takes its slice of every global batch (see train_epoch)
        self.data_generator = torch.Generator().manual_seed(config.seed + 1)
        self.noise_generator = torch.Generator().manual_seed(config.seed + 2)
        self.epoch, self.step, self.best_mmd, self.history = 0, 0, math.inf, []
        self.train_seconds = 0.0  # time spent in training steps (validation not counted), for --minutes
        self.data_source, self.train_images = None, None  # where the training images came from, how many
        self.levels = parse_levels(config.levels, config.input_height, config.batch_size)
        self.level_index = 0  # the level the last step trained on
        self.level_stats = [{"grid": level.grid, "batch_size": level.batch_size, "steps": 0, "seconds": 0.0}
                            for level in self.levels]
        self.trace, self._pending = [], None  # the training loss against time, TRACE_EVERY steps a point
        self.level_end_steps = None  # without --minutes: the step at which each level ends (plan_levels)

    def plan_levels(self, num_images):
        """Without --minutes, level i trains share_i x n_epochs epochs of its own batches (at least one
        step each): it ends at the step level_end_steps[i] (cumulative). One level: n_epochs x its batches
        per epoch. With --minutes the plan still counts --n_epochs, which may end a run first."""
        ends, total = [], 0
        for level in self.levels:
            batches = len(global_batches(num_images, level.batch_size, self.dist.world))
            steps = round(level.share * self.config.n_epochs * batches)
            total += steps if len(self.levels) == 1 else max(1, steps)
            ends.append(total)
        self.level_end_steps = ends

    @property
    def planned_steps(self):
        return max(1, self.level_end_steps[-1])

    def run_fraction(self):
        """Fraction of the run done: of --minutes if set (of a multilevel run: of --minutes or of the
        planned steps of --n_epochs, whichever is further, as either ends the run), else of the planned
        steps."""
        steps = self.step / self.planned_steps
        if self.config.minutes <= 0:
            return steps
        minutes = self.train_seconds / (60 * self.config.minutes)
        return max(minutes, steps) if len(self.levels) > 1 else minutes

    def level_ends(self):
        """The fraction of the run at which each level ends: the cumulative shares of --minutes, or the
        planned steps' (rounded to whole steps, `plan_levels`)."""
        if self.config.minutes > 0:
            return list(itertools.accumulate(level.share for level in self.levels))
        return [end / self.planned_steps for end in self.level_end_steps]

    def level_now(self):
        """Index of the level the next step trains on. Never back to a coarser one: a run resumed with a
        longer budget has its levels' ends moved, but the grid it reached stays."""
        done, ends = self.run_fraction(), self.level_ends()
        reached = next((i for i, end in enumerate(ends[:-1]) if done < end), len(self.levels) - 1)
        return max(reached, self.level_index)

    def schedule_progress(self):
        """Fraction of the learning-rate schedule done: of the run, or with --level_lr final (and more
        than one level) of the final level, 0 before it."""
        done = self.run_fraction()
        if len(self.levels) == 1 or self.config.level_lr == "global":
            return done
        start = self.level_ends()[-2]
        return 1.0 if start >= 1 else max(0.0, (done - start) / (1 - start))

    def enter_level(self):
        """The Level of the next step; at a switch the EMA restarts (--level_ema restart) and a line says so."""
        index = self.level_now()
        if index != self.level_index:
            self._flush_trace()
            self.level_index = index
            if self.ema is not None and self.config.level_ema == "restart":
                self.ema.n_averaged.zero_()  # the next update copies the weights, then warms up again
            if self.dist.is_main:
                level = self.levels[index]
                tqdm.write(f"level {index + 1}/{len(self.levels)}: grid {level.grid}, batch {level.batch_size}, "
                           f"from step {self.step} ({self.train_seconds / 60:.1f} min of training)")
        return self.levels[index]

    TRACE_EVERY = 25

    def record_step(self, seconds, loss):
        """Count the step for its level, and the loss in the trace (a point per TRACE_EVERY steps)."""
        stats = self.level_stats[self.level_index]
        stats["steps"] += 1
        stats["seconds"] += seconds
        if self._pending is None:
            self._pending = {"grid": self.levels[self.level_index].grid, "steps": 0, "loss": 0.0}
        self._pending["steps"] += 1
        self._pending["loss"] += loss
        if self._pending["steps"] == self.TRACE_EVERY:
            self._flush_trace()

    def _flush_trace(self):
        """Close the trace's open point: the mean loss of its steps, at the step and minutes it ends."""
        if self._pending:
            steps = self._pending["steps"]
            self.trace.append({"step": self.step, "minutes": self.train_seconds / 60, "grid": self._pending["grid"],
                               "steps": steps, "loss": self._pending["loss"] / steps})
        self._pending = None

    @property
    def finished(self):
        """--minutes: the budget is spent or --n_epochs reached; otherwise the planned steps are done."""
        if self.config.minutes > 0:
            return self.budget_spent or self.epoch >= self.config.n_epochs
        return self.step >= self.planned_steps

    def _adopt_optimizer_layouts(self):
        """Adam's moments saved for a parameter whose layout has changed since (the FNO's spectral
        weight was channel first) are brought into the parameter's layout, as the weight itself is."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                for key, value in self.optimizer.state.get(param, {}).items():
                    if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                        self.optimizer.state[param][key] = fno_layout.modes_first(value, param.shape)

    @property
    def budget_spent(self):
        return self.config.minutes > 0 and self.train_seconds >= 60 * self.config.minutes

    @property
    def sampling_model(self):
        return self.ema.module if self.ema is not None else self.model

    def state(self):
        return {
            "format_version": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "model_name": self.config.model,
            "model_kwargs": self.model_kwargs,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "prior_config": self.prior.config(),
            "data_source": self.data_source,
            "data_root_abs": os.path.abspath(self.config.data_root),
            "train_images": self.train_images,
            "prior": self.prior.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best_mmd": self.best_mmd,
            "history": self.history,
            "level_index": self.level_index,
            "level_stats": self.level_stats,
            "trace": self.trace,
            "rng": {"data": self.data_generator.get_state(), "noise": self.noise_generator.get_state(),
                    "torch": torch.get_rng_state()},
            "versions": versions(),
        }

    def load_state(self, state):
        check_dtypes(self.model, state["model"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            check_dtypes(self.ema, state["ema"])
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._adopt_optimizer_layouts()
        self.prior.load_state_dict(state["prior"])
        self.epoch, self.step = state["epoch"], state["step"]
        # checkpoints from before the budget existed: the epochs' seconds (validation included)
        self.train_seconds = state.get("train_seconds", sum(float(row["seconds"]) for row in state["history"]))
        self.best_mmd, self.history = state["best_mmd"], list(state["history"])
        self.level_index = state.get("level_index", 0)  # checkpoints from before multilevel training: one level
        if "level_stats" in state:
            self.level_stats = [dict(stats) for stats in state["level_stats"]]
        else:
            self.level_stats[0].update(steps=self.step, seconds=self.train_seconds)
        self.trace = list(state.get("trace", []))
        self.data_generator.set_state(state["rng"]["data"])
        self.noise_generator.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])


class TrainingDiverged(RuntimeError):
    pass


FAULT_ENV = "FSDIFF_FAULT_NAN_AT_STEP"  # test hook: the loss of this (1-based) step becomes NaN


def _injected_fault(step):
    return os.environ.get(FAULT_ENV, "") == str(step)


def training_clock():
    """Seconds, for the --minutes budget (its own name, so a test can replace the clock)."""
    return time.perf_counter()


def learning_rate(config, step, progress):
    """The learning rate of step `step` (0-based), `progress` in [0, 1] the fraction of the run done:
    lr * min(1, (step + 1) / warmup_steps) (linear warm-up), times 1/2 (1 + cos(pi progress)) for
    the cosine schedule, which so reaches 0 at the end of the budget (--minutes) or of --n_epochs."""
    rate = config.lr
    if config.warmup_steps:
        rate *= min(1.0, (step + 1) / config.warmup_steps)
    if config.lr_schedule == "cosine":
        rate *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return rate


def global_batches(num_images, batch_size, world):
    """Start offsets of the global batches (world * batch_size images) of one epoch.

    Under torchrun an incomplete last global batch is dropped, so every rank gets a
    slice of equal size; a single process keeps its last, smaller batch.
    """
    step = batch_size * world
    end = num_images - num_images % step if world > 1 else num_images
    return range(0, end, step)


def train_epoch(run, level_images, progress=True):
    """One pass over the training images in a seeded order; returns (mean loss, mean grad norm).

    level_images: {grid: the training images on that grid}; each batch is taken on the grid of the
    level the run is in (Run.enter_level), with that level's batch size, and its noise is drawn at n0
    and truncated to the grid (sde.dsm_loss's noise_grid). Every rank draws the same permutation
    (the role of a DistributedSampler with set_epoch) and takes slice `rank` of each global batch;
    the noise is drawn for the global batch and sliced the same way (sde.dsm_loss), so W processes
    with batch B follow the same trajectory as one process with batch W * B. Under torchrun an
    incomplete last global batch is dropped (`global_batches`).
    """
    config, dist = run.config, run.dist
    num_images = len(level_images[config.input_height])
    order = torch.randperm(num_images, generator=run.data_generator)
    losses, norms = [], []
    run.epoch_loads = []  # the CPU's load at every step: a short overlap with other work shows too
    run.model.train()
    bar = progress_bar(total=num_images, leave=False, desc=f"epoch {run.epoch + 1}/{config.n_epochs}", unit="img",
                       disable=not (progress and dist.is_main))
    position = 0
    while position < num_images:
        level = run.enter_level()
        global_batch = level.batch_size * dist.world
        if dist.world > 1 and num_images - position < global_batch:
            break
        started = training_clock()
        chunk = order[position:position + global_batch]
        position += len(chunk)
        share = math.ceil(len(chunk) / dist.world)
        images = level_images[level.grid]
        x0 = images[chunk[dist.rank * share:(dist.rank + 1) * share]].to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=config.amp == "1"):
            loss = sde.dsm_loss(run.trained, x0, run.prior, run.noise_generator, shard=(dist.rank, dist.world),
                                t_sampling=config.t_sampling, noise_grid=config.input_height)
        if _injected_fault(run.step + 1):
            loss = loss * math.nan
        mean_loss = dist.mean(loss.item())
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at step {run.step + 1} (epoch "
                                   f"{run.epoch + 1}); stopped, the last checkpoint is untouched")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
        if not torch.isfinite(norm):
            raise TrainingDiverged(f"gradient norm is {norm.item()} at step {run.step + 1} (epoch "
                                   f"{run.epoch + 1}); stopped, the last checkpoint is untouched")
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, run.step, run.schedule_progress())
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        run.step += 1
        seconds = dist.max(training_clock() - started)  # the ranks agree on the budget
        run.train_seconds += seconds
        run.record_step(seconds, mean_loss)
        losses.append(mean_loss)
        norms.append(norm.item())
        run.epoch_loads.append(cpu_load())
        bar.update(len(chunk))
        # refresh=False: the bar shows it at its next update, so a log gets no line per batch
        bar.set_postfix(loss=f"{losses[-1]:.2f}", grad=f"{norms[-1]:.2f}", grid=level.grid, refresh=False)
        if run.finished:  # the budget or the planned steps end inside the epoch; run_epoch validates
            break
    bar.close()
    return sum(losses) / len(losses), sum(norms) / len(norms)


def validate_run(run, val_low, val_high, folder):
    """Sample at n0, MMD against validation images at n0 and (Fourier-upsampled) at 2 n0.

    Under torchrun each rank samples its share of the batches; rank 0 gathers them
    (the same images a single process would draw), scores and broadcasts the figures.
    """
    config, dist = run.config, run.dist
    n0 = config.input_height
    batch = sde.sampling_batch_size(config.sample_batch_size or None, n0, run.device)
    sampler, steps = sde.resolve_sampler(config.sampler, config.num_steps or None, config.model)
    mine = sde.generate(run.sampling_model, run.prior, len(val_low), n0, upscale=1,
                        seed=config.seed, batch_size=batch, num_steps=steps, sampler=sampler,
                        tweedie=sde.default_tweedie(sampler),
                        device=run.device, desc=f"validation samples {n0}x{n0}",
                        show_progress=bool(config.progress) and dist.is_main,
                        shard=(dist.rank, dist.world))
    parts = dist.gather(mine)
    figures = None
    if dist.is_main:
        samples = sde.interleave_shards(parts, batch)
        upsampled = fourier_resample(samples, 2 * n0).clamp(0, 1)
        save_grid(samples[:64], os.path.join(folder, f"samples_epoch{run.epoch:04d}.png"), nrow=8)
        figures = {"mmd_n0": riesz_mmd(samples, val_low), "mmd_2n0": riesz_mmd(upsampled, val_high)}
    return dist.broadcast(figures)


def cpu_load():
    """The 1-minute load average now ("" where the OS has none): above the torch threads, other
    work shares the CPU and the seconds it is running are not a timing."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else ""


def peak_load(samples):
    """The highest of an epoch's load samples ("" where the OS gave none). The peak, not the last:
    work that ran beside a few minutes of an epoch and ended before it is gone by the epoch's end."""
    numbers = [sample for sample in samples if sample != ""]
    return max(numbers) if numbers else ""


def log_row(folder, row):
    """Append a row to log.csv under its existing header (a log begun by older code keeps its
    columns; fields it lacks are left out), or start the file with this row's fields."""
    path = os.path.join(folder, "log.csv")
    fields = list(row)
    if os.path.exists(path):
        with open(path, newline="") as f:
            fields = next(csv.reader(f), fields)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


def training_split(config, quiet=False):
    """(the dataset's train split, training indices, validation indices): --seed chooses the validation
    images, --train_limit and --num_samples_mmd how many of each."""
    options = data.dataset_options(config.dataset, config.dataset_option)
    digits = data.load_split(config.dataset, options, config.data_root, train=True, quiet=quiet)
    train_idx, val_idx = data.split_indices(digits.count, config.seed, bool(config.subset))
    if config.train_limit:
        train_idx = train_idx[:config.train_limit]
    if config.num_samples_mmd > len(val_idx):
        raise UserError(f"--num_samples_mmd {config.num_samples_mmd} is larger than the "
                        f"{len(val_idx)} validation images")
    return digits, train_idx, val_idx[:config.num_samples_mmd]


def load_training_data(config):
    """(train images, validation images at n0, validation images at 2 n0) as float tensors, and where
    they came from."""
    digits, train_idx, val_idx = training_split(config)
    n0 = config.input_height
    val_low, val_high = digits.references(val_idx, n0, 2 * n0)
    return digits.at_grid(train_idx, n0), val_low, val_high, digits.source


def images_on_levels(config, train_images, grids):
    """{grid: the training images on it} for the levels' grids: on n0 `train_images`; on a coarser grid
    the same functions discretized there (data's `reduce`: MNIST's n0 images Fourier-truncated, the
    microstructures' exact cell averages)."""
    n0 = config.input_height
    if set(grids) == {n0}:
        return {n0: train_images}
    digits, train_idx, _ = training_split(config, quiet=True)
    return {grid: train_images if grid == n0 else digits.reduce(train_idx, train_images, grid) for grid in grids}


def validation_floor(train_images, val_low, seed, draws=4):
    """Real-vs-real MMD at the validation n: the validation images against `draws` seeded
    draws of as many training images (mean). A sampler of the data law scores about this.

    With few validation images it varies from seed to seed (each seed has its own split):
    compare validation curves of one seed with each other, or each with its own floor.
    """
    generator = torch.Generator().manual_seed(seed)
    n = min(len(val_low), len(train_images))
    figures = [riesz_mmd(train_images[torch.randperm(len(train_images), generator=generator)[:n]], val_low)
               for _ in range(draws)]
    return sum(figures) / draws


def prepare_run_folder(config, argv):
    """The run folder's path; refuses to overwrite a run, or to resume with mismatched flags. A new
    run's folder is made only once everything else is checked (in `train`, before config.json)."""
    check_writable_dir(config.out_dir, "--out_dir")
    if config.save_model is None:
        if config.resume:
            raise UserError("--resume needs --save_model NAME (the run to continue)")
        config.save_model = f"{config.model}_{config.prior_name}_s{config.seed}_{timestamp()}"
    if os.sep in config.save_model or config.save_model in ("", ".", ".."):
        raise UserError(f"--save_model {config.save_model!r}: expected a plain run name")
    folder = os.path.join(config.out_dir, config.save_model)
    if config.resume:
        load_checkpoint(os.path.join(folder, "last.pt"))  # refuses a missing or bad file here
        return folder
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise UserError(f"run folder {folder} already exists; pass --resume to continue it or "
                        f"choose another --save_model")
    return folder


def check_same_data(state, source, train_images, folder):
    """A resumed run must go on with the training images it started with (same kind of source,
    full MNIST or the fallback sample, and as many images); checkpoints older than this check
    carry no record and are not checked."""
    if state.get("data_source") is None:
        return
    same_kind = state["data_source"].split()[0] == source.split()[0]
    if not same_kind or state.get("train_images") != train_images:
        raise UserError(f"{folder} was trained on {state['data_source']} ({state.get('train_images')} images); "
                        f"--data_root now gives {source} ({train_images} images): resume with the same data")


FRESH_ON_RESUME = ("device", "threads", "progress", "resume", "out_dir")  # this machine's, never the saved
# what a checkpoint saved before an option existed was trained with, where it differs from today's default
LEGACY_DEFAULTS = {"sampler": "em", "levels": "", "level_ema": "restart", "level_lr": "final",
                   "grid_conditioning": "physical", "dataset": "mnist", "dataset_option": None, "amp": "0"}


def check_resume_flags(config, saved, given):
    """Flags given now must match the checkpoint, except those that may change on resume
    (RESUMABLE_CHANGES); a flag not given takes the saved value (so a run resumed without
    --minutes keeps its budget), except the few that describe this machine (FRESH_ON_RESUME).
    Runs saved before --sampler existed validated with Euler-Maruyama, and keep it: the validation
    sampler is fixed for a run, or best.pt would compare figures of two samplers."""
    saved = {**LEGACY_DEFAULTS, **saved}
    for name, value in saved.items():
        if not hasattr(config, name) or name in FRESH_ON_RESUME:
            continue
        if name not in given:
            setattr(config, name, value)
        elif name not in TrainConfig.RESUMABLE_CHANGES and getattr(config, name) != value:
            raise UserError(f"--{name} {getattr(config, name)} does not match the checkpoint's "
                            f"{value}; drop the flag to resume with the saved value")


# the networks that --amp auto trains in bf16 where the hardware has bf16 units: those it measured better at
# equal minutes (docs/results.md, issue 45's levers: the UNet 1.7x the steps, FD 38.4 -> 29.7, MMD level);
# the FNO gained no steps, the CNO's FD fell (100 -> 78) but its MMD rose (0.0155 -> 0.0182)
BF16_BY_DEFAULT = ("unet",)


def resolve_amp(value, device, model):
    """--amp as the run uses it, '1' or '0': 'auto' is on for the BF16_BY_DEFAULT networks where
    bf16_hardware(device); a checkpoint saved when the flag was an integer gives 0 or 1."""
    if value == "auto":
        return "1" if model in BF16_BY_DEFAULT and bf16_hardware(device) else "0"
    return str(int(value))


def train(config, argv=()):
    """Train according to `config`; returns the Run (its folder is run.folder).

    Under torchrun (WORLD_SIZE > 1) every process runs this; rank 0 alone writes the
    run folder, logs, grids and checkpoints, the others wait for it at barriers.
    """
    dist = Distributed()
    if not config.resume:  # a resumed run is checked once its saved options are in (prepare_run_folder_on_main)
        validate(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    dist.start(device)
    folder, saved = prepare_run_folder_on_main(config, argv, dist)
    config.amp = resolve_amp(config.amp, device, config.model)  # once the saved options are in: '0' or '1'
    train_images, val_low, val_high, source = load_training_data(config)
    if saved is not None:
        check_same_data(saved, source, len(train_images), folder)
    run = Run(config, device, dist)
    run.data_source, run.train_images = source, len(train_images)
    run.plan_levels(len(train_images))
    images_by_grid = images_on_levels(config, train_images, [level.grid for level in run.levels])
    run.val_floor = validation_floor(train_images, val_low, config.seed) if dist.is_main else None
    if saved is not None:
        try:
            run.load_state(saved)
        except Exception as error:  # a damaged state dict: the resume state does not fit this run
            raise UserError(f"{os.path.join(folder, 'last.pt')} does not resume this run ({first_line(error)})") from error
        say(dist, f"resuming {folder} after epoch {run.epoch} (step {run.step})")
    if dist.is_main:
        if not config.resume and os.path.isdir(folder) and os.listdir(folder):  # made meanwhile by another run
            raise UserError(f"run folder {folder} was made by another run meanwhile; choose another --save_model")
        ensure_writable_dir(folder, "--save_model")  # the run starts: its folder is made here, not before
        write_json({"config": dataclasses.asdict(config), "model_kwargs": run.model_kwargs,
                    "parameters": models.count_parameters(run.model), "data": source,
                    "train_images": len(train_images), "world_size": dist.world,
                    "global_batch": config.batch_size * dist.world, "val_floor_n0": run.val_floor,
                    "levels": [dataclasses.asdict(level) for level in run.levels], "versions": versions()},
                   os.path.join(folder, "config.json"))
    say(dist, f"{config.model} ({models.count_parameters(run.model):,} parameters), prior "
              f"{config.prior_name}, {len(train_images)} training images, device {device} (bf16 autocast "
              f"{'on' if config.amp == '1' else 'off'}), "
              f"{dist.world} process(es), global batch {config.batch_size * dist.world}, run {folder}")
    if dist.is_main:
        say(dist, f"validation floor at {config.input_height}: {run.val_floor:.4f} (real vs real, "
                  f"n = {len(val_low)}, mean of 4 draws of training images)")
    if len(run.levels) > 1:
        say(dist, "levels: " + ", ".join(f"{level.grid} ({level.share:g} of the {'minutes' if config.minutes > 0 else 'epochs'}, "
                                         f"batch {level.batch_size})" for level in run.levels))
    while not run.finished:
        run_epoch(run, images_by_grid, val_low, val_high, folder)
    say(dist, f"done: {folder} ({run.step} steps, {run.train_seconds / 60:.1f} min of training"
              f"{', the budget' if run.budget_spent else ''}; best MMD at {config.input_height}: {run.best_mmd:.4f})")
    if len(run.levels) > 1:
        say(dist, "steps per level: " + ", ".join(f"{s['grid']}: {s['steps']} steps in {s['seconds'] / 60:.1f} min"
                                                  for s in run.level_stats))
    dist.stop()
    run.folder = folder
    return run


def say(dist, message):
    if dist.is_main:
        print(message, flush=True)


def prepare_run_folder_on_main(config, argv, dist):
    """prepare_run_folder on rank 0, its verdict on every rank; the saved state to resume."""
    error, folder = None, None
    if dist.is_main:
        try:
            folder = prepare_run_folder(config, argv)
        except UserError as refused:
            error = str(refused)
    error, folder = dist.broadcast((error, folder))
    if error:
        raise UserError(error)
    config.save_model = os.path.basename(folder)
    if not config.resume:
        return folder, None
    path = os.path.join(folder, "last.pt")
    state = load_checkpoint(path)
    check_resume_flags(config, state["config"], explicit_flags(argv))
    try:
        validate(config)
    except UserError:
        raise
    except Exception as error:  # a damaged config: values of the wrong type that the checks cannot compare
        raise UserError(f"{path} holds options this code cannot run ({first_line(error)})") from error
    return folder, state


def run_epoch(run, level_images, val_low, val_high, folder):
    """Train one epoch, validate if due, log, and write the checkpoints (rank 0)."""
    config, dist = run.config, run.dist
    started = time.time()
    try:
        loss, grad_norm = train_epoch(run, level_images, bool(config.progress))
    except TrainingDiverged as error:
        raise UserError(str(error))
    run.epoch += 1
    run._flush_trace()  # the trace's points end at epoch ends too, so a resumed run repeats them
    row = {"epoch": run.epoch, "step": run.step, "grid": run.levels[run.level_index].grid, "loss": loss,
           "grad_norm": grad_norm,
           "seconds": time.time() - started, "mmd_n0": "", "mmd_2n0": "",
           "lr": run.optimizer.param_groups[0]["lr"], "train_minutes": run.train_seconds / 60,
           "load_1min": peak_load(run.epoch_loads + [cpu_load()])}
    improved = False
    last = run.finished
    if last or (config.val_every and run.epoch % config.val_every == 0):
        row.update(validate_run(run, val_low, val_high, folder))
        row["seconds"] = time.time() - started  # training and validation
        improved = row["mmd_n0"] < run.best_mmd
        if improved:
            run.best_mmd = row["mmd_n0"]
    run.history.append(row)  # before saving: best.pt carries the row that made it best
    if dist.is_main:
        log_row(folder, row)
        if improved:
            atomic_torch_save(run.state(), os.path.join(folder, "best.pt"))
        atomic_torch_save(run.state(), os.path.join(folder, "last.pt"))
        mmd_text = (f", MMD {row['mmd_n0']:.4f} @{config.input_height} (floor {run.val_floor:.4f}), "
                    f"{row['mmd_2n0']:.4f} @{2 * config.input_height}" if row["mmd_n0"] != "" else "")
        tqdm.write(f"epoch {run.epoch}: loss {loss:.3f}, grad norm {grad_norm:.2f}, "
                   f"{row['seconds']:.1f} s{mmd_text}")
    dist.barrier()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items()})
    train(config, argv)


if __name__ == "__main__":
    run_main(main, "interrupted; the last checkpoint on disk is intact (continue with --resume and the "
                   "same --save_model)")
