"""A second metric beside the MMD: Frechet distance in the features of a small MNIST classifier.

    python frechet.py --data_root ~/mnist          # trains it (seeded) -> checkpoints/mnist_classifier.pt

FD(X, Y) = |mu_X - mu_Y|^2 + tr(C_X + C_Y - 2 (C_X C_Y)^(1/2)) on the 64 features before the
classifier's last layer (the FID recipe, with a digit classifier instead of Inception).
Images at K*n0 are average-pooled by K to n0 first (other sizes resized): the classifier sees the
training grid.
The classifier also gives the class histogram of generated samples (do all ten digits occur?).
Its own module because training and applying a classifier is a job of its own, apart from
the kernel metric in mmd.py.
"""
import argparse
import hashlib
import os
import sys

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

import data
from utils import ArgumentParser, UserError, atomic_torch_save, progress_bar, run_main, versions

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints",
                                  "mnist_classifier.pt")
FORMAT = "mnist-classifier-1"


class DigitClassifier(nn.Module):
    """Two 3x3 conv blocks with max-pooling, a 64-unit feature layer, 10 logits (28x28 input)."""

    def __init__(self, width=32, features=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def to_classifier_grid(images, n0=28):
    """(N, 1, s, s) -> (N, 1, n0, n0): K x K averages for s = K n0 (pixel-centre convention),
    an antialiased bilinear resize (torchvision's Resize) for any other s."""
    size = images.shape[-1]
    if size == n0:
        return images
    if size % n0 == 0:
        return F.avg_pool2d(images, size // n0)
    return TF.resize(images, [n0, n0], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


@torch.inference_mode()
def apply(model, images, batch_size=1000):
    """(features float64 (N, 64), predicted labels (N,)) of images in [0, 1]."""
    model.eval()
    feats, labels = [], []
    for chunk in to_classifier_grid(images.float(), getattr(model, "n0", 28)).split(batch_size):
        f = model.features(chunk)
        feats.append(f.double())
        labels.append(model.head(f).argmax(1))
    return torch.cat(feats), torch.cat(labels)


def psd_sqrt(matrix):
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_from_moments(mu1, cov1, mu2, cov2):
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), float64.

    tr (C1 C2)^(1/2) = tr (C1^(1/2) C2 C1^(1/2))^(1/2) = sum sqrt(eig), with a symmetric PSD
    matrix inside: stable for the singular covariances of dead ReLU features.
    """
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    root1 = psd_sqrt(cov1)
    inner = scipy.linalg.eigvalsh(root1 @ cov2 @ root1)
    diff = np.asarray(mu1) - np.asarray(mu2)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def moments(features):
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(features_a, features_b):
    return max(0.0, frechet_from_moments(*moments(features_a), *moments(features_b)))


def class_histogram(labels):
    return torch.bincount(labels, minlength=10).tolist()


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_classifier(path):
    """(model, sha256 of the file) from a checkpoint written by `train_and_save`."""
    if not os.path.isfile(path):
        raise UserError(f"--classifier {path}: no such file (train one with `python frechet.py`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is a user-facing error here
        raise UserError(f"--classifier {path}: not a readable classifier checkpoint ({type(error).__name__})")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"--classifier {path}: not a classifier checkpoint of format {FORMAT}")
    model = DigitClassifier(**state["kwargs"])
    model.load_state_dict(state["model"])
    model.n0 = int(state.get("n0", 28))  # the grid it was trained on
    return model.eval(), file_sha256(path)


def train_classifier(train_x, train_y, seed=0, epochs=3, batch_size=128, lr=2e-3, progress=True, max_shift=2,
                     **kwargs):
    """Adam with a cosine schedule and random (periodic) shifts of up to max_shift pixels, all seeded."""
    torch.manual_seed(seed)
    model = DigitClassifier(**kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(train_y) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with progress_bar(total=steps, desc="classifier", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for index in torch.randperm(len(train_y), generator=generator).split(batch_size):
                shift = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
                x = torch.roll(train_x[index], shifts=shift, dims=(-2, -1))
                loss = F.cross_entropy(model(x), train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
    return model.eval()


def accuracy(model, images, labels):
    return (apply(model, images)[1] == labels).double().mean().item()


def train_and_save(data_root, out, seed=0, epochs=3, n0=28, progress=True):
    train, test = data.load_mnist(data_root, train=True), data.load_mnist(data_root, train=False)
    train_x, test_x = data.training_images(train.images, n0), data.training_images(test.images, n0)
    model = train_classifier(train_x, train.labels.long(), seed, epochs, progress=progress)
    test_accuracy = accuracy(model, test_x, test.labels.long())
    state = {"format": FORMAT, "model": model.state_dict(), "kwargs": {}, "seed": seed, "epochs": epochs,
             "n0": n0, "test_accuracy": test_accuracy, "data": train.source, "versions": versions()}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_torch_save(state, out)
    return test_accuracy, file_sha256(out)


def main(argv=None):
    parser = ArgumentParser(description="Train the MNIST classifier whose features define the Frechet "
                                        "distance of test.py.",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    parser.add_argument("--data_root", default="./data", help="MNIST root (torchvision layout)")
    parser.add_argument("--out", default=DEFAULT_CHECKPOINT, help="checkpoint to write")
    parser.add_argument("--seed", type=int, default=0, help="fixes initialisation, order and shifts")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training images")
    parser.add_argument("--progress", type=int, default=1, choices=[0, 1], help="progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.epochs <= 0:
        raise UserError(f"--epochs must be a positive integer, got {args.epochs}")
    test_accuracy, digest = train_and_save(args.data_root, args.out, args.seed, args.epochs,
                                           progress=bool(args.progress))
    print(f"test accuracy {100 * test_accuracy:.2f}%; wrote {args.out} (sha256 {digest})")


if __name__ == "__main__":
    run_main(main, "interrupted; no classifier was written (an existing one is untouched): run the command "
                   "again to train it")
