"""Checkpoints, run folders, reproducibility records, image grids, clear CLI errors."""
import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import traceback
import warnings
import zipfile

import numpy as np
import torch
import torchvision

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2, no traceback (with
    FSDIFF_DEBUG=1 in the environment, the traceback of what went wrong underneath too)."""


DEBUG_ENV = "FSDIFF_DEBUG"  # "1": a refused input also prints the traceback of the exception beneath it


def first_line(error):
    """'Type: the first line of its message' (at most 200 characters), for a one-line refusal."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


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
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exception(error)
        fail(" ".join(str(error).split("\n")))
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


class _WatchedFile:
    """A file whose write errors are kept: torch.save reports a failed write (a full disk) as its own
    RuntimeError, and the OSError beneath is what the user needs to hear."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def _atomic_write(path, mode, write):
    """write(file) to a temporary file beside `path` (PATH.tmp.XXXX), flush, fsync, rename over
    `path`, fsync the folder; on any failure the temporary file is removed and `path` untouched.
    A failure of the disk (no space, no permission: an OSError, whatever wraps it) is a UserError
    naming the file, one line."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp, watched = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=folder)
        with os.fdopen(fd, mode) as f:
            watched = _WatchedFile(f)
            write(watched)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        cause = error if isinstance(error, OSError) else getattr(watched, "error", None)
        if cause is not None:
            raise UserError(f"could not write {path} ({cause.strerror or first_line(cause)}); what was there "
                            f"before is intact") from error
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
    """Load a run's checkpoint with weights_only=True; UserError with one line for any defect: a file
    torch cannot read (whatever it raises: a truncated zip, a foreign pickle, random bytes), another
    format version, a dict without the fields a run saves (`check_run_state`), weights that are not
    finite. The exception beneath is chained (FSDIFF_DEBUG=1 prints its traceback)."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a folder, expected a .pt file")
    if not os.access(path, os.R_OK):
        raise UserError(f"checkpoint {path} is not readable (permissions)")
    try:
        check_zip_entries(path)
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as error:  # a corrupt size field can ask for more memory than there is
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first_line(error)})") from error
    except Exception as error:  # torch's readers raise many types for a bad file (zip, pickle, storage)
        kind = ("truncated or corrupt" if zip_like(path) or os.path.getsize(path) == 0
                else "not a checkpoint of this project")
        raise UserError(f"checkpoint {path} is {kind} ({first_line(error)})") from error
    if not isinstance(state, dict) or "format_version" not in state or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no format_version/config)")
    if state["format_version"] != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} has format version {state['format_version']!r}, this code "
                        f"reads version {CHECKPOINT_FORMAT}")
    check_run_state(state, path)
    return state


def check_zip_entries(path):
    """torch.save writes a zip archive with a CRC-32 per entry, which torch.load does not verify: a
    flipped bit in the weights loads silently as another weight. zipfile's testzip reads every entry
    and names the first whose CRC fails (ValueError here; a damaged archive raises zipfile's errors)."""
    if zip_like(path):
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"entry {damaged} fails its CRC-32 check")


