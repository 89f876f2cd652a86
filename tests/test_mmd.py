import math

import pytest
import torch

from mmd import riesz_mmd, riesz_mmd_bruteforce


def sets(generator, n=70, m=50, shape=(1, 6, 6)):
    x = 0.2 + 0.4 * torch.rand(n, *shape, generator=generator, dtype=torch.float64)
    y = 0.25 + 0.4 * torch.rand(m, *shape, generator=generator, dtype=torch.float64) ** 2
    return x, y


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mmd_matches_brute_force(chunk, dtype, generator):
    x, y = sets(generator)
    expected = riesz_mmd_bruteforce(x, y)
    assert riesz_mmd(x, y, chunk=chunk, dtype=dtype) == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_mmd_of_a_set_with_itself_is_zero(generator):
    x, _ = sets(generator)
    # the cross term's diagonal |x_i - x_i| comes out as sqrt(rounding error) ~ 1e-8 / n
    assert abs(riesz_mmd(x, x)) < 1e-9


def test_mmd_is_symmetric_and_translation_invariant(generator):
    x, y = sets(generator)
    assert riesz_mmd(x, y) == pytest.approx(riesz_mmd(y, x), rel=1e-9)
    shift = 0.3 * torch.rand(1, 1, 6, 6, generator=generator, dtype=torch.float64)  # stays in [0, 1]
    assert riesz_mmd(x + shift, y + shift) == pytest.approx(riesz_mmd(x, y), rel=1e-9)


def test_mmd_closed_form_for_two_constant_images():
    """X all black, Y all equal to c: E|X - Y| = c sqrt(d), both within-terms vanish."""
    d, c = 56 * 56, 0.35
    x = torch.zeros(10, 1, 56, 56, dtype=torch.float64)
    y = torch.full((7, 1, 56, 56), c, dtype=torch.float64)
    # identical points: their distance is sqrt(float64 rounding of |a|^2 + |b|^2 - 2 a.b) ~ 1e-7
    assert riesz_mmd(x, y) == pytest.approx(c * math.sqrt(d), rel=1e-7)


def test_mmd_closed_form_for_two_point_sets():
    """X = {0, a}, Y = {0}: E|X-Y| = |a|/2, E|X-X'| = |a|/2 (V-statistic), so MMD = |a|/4."""
    a = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    a[..., 0, 0], a[..., 1, 2] = 0.3, 0.4
    x = torch.cat([torch.zeros_like(a), a])
    assert riesz_mmd(x, torch.zeros_like(a)) == pytest.approx(0.5 / 4, rel=1e-9)


def test_mmd_clamps_pixels_to_the_unit_interval(generator):
    x, y = sets(generator)
    assert riesz_mmd(x * 3 - 1, y) == pytest.approx(riesz_mmd((x * 3 - 1).clamp(0, 1), y), rel=1e-9)


def test_mmd_is_nonnegative_and_grows_with_separation(generator):
    x, y = sets(generator)
    values = [riesz_mmd(x, (y + s).clamp(0, 1)) for s in (0.0, 0.1, 0.2)]
    assert values[0] >= 0 and values[0] < values[1] < values[2]


def test_mmd_refuses_mismatched_sets():
    with pytest.raises(ValueError, match="differ in size"):
        riesz_mmd(torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 5, 5))


def exact_energy(x, y):
    """The V-statistic from all pairwise distances in float64, written out here (not mmd.py's code)."""
    a = x.reshape(len(x), -1).double().clamp(0, 1)
    b = y.reshape(len(y), -1).double().clamp(0, 1)

    def mean_distance(p, q):  # row by row: a (len(p), len(q), pixels) difference tensor is 0.5 GB at 300
        return torch.stack([(row - q).pow(2).sum(-1).sqrt().mean() for row in p]).mean()

    return float(mean_distance(a, b) - 0.5 * mean_distance(a, a) - 0.5 * mean_distance(b, b))


def test_mmd_clamps_to_the_unit_range_and_works_in_float64_from_float32_inputs(generator):
    """Inputs outside [0, 1] are clamped (as the protocol says), and float32 images are scored in
    float64 from the start: agreement with an independent float64 computation to 1e-10."""
    x = (1.6 * torch.rand(40, 1, 8, 8, generator=generator) - 0.3).float()  # a third outside [0, 1]
    y = torch.rand(30, 1, 8, 8, generator=generator).float()
    assert riesz_mmd(x, y) == pytest.approx(exact_energy(x, y), rel=1e-10)
    assert riesz_mmd(x, y) == pytest.approx(riesz_mmd(x.clamp(0, 1), y), rel=1e-12)


def test_mmd_of_single_images_and_refusals():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    y = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    assert riesz_mmd(x, y) == pytest.approx(0.5 * 4)  # |x - y| = 0.5 sqrt(16), no within-set spread
    with pytest.raises(ValueError, match="^riesz_mmd needs two non-empty sample sets$"):
        riesz_mmd(x[:0], y)
    with pytest.raises(ValueError, match="non-empty"):
        riesz_mmd(x, y[:0])
    with pytest.raises(ValueError, match=r"differ in size \(\(1, 4, 4\) vs \(1, 5, 5\)\)"):
        riesz_mmd(x, torch.zeros(2, 1, 5, 5))


def test_float32_gram_products_still_sum_in_float64():
    """dtype=float32 rounds the Gram products only: 2.4e-8 relative here against the exact float64
    figure (measured), where summing each block in float32 as well gives 5e-7."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 1, 28, 28, generator=gen), torch.rand(300, 1, 28, 28, generator=gen) ** 2
    exact = exact_energy(x, y)
    assert riesz_mmd(x, y, dtype=torch.float32) == pytest.approx(exact, rel=1e-7)  # cross and within sums
