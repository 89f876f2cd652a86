"""frechet.py: the Frechet distance, the classifier and its checkpoint."""
import numpy as np
import pytest
import scipy.linalg
import torch

import frechet
from utils import UserError


def test_frechet_of_commuting_gaussians_has_the_closed_form():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_of_non_commuting_covariances_matches_the_product_square_root():
    """FID's form tr (C1 C2)^(1/2), by scipy's general matrix square root."""
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = m1 @ m1.T, m2 @ m2.T
    expected = np.trace(c1) + np.trace(c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet.frechet_from_moments(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet.frechet_distance(features, features) < 1e-8
    assert frechet.frechet_distance(features, features + 1.0) == pytest.approx(8.0, rel=1e-6)


def synthetic_digits(count, generator):
    """Ten classes of 28x28 images: a bright bar at a class-dependent row, with noise."""
    labels = torch.arange(count) % 10
    images = 0.1 * torch.rand(count, 1, 28, 28, generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, 2 + 2 * label:4 + 2 * label, 4:24] = 1.0
    return images, labels


def test_classifier_learns_tiny_synthetic_classes_and_reads_any_resolution():
    generator = torch.Generator().manual_seed(0)
    x, y = synthetic_digits(400, generator)
    model = frechet.train_classifier(x, y, seed=0, epochs=8, batch_size=50, lr=3e-3, progress=False, max_shift=0,
                                     width=8, features=16)
    x_test, y_test = synthetic_digits(100, generator)
    assert frechet.accuracy(model, x_test, y_test) > 0.9
    fine = x_test.repeat_interleave(2, -1).repeat_interleave(2, -2)  # the same images at 56
    assert torch.equal(frechet.apply(model, fine)[1], frechet.apply(model, x_test)[1])
    assert sum(frechet.class_histogram(frechet.apply(model, x_test)[1])) == 100


def test_classifier_checkpoint_round_trip_and_refusals(tmp_path):
    model = frechet.DigitClassifier()
    path = tmp_path / "c.pt"
    torch.save({"format": frechet.FORMAT, "model": model.state_dict(), "kwargs": {}}, path)
    loaded, digest = frechet.load_classifier(str(path))
    assert len(digest) == 64
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(UserError, match="--classifier"):
        frechet.load_classifier(str(tmp_path / "missing.pt"))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a classifier checkpoint"):
        frechet.load_classifier(str(tmp_path / "other.pt"))
