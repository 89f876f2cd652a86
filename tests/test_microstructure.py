"""microstructure.py: the level-cut Gaussian field's images against its closed forms, exactly on every grid."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import microstructure as ms

# a smaller field than the default, so that a fine grid of 8 x 8 sub-cells per 64-cell stays cheap; tau != 0,
# so that Phi(-tau) and Phi(tau), and a field of the wrong variance, give other figures
SMALL = dict(tau=0.4, ell=0.12, band=6, fine=512)
COUNT = 300


@pytest.fixture(scope="module")
def small():
    law = ms.Microstructure(**SMALL)
    return law, law.sample(COUNT, [16, 32, 64], seed=0)


def standard_error(per_image):
    return float(np.std(per_image) / math.sqrt(len(per_image)))


def test_cell_averages_at_n_reduced_to_n_over_2_are_the_generators_own_images(small):
    _, images = small
    assert torch.equal(torch.nn.functional.avg_pool2d(images[64], 2), images[32])
    assert torch.equal(torch.nn.functional.avg_pool2d(images[32], 2), images[16])
    law = ms.Microstructure(**SMALL)
    again = law.sample(5, [32], seed=0, first=7)[32]
    assert torch.equal(again, images[32][7:12])  # sample i is a function of (seed, i): any subset, any count
    assert not torch.equal(law.sample(5, [32], seed=1, first=7)[32], again)
    assert images[64].dtype == torch.float32 and images[64].min() >= 0 and images[64].max() <= 1


def test_the_field_has_unit_variance_and_the_correlation_of_its_spectrum():
    law = ms.Microstructure(**SMALL)
    field = law.field(law.coefficients(3, 0, 400), 32)
    assert field.var().item() == pytest.approx(1.0, abs=0.03)
    for lag in (1, 3, 6):
        empirical = (field * torch.roll(field, lag, dims=-1)).mean().item()
        assert empirical == pytest.approx(law.correlation(lag / 32), abs=0.03)
    assert law.correlation(0.0) == pytest.approx(1.0, rel=1e-12)


def test_the_closed_forms_against_independent_numerics():
    """S2 against scipy's bivariate normal, lambda_2 against a finite difference of rho, L_A through it."""
    law = ms.Microstructure(**SMALL)
    assert law.volume_fraction() == pytest.approx(stats.norm.sf(0.4), rel=1e-12)
    assert float(law.two_point(0.0)) == pytest.approx(law.volume_fraction(), rel=1e-9)  # rho(0) = 1
    for r in (0.02, 0.07, 0.2):
        rho = float(law.correlation(r))
        both_above = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1 + 1e-12]]).cdf([-0.4, -0.4])
        assert float(law.two_point(r)) == pytest.approx(both_above, abs=2e-5)
    h = 1e-4
    second = (law.correlation(h) - 2 * law.correlation(0.0) + law.correlation(-h)) / h**2
    assert law.second_moment() == pytest.approx(-second, rel=1e-5)
    assert law.interface_length() == pytest.approx(math.sqrt(law.second_moment()) / 2 * math.exp(-0.08), rel=1e-12)


def test_volume_fraction_and_two_point_probability_of_the_images_match_the_closed_forms(small):
    law, images = small
    for n in (16, 64):
        per_image = images[n].mean(dim=(1, 2, 3)).double().numpy()
        assert abs(per_image.mean() - law.volume_fraction()) < 3 * standard_error(per_image)
    lags = np.array([2, 4, 8, 16])  # at 64: r = 1/32 .. 1/4
    per_image = np.stack([ms.two_point_along_axes(images[64][i:i + 1], 16)[lags] for i in range(COUNT)])
    expected = law.two_point(lags / 64)
    for j in range(len(lags)):
        assert abs(per_image[:, j].mean() - expected[j]) < 3 * standard_error(per_image[:, j])


def test_interface_length_converges_to_rices_formula_as_the_grid_resolves_the_curvature(small):
    """The marching-squares estimate is below the continuum value at 16 (it cuts the curves' corners) and
    within its standard error of it at 64."""
    law, images = small
    lengths = {n: ms.interface_length(images[n]) for n in (16, 32, 64)}
    assert abs(lengths[64].mean() - law.interface_length()) < 3 * standard_error(lengths[64])
    # the same microstructures on every grid: the paired differences show the coarse grid's bias
    assert (lengths[16] - lengths[64]).mean() < -3 * standard_error(lengths[16] - lengths[64])
    assert abs((lengths[32] - lengths[64]).mean()) < abs((lengths[16] - lengths[64]).mean()) / 2


def test_interface_length_of_a_disk_of_exact_area_fractions_is_its_circumference():
    fine, n, radius = 2048, 128, 0.3
    x = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine
    inside = (((x[:, None] - 0.5) ** 2 + (x[None, :] - 0.45) ** 2) < radius**2).float()[None, None]
    disk = torch.nn.functional.avg_pool2d(inside, fine // n)
    assert ms.interface_length(disk)[0] == pytest.approx(2 * math.pi * radius, rel=5e-3)
    square = torch.zeros(1, 1, n, n)
    square[..., 32:96, 40:104] = 1.0  # the 0.5 level of a pixel-edge square passes through the edge pixels
    assert ms.interface_length(square)[0] == pytest.approx(4 * 64 / n - 4 * (1 - math.sqrt(0.5)) / n, rel=1e-9)


def test_sharpness_is_the_same_on_every_grid_for_true_images_and_grows_for_interpolated_ones(small):
    from resample import fourier_resample

    _, images = small
    true = [ms.sharpness(images[n]) for n in (16, 32, 64)]
    assert max(true) / min(true) < 1.03
    interpolated = fourier_resample(images[16], 64).clamp(0, 1)
    assert ms.sharpness(interpolated) > 2.5 * true[-1]
    assert ms.high_band_share(images[64], 8) > 3 * ms.high_band_share(interpolated, 8)


def test_the_radial_spectrum_holds_the_power_of_the_images():
    law = ms.Microstructure(**SMALL)
    images = law.sample(20, [32], seed=5)[32]
    k, power = ms.radial_spectrum(images)
    centred = images - images.mean(dim=(-2, -1), keepdim=True)
    assert len(k) == 17 and power[0] == pytest.approx(0.0, abs=1e-12)
    assert power.max() > 0 and float(centred.pow(2).mean()) > 0


@pytest.mark.parametrize("options,message", [(dict(ell=0.0), "ell > 0"), (dict(tau=float("nan")), "finite tau"),
                                             (dict(band=0), "band"), (dict(fine=10, band=6), "fine > 2 band")])
def test_bad_parameters_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ms.Microstructure(**options)
    with pytest.raises(ValueError, match="divide the fine grid"):
        ms.Microstructure(**SMALL).sample(2, [48], seed=0)
