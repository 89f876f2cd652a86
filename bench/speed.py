"""Speed benchmark: training step, sampling throughput, peak memory, MMD time.

    python bench/speed.py                  # everything, writes results/speed.md
    python bench/speed.py --only mmd       # one section
    python bench/speed.py --models unet --profiles small

Every figure is the median of --repeats timed runs after one warm-up run, all in
one process, so ratios between rows are measured side by side. Sampling figures
time --sample_steps Euler-Maruyama steps and report images/s for a full 200-step
run (the sampler's cost is linear in the step count). Peak memory is the process's
resident-set high-water mark during the measurement on a CPU (reset through
/proc/self/clear_refs), torch.cuda.max_memory_allocated on a GPU.
"""
import argparse
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
from utils import versions  # noqa: E402

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


def bench_models(args, device, lines):
    prior = build_prior("standard", 28)
    lines += ["## Score networks", "",
              f"Training step: batch {args.batch}, 28x28, forward + backward + Adam. Sampling: "
              f"images/s of a {FULL_RUN_STEPS}-step Euler-Maruyama run (timed over "
              f"{args.sample_steps} steps, batch {args.sample_batch}).", "",
              "| model | profile | parameters | train step s | peak MiB | img/s 28 | img/s 56 native "
              "| img/s 56 resample | 56 native / 28 per image |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        for profile in args.profiles:
            torch.manual_seed(0)
            model = models.build_model(name, **models.model_kwargs(name, profile)).to(device)
            params = models.count_parameters(model)
            reset_peak(device)
            step = median_time(train_step_fn(model, prior, args.batch, device, args.amp), args.repeats, device)
            peak = peak_mib(device)
            rates = {}
            for label, upscale, mode in (("28", 1, "native"), ("56n", 2, "native"), ("56r", 2, "resample")):
                seconds = median_time(sample_fn(model, prior, 28, upscale, mode, args.sample_batch,
                                                args.sample_steps, device, args.amp), args.repeats, device)
                rates[label] = args.sample_batch / (seconds * FULL_RUN_STEPS / args.sample_steps)
            ratio = rates["28"] / rates["56n"]
            row = (f"| {name} | {profile} | {params:,} | {step:.3f} | {peak:.0f} | {rates['28']:.2f} | "
                   f"{rates['56n']:.2f} | {rates['56r']:.2f} | {ratio:.2f}x |")
            print(row, flush=True)
            lines.append(row)
    lines.append("")


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
    parser.add_argument("--only", choices=["models", "mmd"], default=None, help="run one section")
    parser.add_argument("--models", nargs="+", default=list(models.MODELS), choices=list(models.MODELS))
    parser.add_argument("--profiles", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--sample_batch", type=int, default=64, help="sampling batch size")
    parser.add_argument("--sample_steps", type=int, default=4, help="timed sampler steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--mmd_sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--output", default="results/speed.md", help="Markdown file to write")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = versions()
    lines = ["# Speed", "", f"Command: `python bench/speed.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
             f"Hardware: {info['platform']}, {os.cpu_count()} CPUs, torch threads {info['cpu_threads']}, "
             f"device {device}{' (' + info['cuda'] + ')' if info['cuda'] and device.type == 'cuda' else ''}; "
             f"torch {info['torch']}, python {info['python']}; {time.strftime('%Y-%m-%d')}", ""]
    if args.only in (None, "models"):
        bench_models(args, device, lines)
    if args.only in (None, "mmd"):
        bench_mmd(args, device, lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
