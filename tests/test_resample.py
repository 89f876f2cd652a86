import math

import pytest
import torch

from resample import bicubic_resample, fourier_resample, power_outside_band, truncate_noise


def band_limited(n, modes=((3, 5, 0.3), (7, -2, 1.1), (0, 4, -0.5)), dtype=torch.float64):
    """Samples at pixel centres of a sum of cosines with the given (k1, k2, phase)."""
    x = (torch.arange(n, dtype=dtype) + 0.5) / n
    X, Y = torch.meshgrid(x, x, indexing="ij")
    return sum(torch.cos(2 * math.pi * (k1 * X + k2 * Y) + p) for k1, k2, p in modes) + 0.25


@pytest.mark.parametrize("n,m", [(28, 56), (28, 84), (27, 56), (56, 28), (56, 17), (28, 31), (16, 16)])
def test_fourier_resample_is_exact_on_band_limited_functions(n, m):
    assert torch.allclose(fourier_resample(band_limited(n), m), band_limited(m), atol=1e-12)


@pytest.mark.parametrize("n,m", [(28, 56), (28, 32), (27, 81), (28, 29)])
def test_fourier_upsampling_then_truncation_is_identity(n, m, generator):
    u = torch.randn(3, n, n, generator=generator, dtype=torch.float64)
    assert torch.allclose(fourier_resample(fourier_resample(u, m), n), u, atol=1e-12)


def test_fourier_upsampling_keeps_the_coarse_samples_at_odd_factors(generator):
    """Pixel centres of the 28-grid are centres of every third fine pixel at 84."""
    u = torch.randn(28, 28, generator=generator, dtype=torch.float64)
    fine = fourier_resample(u, 84)
    assert torch.allclose(fine[1::3, 1::3], u, atol=1e-12)


def test_bicubic_uses_the_same_pixel_centres():
    """A linear ramp in the interior is resampled exactly by both methods; batches and channels
    pass through, and a (H, W) size gives that grid."""
    u = band_limited(28, modes=((1, 0, 0.0),))
    assert torch.allclose(bicubic_resample(u[None], 56)[0, 20:36, 20:36],
                          band_limited(56, modes=((1, 0, 0.0),))[20:36, 20:36], atol=2e-3)
    batch = torch.stack([u, 2 * u, -u]).reshape(3, 1, 28, 28).repeat(1, 2, 1, 1)
    out = bicubic_resample(batch, 56)
    assert out.shape == (3, 2, 56, 56)
    assert torch.allclose(out[1, 1], 2 * out[0, 0]) and torch.allclose(out[2, 0], -out[0, 1])
    assert bicubic_resample(batch, (20, 30)).shape == (3, 2, 20, 30)


def test_truncated_white_noise_is_white_noise_of_the_coarse_grid(generator):
    """Every DFT mode (Nyquist rows included) keeps the white-noise variance after truncation."""
    fine = 2.0 * torch.randn(20000, 12, 12, generator=generator, dtype=torch.float64)  # std n / n0
    coarse = truncate_noise(fine, 6)
    mode_variance = torch.fft.fft2(coarse).abs().pow(2).mean(0) / 36
    assert torch.allclose(mode_variance, torch.ones(6, 6, dtype=torch.float64), atol=0.05)


def test_resample_dispatches_to_fourier_by_default_and_to_bicubic_and_names_the_choices(generator):
    from resample import resample

    u = torch.rand(2, 1, 12, 12, generator=generator, dtype=torch.float64)
    assert torch.equal(resample(u, 20), fourier_resample(u, 20))
    assert torch.equal(resample(u, 20, "bicubic"), bicubic_resample(u, 20))
    with pytest.raises(ValueError, match="^unknown resampling method 'nearest': expected 'fourier' or 'bicubic'$"):
        resample(u, 20, "nearest")


def test_bicubic_returns_its_input_itself_when_the_grid_does_not_change():
    """The shortcut is part of the contract (no interpolation round trip), for (h, w), (c, h, w), (b, c, h, w)."""
    from resample import bicubic_resample

    for shape in ((9, 9), (2, 9, 9), (3, 2, 9, 9)):
        x = torch.rand(shape)
        assert bicubic_resample(x, 9) is x and bicubic_resample(x, (9, 9)) is x
        assert bicubic_resample(x, 5).shape == (*shape[:-2], 5, 5)


def test_fourier_matrix_by_default_samples_the_folded_nyquist_mode_exactly():
    """Down from 8 to 4 pixel centres, sin(2 pi 2 x) (the 4-grid's Nyquist mode; its cosine vanishes at
    the pixel centres) keeps its samples with the default gain 1: the exact samples of |k| <= m/2."""
    from resample import fourier_matrix

    def centres(n):
        return (torch.arange(n, dtype=torch.float64) + 0.5) / n

    signal = torch.sin(2 * math.pi * 2 * centres(8))
    matrix = fourier_matrix(8, 4, dtype=torch.float64)
    assert torch.allclose(matrix @ signal, torch.sin(2 * math.pi * 2 * centres(4)), atol=1e-12)
    assert torch.sin(2 * math.pi * 2 * centres(4)).abs().min() == pytest.approx(1.0)


def test_power_outside_band_is_the_share_of_the_modes_a_coarse_grid_does_not_hold(generator):
    """Cosines of known amplitude on the 28 grid: power ~ amplitude^2, so a mode (3, 2) of amplitude 1
    and a mode (9, 0) of amplitude 2 leave 4 / 5 of the power outside the 14 grid's band |k_i| <= 7;
    the mode (7, 7) is inside it, and the image mean counts for nothing. A 14 image Fourier-interpolated
    to 28 has no power outside."""
    x = (torch.arange(28, dtype=torch.float64) + 0.5) / 28
    X, Y = torch.meshgrid(x, x, indexing="ij")
    wave = lambda k1, k2: torch.cos(2 * math.pi * (k1 * X + k2 * Y))
    images = (5.0 + wave(3, 2) + 2 * wave(9, 0))[None, None]
    assert power_outside_band(images, 14) == pytest.approx(4 / 5, rel=1e-12)
    assert power_outside_band(images, 28) == pytest.approx(0.0, abs=1e-12)
    assert power_outside_band((wave(7, 7) + wave(0, 8))[None, None], 14) == pytest.approx(1 / 2, rel=1e-12)
    # over a batch the powers add before the share is taken
    batch = torch.stack([wave(3, 2), 3 * wave(0, 10)])[:, None]
    assert power_outside_band(batch, 14) == pytest.approx(9 / 10, rel=1e-12)
    coarse = torch.rand(4, 1, 14, 14, generator=generator, dtype=torch.float64)
    assert power_outside_band(fourier_resample(coarse, 28), 14) == pytest.approx(0.0, abs=1e-12)
