"""Metrics beside the MMD, in the features of a small MNIST classifier: the Frechet distance and its kin.

    python frechet.py --data_root ~/mnist          # trains it (seeded) -> checkpoints/mnist_classifier.pt

FD(X, Y) = |mu_X - mu_Y|^2 + tr(C_X + C_Y - 2 (C_X C_Y)^(1/2)) on the 64 features before the
classifier's last layer (the FID recipe, with a digit classifier instead of Inception).
Images at K*n0 are average-pooled by K to n0 first (other sizes resized): the classifier sees the
training grid. The same classifier gives (`classifier_figures`):
- the class histogram, and its entropy in bits (mode coverage: log2 10 = 3.32 for ten equal classes);
- the confident share: the fraction of images whose top softmax probability is above 0.9 (a sample a
  person reads as one digit);
- precision and recall (Kynkaenniemi et al. 2019, k = 5) in the feature space: the share of generated
  features inside the k-NN balls of the real ones, and of real features inside those of the generated;
- the Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of K / n, K the cosine
  similarity of the features: the effective number of distinct samples (1 for copies of one image).
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
def classify(model, images, batch_size=1000):
    """(features float64 (N, 64), class probabilities float64 (N, 10)) of images in [0, 1]."""
    model.eval()
    feats, probabilities = [], []
    for chunk in to_classifier_grid(images.float(), getattr(model, "n0", 28)).split(batch_size):
        f = model.features(chunk)
        feats.append(f.double())
        probabilities.append(torch.softmax(model.head(f).double(), dim=1))
    return torch.cat(feats), torch.cat(probabilities)


def apply(model, images, batch_size=1000):
    """(features float64 (N, 64), predicted labels (N,)) of images in [0, 1]."""
    features, probabilities = classify(model, images, batch_size)
    return features, probabilities.argmax(1)


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


CONFIDENT = 0.9  # a top class probability above this: the classifier reads the image as that digit
NEAREST = 5  # k of precision and recall (Kynkaenniemi et al. 2019)


def confident_share(probabilities, threshold=CONFIDENT):
    """Fraction of images whose top class probability is above `threshold`."""
    return float((probabilities.max(dim=1).values > threshold).double().mean())


def histogram_entropy(labels, classes=10):
    """Entropy in bits of the predicted classes' histogram: log2(classes) when every class is equally
    common, 0 when one class takes all."""
    p = torch.bincount(labels, minlength=classes).double() / len(labels)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def knn_radii(features, k=NEAREST):
    """Distance of each feature vector to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {len(features)}")
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # the 1st smallest is the point itself (0)


def coverage_share(points, centres, radii):
    """Fraction of `points` inside at least one ball B(centre_j, radius_j)."""
    return float((torch.cdist(points, centres) <= radii[None, :]).any(dim=1).double().mean())


def precision_recall(generated, real, k=NEAREST):
    """(precision, recall) of generated against real features (Kynkaenniemi et al. 2019): precision is
    the share of generated points inside the union of the real points' k-NN balls, recall the share
    of real points inside the union of the generated points' k-NN balls."""
    return (coverage_share(generated, real, knn_radii(real, k)),
            coverage_share(real, generated, knn_radii(generated, k)))


def vendi_score(features):
    """exp(-sum_i lambda_i log lambda_i), lambda the eigenvalues of K / n with K_ij = cos(f_i, f_j)
    (Friedman & Dieng 2023). K / n = X X^T / n for the unit rows X has the nonzero eigenvalues of
    X^T X / n (d x d), which is what is decomposed. Zero feature vectors (a dead ReLU layer) count as one
    direction of their own."""
    x = features.double()
    norms = x.norm(dim=1, keepdim=True)
    dead = norms.squeeze(1) == 0
    x = torch.where(dead[:, None], torch.zeros_like(x), x / norms.clamp_min(1e-300))
    x = torch.cat([x, dead.double()[:, None]], dim=1)  # an extra axis shared by all zero vectors
    eigenvalues = torch.linalg.eigvalsh(x.T @ x / len(x)).clamp_min(0)
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def classifier_figures(model, samples, real_a, real_b):
    """The classifier's figures of `samples` against real_b, each beside its real-vs-real floor (real_a,
    as many real images as samples, against real_b): FD, confident share, class-histogram entropy,
    precision, recall, Vendi, and the class histogram."""
    (features, probabilities), (features_a, probabilities_a) = classify(model, samples), classify(model, real_a)
    features_b = classify(model, real_b)[0]
    labels, labels_a = probabilities.argmax(1), probabilities_a.argmax(1)
    precision, recall = precision_recall(features, features_b)
    precision_floor, recall_floor = precision_recall(features_a, features_b)
    return {"fd": frechet_distance(features, features_b), "fd_floor": frechet_distance(features_a, features_b),
            "confident": confident_share(probabilities), "confident_floor": confident_share(probabilities_a),
            "class_entropy": histogram_entropy(labels), "class_entropy_floor": histogram_entropy(labels_a),
            "precision": precision, "precision_floor": precision_floor,
            "recall": recall, "recall_floor": recall_floor,
            "vendi": vendi_score(features), "vendi_floor": vendi_score(features_a),
            "class_histogram": class_histogram(labels)}


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
