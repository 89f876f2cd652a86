"""Checkpoints, run folders, reproducibility records, image grids, clear CLI errors."""
import argparse
import datetime
import json
import os
import pickle
import platform
import sys
import tempfile
import warnings
import zipfile

import numpy as np
import torch
import torchvision

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2, no traceback."""


def fail(message, code=2):
    """Print `error: message` to stderr and exit with `code` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (`error: ...`) and exit code 2."""

    def error(self, message):
        fail(message)


def run_main(main_fn, interrupted="interrupted"):
    """Run a CLI entry point, turning UserError into one clear line and exit code 2, and Ctrl-C
    into the line `interrupted` (what is kept and how to go on, in the words of that command)
    and exit code 130."""
    try:
        main_fn()
    except UserError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(interrupted, code=130)


def progress_bar(*args, **kwargs):
    """tqdm, but where stderr is not a terminal (a log file) it writes one line a minute at most
    instead of a line per update."""
    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 60.0)
    return tqdm(*args, **kwargs)


# ---------------------------------------------------------------- checkpoints

def atomic_torch_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash, a kill or a full disk leaves either the old file or the new one, never a
    truncated one.
    """
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def temporary_name_pattern(path):
    """The glob of the temporary files written beside `path` (.gitignore lists them)."""
    return os.path.basename(path) + ".tmp.*"


def _atomic_write(path, mode, write):
    """write(file) to a temporary file beside `path` (PATH.tmp.XXXX), flush, fsync, rename over
    `path`, fsync the folder; on any failure the temporary file is removed and `path` untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path):
    """Load a checkpoint with weights_only=True; UserError with one line for any defect."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a folder, expected a .pt file")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as error:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)})")
    except (pickle.UnpicklingError, AttributeError, ValueError, TypeError) as error:
        raise UserError(f"{path} is not a checkpoint of this project ({_first_line(error)})")
    if not isinstance(state, dict) or "format_version" not in state or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no format_version/config)")
    if state["format_version"] != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} has format version {state['format_version']}, this code "
                        f"reads version {CHECKPOINT_FORMAT}")
    return state


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ---------------------------------------------------------------- records

def versions():
    """Versions and hardware, recorded with every result."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timestamp():
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(obj, path):
    """Write JSON atomically (temporary file, fsync, then rename; see _atomic_write)."""
    def dump(f):
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")

    _atomic_write(path, "w", dump)


def ensure_writable_dir(path, flag):
    """Create `path` if needed and check that we can write there (UserError names the flag)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot create folder ({error.strerror})")
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: folder is not writable")


def resolve_device(name):
    """'auto' -> cuda if available else cpu; validates explicit names."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


# ---------------------------------------------------------------- torchrun

class Distributed:
    """World size, rank and local rank of this process (1, 0, 0 without torchrun)."""

    def __init__(self):
        self.device = torch.device("cpu")  # where the collectives' tensors live (NCCL: the GPU)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def active(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0

    def start(self, device):
        """Join the process group started by torchrun: NCCL on GPUs, Gloo on the CPU."""
        if self.active and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
        self.device = device if device.type == "cuda" else torch.device("cpu")

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def mean(self, value):
        """Average a float over the processes (identity without torchrun)."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world

    def max(self, value):
        """The largest of a float over the processes (identity without torchrun)."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.item()

    def gather(self, obj):
        """List of every process's `obj`, in rank order."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self):
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- images

def save_grid(images, path, nrow=None):
    """Save (B, 1, n, n) images in [0, 1] as one PNG grid."""
    from torchvision.utils import save_image

    nrow = nrow or max(1, int(len(images) ** 0.5))
    save_image(images.clamp(0, 1).float().cpu(), path, nrow=nrow, padding=2, pad_value=0.5)


def save_side_by_side(paths, out_path, gap=8):
    """The PNG grids at `paths` that exist, side by side at one height (nearest-neighbour scaling, so a
    28 grid and a 56 grid show the same digits at the same size); nothing is written if none exists."""
    from PIL import Image

    panels = [Image.open(p).convert("L") for p in paths if os.path.exists(p)]
    if not panels:
        return False
    height = max(p.height for p in panels)
    panels = [p.resize((p.width * height // p.height, height), Image.NEAREST) for p in panels]
    canvas = Image.new("L", (sum(p.width for p in panels) + gap * (len(panels) - 1), height), 255)
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    canvas.save(out_path)
    return True