def zip_like(path):
    """Whether a file starts as torch.save's zip archives do (a damaged checkpoint rather than another file)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


# the fields of a run's checkpoint (main.Run.state) that sampling reads, and their types
RUN_FIELDS = {"config": dict, "model_name": str, "model_kwargs": dict, "model": dict, "prior_config": dict,
              "prior": dict, "epoch": int, "step": int, "history": list}
CONFIG_FIELDS = {"input_height": int, "parametrization": str}
# fields later runs save and earlier ones lack: checked where present
OPTIONAL_FIELDS = {"data_source": (str, type(None)), "ema": (dict, type(None))}
OPTIONAL_CONFIG_FIELDS = {"dataset": str, "dataset_option": (list, type(None)), "grid_conditioning": str,
                          "levels": str, "data_root": str}


def check_run_state(state, path):
    """UserError naming the first field of a run checkpoint that is missing or of the wrong kind, or the
    first weight that is not finite (a run that diverged cannot sample)."""
    def refuse(what):
        raise UserError(f"checkpoint {path} is not a usable run checkpoint: {what}")

    for name, kind in RUN_FIELDS.items():
        if not isinstance(state.get(name), kind) or isinstance(state.get(name), bool):
            refuse(f"its {name!r} is {type(state.get(name)).__name__}, expected {kind.__name__}")
    for name, kind in CONFIG_FIELDS.items():
        if not isinstance(state["config"].get(name), kind):
            refuse(f"its config's {name!r} is {type(state['config'].get(name)).__name__}, expected {kind.__name__}")
    for fields, where in ((OPTIONAL_FIELDS, state), (OPTIONAL_CONFIG_FIELDS, state["config"])):
        for name, kinds in fields.items():
            if name in where and not isinstance(where[name], kinds):
                refuse(f"its {name!r} is {type(where[name]).__name__}")
    if not all(isinstance(item, str) for item in state["config"].get("dataset_option") or []):
        refuse("its config's 'dataset_option' holds something other than KEY=VALUE strings")
    for part in ("model", "ema"):
        weights = state.get(part)
        if part == "ema" and weights is None:
            continue
        if not isinstance(weights, dict):
            refuse(f"its {part!r} is {type(weights).__name__}, expected a state dict")
        for key, value in weights.items():
            if not torch.is_tensor(value):
                refuse(f"{part} entry {key!r} is {type(value).__name__}, not a tensor")
            if value.is_floating_point() and not torch.isfinite(value).all():
                refuse(f"{part} weight {key!r} holds NaN or infinite values")
    if state.get("ema") is not None:  # the EMA averages the model's own weights: the same names, shapes, dtypes
        averaged = {key[len("module."):]: value for key, value in state["ema"].items() if key.startswith("module.")}
        if averaged.keys() != state["model"].keys():
            refuse(f"its EMA and model weights differ in names ({sorted(averaged.keys() ^ state['model'].keys())[:3]})")
        for key, value in state["model"].items():
            if (value.shape, value.dtype) != (averaged[key].shape, averaged[key].dtype):
                refuse(f"weight {key!r} is {value.dtype} {tuple(value.shape)} in the model, "
                       f"{averaged[key].dtype} {tuple(averaged[key].shape)} in the EMA")


def check_dtypes(module, weights):
    """TypeError naming the first weight whose dtype differs from the module's (load_state_dict would cast
    it silently: a damaged checkpoint must not load as other numbers)."""
    expected = module.state_dict()
    for key, value in weights.items():
        if key in expected and torch.is_tensor(value) and value.dtype != expected[key].dtype:
            raise TypeError(f"weight {key!r} is {value.dtype}, the network's is {expected[key].dtype}")


# ---------------------------------------------------------------- records

# CPU features that decide which speed levers pay: bfloat16 is fast only with AVX512-BF16 or AMX
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """'MODEL NAME (flags: ...)' from Linux's cpuinfo, SPEED_FLAGS only; platform.processor() elsewhere."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    present = [flag for flag in SPEED_FLAGS if flag in flags]
    return f"{fields.get('model name', 'unknown')} (flags: {', '.join(present) or 'none of ' + ', '.join(SPEED_FLAGS)})"


def versions():
    """Versions and hardware, recorded with every result."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "numpy": str(np.__version__),
        "platform": platform.platform(),
        "cpu": cpu_description(),
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


def write_text(text, path):
    """Write a text file (a results table) atomically: a failed write leaves the previous one whole."""
    _atomic_write(path, "w", lambda f: f.write(text))


def read_json(path, what="results file"):
    """A JSON file written by this project; UserError naming it if it is unreadable or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError and undecodable bytes
        raise UserError(f"{what} {path} cannot be read ({first_line(error)}); move it aside to go on") from error


def check_writable_dir(path, flag):
    """UserError (naming the flag) unless `path` is a writable folder or could be made one: its nearest
    existing ancestor is a writable folder. Creates nothing, so a refused command leaves no folder."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {probe} is not writable")


def ensure_writable_dir(path, flag):
    """Create `path` if needed and check that we can write there (UserError names the flag)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot create folder ({error.strerror})")
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: folder is not writable")


def bf16_hardware(device):
    """Whether bfloat16 matrix products run on units of their own on `device`: a CUDA GPU with bf16
    support, or a CPU with AMX or AVX512-BF16. Elsewhere bf16 is emulated (on a CPU without them a
    training step was measured 2.6x slower than in float32)."""
    if device.type == "cuda":  # bf16 tensor cores from Ampere (compute capability 8) on; not emulation
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


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
