"""Resampling of grid functions on the periodic unit square.

One sampling convention is used everywhere in this project: an n x n grid holds
the values u(x_i, y_j) at the pixel centres x_i = (i + 1/2) / n, i = 0 .. n-1.
It is the convention of `F.interpolate(..., align_corners=False)`, of
torchvision's bilinear `Resize` and of `AvgPool2d`, so the data transforms, the
bicubic path and the Fourier path agree on where a pixel sits.

Fourier resampling reads the n samples as the trigonometric polynomial
u(x) = sum_{|k| <= n/2} c_k exp(2 pi i k x) that interpolates them, and samples
it on another grid. With samples at pixel centres the DFT coefficients are
d_k = c_k exp(i pi k / n). For even n the Nyquist bin d_{n/2} stands for the pair
k = +-n/2 and is split in halves between them (every coarse sample stays exact);
going down to an even m, the pair +-m/2 is folded back into one bin (the exact
samples of the band |k| <= m/2). So resampling up and back down is the identity.

The map is linear and separable, so it is applied as two small dense matrices,
u_out = R_m<-n u R_m<-n^T, built once per (n, m) from the formula above and
cached: one BLAS call per axis, faster on a CPU than FFTs at these sizes.
"""
import functools
import math

import torch
import torch.nn.functional as F


def wavenumbers(n, device=None):
    """Integer wavenumbers of an n-point DFT in FFT order: 0, 1, .., -2, -1."""
    return torch.fft.fftfreq(n, d=1.0 / n, device=device).round().long()


@functools.lru_cache(maxsize=256)
def _fourier_matrix_f64(n, m, nyquist_gain):
    """R (m x n, float64) with R @ u = samples on the m-grid of u's interpolant."""
    k = torch.arange(-(n // 2), n // 2 + 1, dtype=torch.float64)  # physical modes
    weight = torch.ones_like(k, dtype=torch.complex128)
    if n % 2 == 0:
        weight[k.abs() == n / 2] = 0.5  # split the Nyquist bin
    keep = k.abs() <= m / 2
    if m % 2 == 0:
        weight[k.abs() == m / 2] *= nyquist_gain  # folded pair +-m/2
    k, weight = k[keep], weight[keep]
    x_in = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x_out = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    # c_k = (1/n) sum_i u_i exp(-2 pi i k x_i);  out_j = sum_k c_k exp(2 pi i k y_j)
    analysis = torch.exp(-2j * math.pi * k[:, None] * x_in[None, :]) / n
    synthesis = torch.exp(2j * math.pi * x_out[:, None] * k[None, :])
    return ((synthesis * weight[None, :]) @ analysis).real.contiguous()


def fourier_matrix(n, m, dtype=torch.float32, device=None, nyquist_gain=1.0):
    """Dense 1-D Fourier resampling matrix from n to m pixel-centre samples."""
    return _fourier_matrix_f64(int(n), int(m), float(nyquist_gain)).to(device=device, dtype=dtype)


def fourier_resample(x, size, nyquist_gain=1.0):
    """Exact band-limited resampling of (..., h, w) to (..., size, size) or size=(H, W).

    nyquist_gain scales the folded Nyquist pair when going down to an even grid:
    1 gives the exact samples of the band |k| <= m/2; 1/sqrt(2) keeps white noise
    white (the folded bin then has the variance of the other modes).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if (h, w) == (out_h, out_w):
        return x
    rows = fourier_matrix(h, out_h, x.dtype, x.device, nyquist_gain)
    cols = fourier_matrix(w, out_w, x.dtype, x.device, nyquist_gain)
    return rows @ x @ cols.T


def truncate_noise(noise, size):
    """Fourier-truncate a field of white-noise type to a coarser grid, keeping its law.

    Modes with |k| < size/2 are copied; the Nyquist pair is folded with gain
    1/sqrt(2) so the coarse field is distributed exactly as noise drawn there.
    """
    return fourier_resample(noise, size, nyquist_gain=1 / math.sqrt(2))


def bicubic_resample(x, size):
    """Bicubic resampling (pixel centres, antialiased when shrinking), for comparison."""
    out = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == out:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:])
    flat = F.interpolate(flat, size=out, mode="bicubic", align_corners=False, antialias=True)
    return flat.reshape(*shape[:-2], *out)


def power_outside_band(images, n):
    """Share of the power of (..., N, N) images, each image's mean removed, at the modes an n-grid does
    not hold: max(|k_1|, |k_2|) > n / 2, summed over the images. What a model trained on the n-grid has
    to produce itself to fill the finer grid (a Fourier interpolation of n-grid images has none)."""
    u = images.double()
    power = torch.fft.fft2(u - u.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    power = power.reshape(-1, *power.shape[-2:]).sum(0)
    k = wavenumbers(power.shape[-1]).abs()
    outside = (k[:, None] > n / 2) | (k[None, :] > n / 2)
    return float(power[outside].sum() / power.sum())


def resample(x, size, method="fourier"):
    """Resample (..., h, w) with 'fourier' (exact, band-limited) or 'bicubic'."""
    if method == "fourier":
        return fourier_resample(x, size)
    if method == "bicubic":
        return bicubic_resample(x, size)
    raise ValueError(f"unknown resampling method {method!r}: expected 'fourier' or 'bicubic'")
