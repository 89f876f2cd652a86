"""The small sweep behind reproduce.py's CPU profile: sizes and epochs per model.

    python bench/sweep.py --data_root ~/mnist          # writes results/sweep.md

Each candidate trains on full MNIST (seed 0, standard prior) and is scored at 28 with
--num_samples MMD samples; finished candidates are skipped on a second call. The
figure that decides is the MMD at 28 against the training time, inside the CPU
budget of reproduce.py (a training run <= 20 min on 2 cores).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main as training  # noqa: E402
import test as evaluation  # noqa: E402
from models import count_parameters  # noqa: E402
from utils import load_checkpoint, versions, write_json  # noqa: E402

# (name, model, n_epochs, batch_size, lr, model_arg overrides)
CANDIDATES = [
    ("unet-c16-e2", "unet", 2, 64, 2e-3, ["ch=16"]),
    ("unet-c24-e2", "unet", 2, 64, 2e-3, ["ch=24"]),
    ("cno-small-e2", "cno", 2, 64, 2e-3, []),
    ("cno-l2-c24-e2", "cno", 2, 64, 2e-3, ["n_levels=2", "channel_multiplier=24", "lift_channels=12"]),
    ("fno-small-e2", "fno", 2, 64, 2e-3, []),
    ("fno-w24-m10-e2", "fno", 2, 64, 2e-3, ["width=24", "modes=10"]),
]


def run_candidate(args, name, model, epochs, batch, lr, model_arg):
    folder = os.path.join(args.runs_dir, name)
    record_path = os.path.join(args.runs_dir, name + ".json")
    if os.path.exists(record_path):
        return json.load(open(record_path))
    config = training.TrainConfig(model=model, n_epochs=epochs, batch_size=batch, lr=lr,
                                  model_arg=model_arg, seed=0, val_every=0, num_samples_mmd=128,
                                  data_root=args.data_root, out_dir=args.runs_dir, save_model=name,
                                  progress=0, resume=os.path.exists(os.path.join(folder, "last.pt")))
    started = time.time()
    run = training.train(config)
    train_seconds = time.time() - started
    eval_args = evaluation.build_parser().parse_args(
        ["--save_model", folder, "--checkpoint", "last", "--upscale", "1", "--num_samples_mmd",
         str(args.num_samples), "--data_root", args.data_root, "--progress", "0",
         "--results_dir", os.path.join(folder, "eval")])
    os.makedirs(eval_args.results_dir, exist_ok=True)
    state = load_checkpoint(os.path.join(folder, "last.pt"))
    rows, _ = evaluation.evaluate(eval_args, state, evaluation.resolve_device("cpu"), eval_args.results_dir)
    record = {"name": name, "model": model, "epochs": epochs, "batch_size": batch, "lr": lr,
              "model_arg": model_arg, "parameters": count_parameters(run.model),
              "train_minutes": train_seconds / 60, "sample_seconds": rows[0]["sample_seconds"],
              "mmd_28": rows[0]["mmd"], "floor_28": rows[0]["floor_real"], "n": rows[0]["n"],
              "versions": versions()}
    write_json(record, record_path)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="./data")
    parser.add_argument("--runs_dir", default="runs/sweep")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--only", nargs="+", default=None, help="candidate names to run")
    parser.add_argument("--output", default="results/sweep.md")
    args = parser.parse_args()
    os.makedirs(args.runs_dir, exist_ok=True)
    records = [run_candidate(args, *c) for c in CANDIDATES if args.only is None or c[0] in args.only]
    lines = ["# CPU sweep (seed 0, standard prior, full MNIST)", "",
             f"Command: `python bench/sweep.py --data_root DATA` on {records[0]['versions']['platform']}, "
             f"{records[0]['versions']['cpu_threads']} threads. MMD at 28 with n = {args.num_samples} "
             f"against MNIST test, EMA weights.", "",
             "| candidate | parameters | epochs | batch | lr | train min | sampling s (n) | MMD 28 | floor 28 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['epochs']} | {r['batch_size']} | {r['lr']:g} | "
                     f"{r['train_minutes']:.1f} | {r['sample_seconds']:.0f} ({r['n']}) | {r['mmd_28']:.4f} | "
                     f"{r['floor_28']:.4f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
