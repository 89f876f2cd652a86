"""Speed benchmark: training step, sampling throughput, peak memory, MMD time.

    python bench/speed.py                  # everything, writes results/speed.md
    python bench/speed.py --only mmd       # one section
    python bench/speed.py --models unet --profiles small
    python bench/speed.py --only reference --reference PATH   # against a clone of the original code

Every figure is the median of --repeats timed runs after one warm-up run, all in
one process, so ratios between rows are measured side by side. Sampling figures
time --sample_steps Euler-Maruyama steps and report images/s for a full 200-step
run (the sampler's cost is linear in the step count). Peak memory is the process's
resident-set high-water mark during the measurement on a CPU (freed heap returned with
malloc_trim, then the mark reset through /proc/self/clear_refs; it includes the ~0.3 GiB
of the Python process and torch itself), torch.cuda.max_memory_allocated on a GPU.
"""
import argparse
import ctypes
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
import sde  # noqa: E402
from mmd import riesz_mmd  # noqa: E402
from priors import build_prior  # noqa: E402
from utils import UserError, first_line, run_main, versions  # noqa: E402

FULL_RUN_STEPS = 200


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats, device):
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    try:  # hand freed heap back to the OS, so an earlier, larger model does not set the mark
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def train_step_fn(model, prior, batch, device, amp):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 1, 28, 28, device=device)
    gen = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = sde.dsm_loss(model, x0, prior, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def sample_fn(model, prior, n0, upscale, mode, batch, steps, device, amp):
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            sde.generate(model, prior, batch, n0, upscale, mode, seed=0, batch_size=batch,
                         num_steps=steps, device=device, show_progress=False)
    return run


def model_rows(args):
    """(label, model name, constructor kwargs) for every benchmarked network."""
    rows = [(f"{name} {profile}", name, models.model_kwargs(name, profile))
            for name in args.models for profile in args.profiles]
    if "paper" in args.profiles and {"unet", "cno"} <= set(args.models):
        # a UNet with the parameter count of the reference CNO, for the CNO/UNet step ratio
        rows.append(("unet ch=72 (CNO-paper size)", "unet",
                     dict(models.model_kwargs("unet", "paper"), ch=72)))
    return rows


def bench_models(args, device, lines):
    prior = build_prior("standard", 28)
    lines += ["## Score networks", "",
              f"Training step: batch {args.batch}, 28x28, forward + backward + Adam. Sampling: "
              f"images/s of a {FULL_RUN_STEPS}-step Euler-Maruyama run (timed over "
              f"{args.sample_steps} steps; batch {args.sample_batch or 'automatic: 64 at 28, 16 at 56'}).", "",
              "| model | parameters | train step s | train peak MiB | img/s 28 | img/s 56 native "
              "| img/s 56 resample | 56 native / 28, time per image |",
              "|---|---|---|---|---|---|---|---|"]
    for label, name, kwargs in model_rows(args):
        torch.manual_seed(0)
        model = models.build_model(name, **kwargs).to(device)
        params = models.count_parameters(model)
        reset_peak(device)
        step = median_time(train_step_fn(model, prior, args.batch, device, args.amp), args.repeats, device)
        peak = peak_mib(device)
        rates = {}
        for key, upscale, mode in (("28", 1, "native"), ("56n", 2, "native"), ("56r", 2, "resample")):
            batch = sde.auto_batch_size(28 * (upscale if mode == "native" else 1), device)
            batch = args.sample_batch or batch
            seconds = median_time(sample_fn(model, prior, 28, upscale, mode, batch, args.sample_steps,
                                            device, args.amp), args.repeats, device)
            rates[key] = batch / (seconds * FULL_RUN_STEPS / args.sample_steps)
        ratio = rates["28"] / rates["56n"]
        row = (f"| {label} | {params:,} | {step:.3f} | {peak:.0f} | {rates['28']:.2f} | "
               f"{rates['56n']:.2f} | {rates['56r']:.2f} | {ratio:.2f}x |")
        print(row, flush=True)
        lines.append(row)
    lines.append("")


def bench_activation(args, device, lines):
    """CNO activation: exact Fourier resampling (ours) against bicubic antialiased interpolation."""
    from models.cno import CNOActivation

    lines += ["## CNO activation: Fourier (ours) vs bicubic antialias (authors' pure-PyTorch)", "",
              "One activation, batch 64, forward + backward.", "",
              "| channels | grid in -> out | Fourier ms | bicubic ms | bicubic / Fourier |", "|---|---|---|---|---|"]
    for channels, size, out in [(32, 28, 28), (32, 28, 14), (64, 14, 28), (64, 14, 14)]:
        times = {}
        for resampler in ("fourier", "bicubic"):
            activation = CNOActivation(resampler)
            h = torch.randn(64, channels, size, size, device=device, requires_grad=True)
            times[resampler] = median_time(lambda: activation(h, out).sum().backward(), args.repeats + 2, device)
        row = (f"| {channels} | {size} -> {out} | {1e3 * times['fourier']:.1f} | {1e3 * times['bicubic']:.1f} "
               f"| {times['bicubic'] / times['fourier']:.2f}x |")
        print(row, flush=True)
        lines.append(row)
    for profile in args.profiles:
        step = {}
        for resampler in ("fourier", "bicubic"):
            torch.manual_seed(0)
            kwargs = dict(models.model_kwargs("cno", profile), activation_resampler=resampler)
            model = models.build_model("cno", **kwargs).to(device)
            step[resampler] = median_time(train_step_fn(model, build_prior("standard", 28), args.batch,
                                                        device, False), args.repeats, device)
        row = (f"\nCNO {profile} training step (batch {args.batch}): Fourier {step['fourier']:.3f} s, "
               f"bicubic {step['bicubic']:.3f} s ({step['bicubic'] / step['fourier']:.2f}x).")
        print(row, flush=True)
        lines.append(row)
    lines.append("")


def matmul_peak_gflops(device, size=2048, repeats=5):
    """This machine's fp32 peak as torch reaches it: GFLOP/s of a size x size matmul (2 size^3 flops)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    return 2 * size ** 3 / median_time(lambda: a @ b, repeats, device) / 1e9


def step_flops(step):
    """Flops of one call of `step` as torch's FlopCounterMode counts them: matmuls and convolutions,
    forward and backward (FFTs and elementwise ops are not counted, so the share of peak is a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def fft_share(step):
    """The share of one step's CPU time spent in FFT kernels (torch.profiler's self times)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if "fft" in e.key.lower()) / max(total, 1e-9)


def bench_peak(args, device, lines):
    """Each network's training step as a share of the measured fp32 matmul peak, and its FFT share."""
    peak = matmul_peak_gflops(device)
    lines += ["## Share of the fp32 peak", "",
              f"Peak: a 2048 x 2048 fp32 matmul, {peak:.1f} GFLOP/s (torch threads {torch.get_num_threads()}). "
              f"Training step: batch {args.batch}, 28x28, forward + backward + Adam, median of {args.repeats}; "
              "flops as torch.utils.flop_counter counts them (matmuls and convolutions; FFTs and elementwise "
              "work not counted, so the share is a lower bound); FFT share from torch.profiler's self times.", "",
              "| model | GFLOP per step | step s | GFLOP/s | share of peak | FFT share of the step |",
              "|---|---|---|---|---|---|"]
    prior = build_prior("standard", 28)
    for label, name, kwargs in model_rows(args):
        torch.manual_seed(0)
        model = models.build_model(name, **kwargs).to(device)
        step = train_step_fn(model, prior, args.batch, device, args.amp)
        seconds = median_time(step, args.repeats, device)
        gflop = step_flops(step) / 1e9
        rate, fft = gflop / seconds, fft_share(step)
        row = f"| {label} | {gflop:.2f} | {seconds:.3f} | {rate:.1f} | {100 * rate / peak:.1f} % | {100 * fft:.1f} % |"
        print(row, flush=True)
        lines.append(row)
    lines.append("")


def bench_threads(args, device, lines):
    """Training step against torch's intra-op thread count (the machine's cores, one, half)."""
    counts = sorted({1, max(1, (os.cpu_count() or 1) // 2), os.cpu_count() or 1})
    before = torch.get_num_threads()
    lines += ["## Threads (training step, batch %d, 28x28)" % args.batch, "",
              "| model | " + " | ".join(f"{c} threads s" for c in counts) + " |", "|---|" + "---|" * len(counts)]
    prior = build_prior("standard", 28)
    try:
        for label, name, kwargs in model_rows(args):
            figures = []
            for count in counts:
                torch.set_num_threads(count)
                torch.manual_seed(0)
                model = models.build_model(name, **kwargs).to(device)
                step = train_step_fn(model, prior, args.batch, device, args.amp)
                figures.append(median_time(step, args.repeats, device))
            row = f"| {label} | " + " | ".join(f"{f:.3f}" for f in figures) + " |"
            print(row, flush=True)
            lines.append(row)
    finally:
        torch.set_num_threads(before)
    lines.append("")


def to_channels_last(model):
    """The model with its 4-d weights (convolutions) in channels-last layout; the FNO's 5-d spectral
    weights, which have no such layout, stay as they are."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def bench_variants(args, device, lines):
    """Training-step time of the same model under channels-last, bf16 autocast, torch.compile."""
    lines += ["## Variants (training step, batch 64, 28x28)", "",
              "| model | eager fp32 s | channels-last s | bf16 autocast s | torch.compile s (compile time) |",
              "|---|---|---|---|---|"]
    prior = build_prior("standard", 28)
    for label, name, kwargs in model_rows(args):
        if label.startswith("unet ch=72"):
            continue
        figures = []
        for variant in ("eager", "channels_last", "bf16", "compile"):
            torch.manual_seed(0)
            model = models.build_model(name, **kwargs).to(device)
            net, amp = model, variant == "bf16"
            started = time.perf_counter()
            try:
                if variant == "channels_last":
                    net = to_channels_last(model)
                if variant == "compile":
                    net = torch.compile(model)
                    train_step_fn(net, prior, args.batch, device, False)()  # compiles
                compile_seconds = time.perf_counter() - started
                seconds = median_time(train_step_fn(net, prior, args.batch, device, amp), args.repeats, device)
            except Exception as error:  # e.g. no C++ compiler for inductor: the row says so, the others go on
                figures.append(f"failed ({type(error).__name__})")
                continue
            figures.append(f"{seconds:.3f}" + (f" ({compile_seconds:.0f} s)" if variant == "compile" else ""))
        row = f"| {label} | " + " | ".join(figures) + " |"
        print(row, flush=True)
        lines.append(row)
    lines.append("")


def load_reference(path):
    """The original code's FNO2d and UNet (fno.py, unet_no_att.py of a clone of the seed repository at
    `path`), imported under names of their own; its git commit if `path` is a checkout."""
    import importlib.util
    import subprocess

    def load(filename, name):
        file = os.path.join(path, filename)
        if not os.path.isfile(file):
            raise UserError(f"--reference {path}: no {filename} there (expected a clone of the seed repository)")
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # a damaged or foreign file: name it, not the line inside it
            raise UserError(f"--reference {path}: {filename} could not be imported ({first_line(error)})") from error
        return module

    fno, unet = load("fno.py", "reference_fno"), load("unet_no_att.py", "reference_unet")
    def git(*arguments):
        return subprocess.run(["git", "-C", path, *arguments], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "fno.py", "unet_no_att.py")
    if commit and changed:  # e.g. one file checked out from another commit: the record must say so
        commit += " with its working copy changed: " + "; ".join(changed.splitlines())
    builders = {  # the sizes of the original main.py
        "fno": lambda: fno.FNO2d(14, 14, 64),
        "unet": lambda: unet.UNet(input_channels=1, input_height=28, ch=64, ch_mult=(1, 2, 2), num_res_blocks=4,
                                  resamp_with_conv=True),
    }
    return builders, commit or "unknown (not a git checkout)"


class _NoFiLM(torch.nn.Module):
    """FiLM's signature, the identity map: h, emb -> h."""

    def forward(self, h, emb):
        return h


def without_film(model):
    """The model with every FNO layer's FiLM replaced by the identity (a timing probe, not a network to train)."""
    for layer in model.layers:
        layer.film = _NoFiLM()
    return model


def interleaved_times(steps, rounds, device):
    """Median seconds of each step (name -> callable), one warm-up each, rounds in rotating order."""
    for step in steps.values():
        step()  # warm-up
    names, times = list(steps), {name: [] for name in steps}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            sync(device)
            started = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_reference(args, device, lines):
    """Training steps of the original code and ours, same sizes, interleaved rounds in one process."""
    lines += ["## Against the original code (side by side)", ""]
    if not args.reference:
        lines += ["Not measured in this run. To measure: clone the seed repository (its `fno.py` and "
                  "`unet_no_att.py`; nothing of it is part of this project) and run "
                  "`python bench/speed.py --only reference --reference PATH_TO_CLONE`.", ""]
        return
    builders, commit = load_reference(args.reference)
    prior = build_prior("standard", 28)
    lines += [f"Original code: {args.reference} at commit `{commit}`. Training step: batch {args.batch}, 28x28, the "
              f"`standard` prior, forward + backward + Adam with this project's loss for both (the original "
              f"networks output the score itself, ours the noise: the same arithmetic per step). {args.rounds} "
              f"interleaved rounds (the order rotates), median.", "",
              "| network | original parameters | ours (profile paper) | original step s | our step s "
              "| original / ours | our step, bf16 autocast s | original / ours bf16 | ours without FiLM s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in ("unet", "fno"):
        torch.manual_seed(0)
        theirs = builders[name]().to(device)
        ours = {key: models.build_model(name, **models.model_kwargs(name, "paper")).to(device)
                for key in ("fp32", "bf16", "no FiLM")}
        steps = {"theirs": train_step_fn(theirs, prior, args.batch, device, False),
                 "ours": train_step_fn(ours["fp32"], prior, args.batch, device, False),
                 "ours bf16": train_step_fn(ours["bf16"], prior, args.batch, device, True)}
        if name == "fno":  # the suspect named in issue 45: our per-layer time conditioning, which theirs lacks
            steps["ours, no FiLM"] = train_step_fn(without_film(ours["no FiLM"]), prior, args.batch, device, False)
        times = interleaved_times(steps, args.rounds, device)
        theirs_s, ours_s, bf16_s = times["theirs"], times["ours"], times["ours bf16"]
        no_film = f"{times['ours, no FiLM']:.3f}" if "ours, no FiLM" in times else "-"
        row = (f"| {name} | {models.count_parameters(theirs):,} | {models.count_parameters(ours['fp32']):,} | "
               f"{theirs_s:.3f} | {ours_s:.3f} | {theirs_s / ours_s:.2f}x | {bf16_s:.3f} | {theirs_s / bf16_s:.2f}x "
               f"| {no_film} |")
        print(row, flush=True)
        lines.append(row)
    lines += ["", "Above 1x: ours is faster. 'bf16 autocast': our step with `main.py --amp 1` (the forward pass "
              "under bfloat16 autocast, the loss in float32), fast where the CPU has AVX512-BF16 or AMX (the "
              "flags on the hardware line). 'Without FiLM': our FNO with each layer's time conditioning "
              "(FiLM) replaced by the identity, timed in the same rounds: the cost of that conditioning. "
              "The original CNO needs its CUDA extensions (StyleGAN3's filtered "
              "LReLU) and does not run on a CPU; the CNO activation section compares with the authors' "
              "pure-PyTorch variant instead.", ""]


def bench_mmd(args, device, lines):
    lines += ["## Riesz MMD (float64 Gram, exact)", "", "| n vs n | resolution | seconds |", "|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for n in args.mmd_sizes:
        for res in (28, 56):
            x = torch.rand(n, 1, res, res, generator=gen)
            y = torch.rand(n, 1, res, res, generator=gen)
            seconds = median_time(lambda: riesz_mmd(x, y, device=device), 1 if n > 2000 else args.repeats, device)
            row = f"| {n:,} | {res}x{res} | {seconds:.2f} |"
            print(row, flush=True)
            lines.append(row)
    lines.append("")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", default=None,
                        choices=["models", "peak", "threads", "activation", "variants", "mmd", "reference"],
                        help="run one section (variants, which compiles models, runs only when named)")
    parser.add_argument("--models", nargs="+", default=list(models.MODELS), choices=list(models.MODELS))
    parser.add_argument("--profiles", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--sample_batch", type=int, default=0,
                        help="sampling batch size (0: the sampler's automatic choice per grid)")
    parser.add_argument("--sample_steps", type=int, default=4, help="timed sampler steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--mmd_sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--output", default="results/speed.md", help="Markdown file to write")
    parser.add_argument("--reference", default=None,
                        help="a clone of the seed repository: time its UNet and FNO training steps beside ours")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the comparison with --reference")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = versions()
    lines = ["# Speed", "", f"Command: `python bench/speed.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
             f"Hardware: {info['platform']}, {info['cpu']}, {os.cpu_count()} CPUs, "
             f"torch threads {info['cpu_threads']}, "
             f"device {device}{' (' + info['cuda'] + ')' if info['cuda'] and device.type == 'cuda' else ''}; "
             f"torch {info['torch']}, python {info['python']}; {time.strftime('%Y-%m-%d')}", ""]
    if args.only in (None, "models"):
        bench_models(args, device, lines)
    if args.only in (None, "peak"):
        bench_peak(args, device, lines)
    if args.only in (None, "threads"):
        bench_threads(args, device, lines)
    if args.only in (None, "activation"):
        bench_activation(args, device, lines)
    if args.only == "variants":
        bench_variants(args, device, lines)
    if args.only in (None, "mmd"):
        bench_mmd(args, device, lines)
    if args.only in (None, "reference"):
        bench_reference(args, device, lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    text = "\n".join(lines) + "\n"
    if args.only and os.path.exists(args.output):  # one section measured again: the others are kept
        text = merge_sections(open(args.output).read(), text)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"written {args.output}")


def sections(text):
    """(header, {'## title': body}) of a Markdown report, sections in order."""
    header, *parts = text.split("\n## ")
    return header, {("## " + part).split("\n", 1)[0]: "## " + part for part in parts}


def merge_sections(old, new):
    """The old report with the sections of the new one put in place (or appended); each section
    taken from the new report says which command, machine and date measured it."""
    old_header, old_sections = sections(old)
    new_header, new_sections = sections(new)
    provenance = " ".join(line for line in new_header.splitlines() if line.startswith(("Command:", "Hardware:")))
    for title, body in new_sections.items():
        head, _, rest = body.partition("\n")
        old_sections[title] = f"{head}\n\n({provenance})\n\n{rest.lstrip(chr(10))}"
    return "\n".join([old_header.rstrip("\n") + "\n", *(body.rstrip("\n") + "\n" for body in old_sections.values())])


if __name__ == "__main__":
    run_main(main)
