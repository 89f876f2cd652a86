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


def test_confident_share_and_class_entropy_have_their_closed_forms():
    probabilities = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.91, 0.09]], dtype=torch.float64)
    assert frechet.confident_share(probabilities) == 0.75
    assert frechet.confident_share(probabilities, threshold=0.92) == 0.5
    assert frechet.histogram_entropy(torch.arange(10).repeat(7)) == pytest.approx(np.log2(10), rel=1e-12)
    assert frechet.histogram_entropy(torch.zeros(50, dtype=torch.long)) == 0.0
    assert frechet.histogram_entropy(torch.tensor([0, 0, 0, 1])) == pytest.approx(
        -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)), rel=1e-12)


def test_precision_and_recall_count_points_inside_the_other_sets_knn_balls():
    """Real points on a line 0, 1, .., 9 have 2-NN radius 1 inside and 2 at the ends (k = 2). Generated
    points: two inside the real balls, one far away; and their own radii cover only some real points."""
    real = torch.arange(10, dtype=torch.float64)[:, None]
    assert torch.equal(frechet.knn_radii(real, k=2), torch.tensor([2.0] + [1.0] * 8 + [2.0], dtype=torch.float64))
    generated = torch.tensor([[0.5], [4.2], [30.0]], dtype=torch.float64)
    precision, recall = frechet.precision_recall(generated, real, k=2)
    assert precision == pytest.approx(2 / 3)
    # generated radii (2nd neighbour): 0.5 -> 29.5, 4.2 -> 25.8, 30 -> 29.5: every real point is covered
    assert recall == 1.0
    tight = torch.tensor([[0.0], [0.1], [0.2], [0.3]], dtype=torch.float64)  # 1-NN radii 0.1: cover real 0 only
    assert frechet.precision_recall(tight, real, k=1) == (1.0, pytest.approx(1 / 10))
    with pytest.raises(ValueError, match="more than k"):
        frechet.knn_radii(real[:2], k=2)


def test_vendi_score_counts_distinct_directions():
    """n copies of one vector: 1; n orthogonal vectors: n; two directions in equal shares: 2; with dead
    (all-zero) features counted as one direction of their own."""
    one = torch.ones(6, 4, dtype=torch.float64)
    assert frechet.vendi_score(one) == pytest.approx(1.0, rel=1e-10)
    assert frechet.vendi_score(torch.eye(5, dtype=torch.float64) * 3.0) == pytest.approx(5.0, rel=1e-10)
    two = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 2.0]] * 4, dtype=torch.float64)
    assert frechet.vendi_score(two) == pytest.approx(2.0, rel=1e-10)
    unequal = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]], dtype=torch.float64)  # shares 3/4, 1/4
    assert frechet.vendi_score(unequal) == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    dead = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 0.0]] * 2, dtype=torch.float64)
    assert frechet.vendi_score(dead) == pytest.approx(2.0, rel=1e-10)


def test_classifier_figures_of_real_digits_against_themselves_are_their_floors():
    generator = torch.Generator().manual_seed(0)
    x, y = synthetic_digits(400, generator)
    model = frechet.train_classifier(x, y, seed=0, epochs=8, batch_size=50, lr=3e-3, progress=False, max_shift=0,
                                     width=8, features=16)
    figures = frechet.classifier_figures(model, x[:100], x[:100], x[100:200])
    for key in ("fd", "confident", "class_entropy", "precision", "recall", "vendi"):
        assert figures[key] == pytest.approx(figures[f"{key}_floor"], rel=1e-12)
    assert figures["confident"] > 0.2 and figures["class_entropy"] > 3.0 and 1 < figures["vendi"] < 16
    blank = frechet.classifier_figures(model, torch.zeros(100, 1, 28, 28), x[:100], x[100:200])
    assert blank["recall"] < 0.2 and blank["class_entropy"] == 0.0 and blank["fd"] > figures["fd"]
