"""Two-phase random microstructures: level cuts of a band-limited Gaussian random field, exact on every grid.

The field (on the periodic unit square, x in [0, 1)^2):
    f(x) = sum_{|k1|, |k2| <= K} c_k e^{2 pi i k.x},  c_{-k} = conj(c_k),  E |c_k|^2 = S(k) / Z,
    S(k) = exp(-(2 pi |k| ell)^2 / 2),  Z = sum_k S(k):
a stationary Gaussian field of unit variance with correlation rho(r) = sum_k S(k) cos(2 pi k.r) / Z (a finite
Fourier series: rho and its derivatives are exact sums). ell is the correlation length, K the band limit.
The phase is u = 1[f > tau]. A pixel of the N-grid holds the phase's area fraction in its cell, counted on
a fine grid of `fine` points a side (the fine points are the centres of (fine/N)^2 sub-cells): so for every N
dividing `fine`, the N image is exactly the cell average of the 2N image, and the fine grid is the only
approximation of the area fraction (the sub-cell points of a cell the interface crosses).

Closed forms (continuum values, the truth at every grid):
    volume fraction  P(f > tau) = Phi(-tau);
    two-point probability  S2(r) = P(f(0) > tau, f(r) > tau)
        = Phi(-tau)^2 + (1 / 2 pi) int_0^rho(r) exp(-tau^2 / (1 + s)) / sqrt(1 - s^2) ds   (Plackett);
    interface length per unit area  L_A = phi(tau) E|grad f| = (sqrt(lambda_2) / 2) exp(-tau^2 / 2),
        lambda_2 = -d^2 rho / dx1^2 (0) = (2 pi)^2 sum_k k1^2 S(k) / Z   (Rice's formula through the
        coarea formula: grad f is N(0, lambda_2 I), independent of f at the same point, as S is symmetric).

Metrics of images against these (`image_statistics`): volume fraction, S2 along the axes, the interface
length per area of the 0.5 level set by marching squares (`interface_length`), the interface sharpness
N mean(u (1 - u)) (the same at every N for true cell averages; it grows like N for an image that is a
smooth interpolation of a coarser one), and the radially averaged power spectrum.
"""
import math

import numpy as np
import torch
from scipy import integrate, special

DEFAULTS = {"tau": 0.0, "ell": 0.06, "band": 12, "fine": 1024}
GENERATOR_VERSION = 1  # part of the cache's name: a change to what a seed generates must raise it


class Microstructure:
    """The field's law and the generator of its images, from the parameters tau, ell, band, fine."""

    def __init__(self, tau=DEFAULTS["tau"], ell=DEFAULTS["ell"], band=DEFAULTS["band"], fine=DEFAULTS["fine"]):
        if not (math.isfinite(tau) and math.isfinite(ell) and ell > 0):
            raise ValueError(f"microstructure needs a finite tau and ell > 0, got tau={tau}, ell={ell}")
        if not (isinstance(band, int) and band >= 1) or not (isinstance(fine, int) and fine > 2 * band):
            raise ValueError(f"microstructure needs an integer band >= 1 and fine > 2 band, got band={band}, "
                             f"fine={fine}")
        self.tau, self.ell, self.band, self.fine = float(tau), float(ell), int(band), int(fine)
        k = torch.arange(-band, band + 1, dtype=torch.float64)
        self.k1, self.k2 = torch.meshgrid(k, k, indexing="ij")
        spectrum = torch.exp(-(2 * math.pi * self.ell) ** 2 * (self.k1**2 + self.k2**2) / 2)
        self.spectrum = spectrum / spectrum.sum()  # S(k) / Z: the variance of c_k

    def options(self):
        return {"tau": self.tau, "ell": self.ell, "band": self.band, "fine": self.fine}

    # ------------------------------------------------------------ the law

    def correlation(self, r1, r2=0.0):
        """rho(r) = sum_k S(k) cos(2 pi k.r) / Z at the offsets (r1, r2) (arrays broadcast)."""
        r1, r2 = np.broadcast_arrays(np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64))
        phase = 2 * math.pi * (np.multiply.outer(r1, self.k1.numpy()) + np.multiply.outer(r2, self.k2.numpy()))
        return (np.cos(phase) * self.spectrum.numpy()).sum(axis=(-2, -1))

    def second_moment(self):
        """lambda_2 = -rho''(0) along an axis = (2 pi)^2 sum_k k1^2 S(k) / Z."""
        return float((2 * math.pi) ** 2 * (self.k1**2 * self.spectrum).sum())

    def volume_fraction(self):
        """P(f > tau) = Phi(-tau)."""
        return float(special.ndtr(-self.tau))

    def two_point(self, r1, r2=0.0):
        """S2(r) = P(f(0) > tau, f(r) > tau), exactly (Plackett's integral in the correlation)."""
        rho = np.atleast_1d(self.correlation(r1, r2))
        base = self.volume_fraction() ** 2
        def density(s):
            return math.exp(-self.tau**2 / (1 + s)) / math.sqrt(1 - s * s)
        values = [base + integrate.quad(density, 0.0, min(float(p), 1.0 - 1e-15))[0] / (2 * math.pi) for p in rho]
        return np.array(values).reshape(np.shape(self.correlation(r1, r2)))

    def interface_length(self):
        """Interface length per unit area L_A = (sqrt(lambda_2) / 2) exp(-tau^2 / 2)."""
        return math.sqrt(self.second_moment()) / 2 * math.exp(-self.tau**2 / 2)

    # ------------------------------------------------------------ samples

    def coefficients(self, seed, first, count):
        """c_k (count, 2K+1, 2K+1) complex128 of samples first .. first + count - 1, Hermitian (c_{-k} =
        conj(c_k)), E|c_k|^2 = S(k) / Z. Sample i draws from its own stream, numpy's PCG64 seeded by
        (seed, i) (as priors.PerSampleGenerator), so it is the same in any subset, count or order."""
        size = 2 * self.band + 1
        z = np.stack([np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,))).standard_normal(
            (2, size, size)) for i in range(first, first + count)])
        z = torch.complex(torch.from_numpy(z[:, 0]), torch.from_numpy(z[:, 1]))
        c = (z + z.flip(-2, -1).conj()) / 2  # Hermitian, E|c_k|^2 = 1 (the centre: real, of variance 1)
        return c * torch.sqrt(self.spectrum)

    def field(self, coefficients, points):
        """f on the grid of `points` pixel centres a side: Re(E c E^T) with E[i, k] = e^{2 pi i k x_i}, x_i =
        (i + 1/2) / points (two complex matrix products: 3x faster here than an inverse FFT of the
        zero-filled spectrum at 1,024, as the band holds 25 of the 1,024 modes a side)."""
        x = (torch.arange(points, dtype=torch.float64) + 0.5) / points
        k = torch.arange(-self.band, self.band + 1, dtype=torch.float64)
        basis = torch.exp(2j * math.pi * x[:, None] * k[None, :])
        return (basis @ coefficients @ basis.T).real

    def images(self, coefficients, grids):
        """{N: (count, 1, N, N) float32 area fractions} for each N of `grids` (each dividing `fine`), one
        fine phase field a sample, cell-averaged to every grid."""
        for n in grids:
            if self.fine % n:
                raise ValueError(f"a microstructure grid must divide the fine grid {self.fine}, got {n}")
        out = {n: [] for n in grids}
        for c in coefficients.split(16):
            phase = (self.field(c, self.fine) > self.tau).to(torch.float32)[:, None]
            for n in grids:
                out[n].append(torch.nn.functional.avg_pool2d(phase, self.fine // n))
        return {n: torch.cat(parts) for n, parts in out.items()}

    def sample(self, count, grids, seed, first=0):
        """Samples first .. first + count - 1 of the seed's sequence on each grid of `grids`."""
        return self.images(self.coefficients(seed, first, count), grids)


# ------------------------------------------------------------ image statistics

def two_point_along_axes(images, max_lag):
    """S2 at lags 0 .. max_lag pixels along both axes (averaged), estimated from images (B, 1, N, N)."""
    u = images[:, 0].double()
    return np.array([float(((u * torch.roll(u, lag, dims=-1)).mean() + (u * torch.roll(u, lag, dims=-2)).mean()) / 2)
                     for lag in range(max_lag + 1)])


def interface_length(images, level=0.5):
    """Length per unit area of the `level` set of each image (B, 1, N, N), by marching squares on the
    periodic grid of pixel centres: the set crosses a cell's edge where the linear interpolation of its two
    corners does; two crossings make one segment; four (a saddle) make two, paired by the value at the
    cell's centre (the mean of its corners). Returns (B,) float64."""
    u = images[:, 0].double()
    n = u.shape[-1]
    # the corners of cell (i, j) in (row, column) cell units: a (0, 0), b (0, 1), c (1, 1), d (1, 0)
    a, b = u, torch.roll(u, -1, dims=-1)
    c, d = torch.roll(u, (-1, -1), dims=(-2, -1)), torch.roll(u, -1, dims=-2)
    # edges: a-b (top), b-c (right), d-c (bottom), a-d (left), each as (p, q, point at fraction t from p)
    edges = [(a, b, lambda t: (0 * t, t)), (b, c, lambda t: (t, 1 + 0 * t)),
             (d, c, lambda t: (1 + 0 * t, t)), (a, d, lambda t: (t, 0 * t))]
    crossed, rows, cols = [], [], []
    for p, q, point in edges:
        t = (level - p) / torch.where(q == p, torch.ones_like(q), q - p)
        row, col = point(t)
        crossed.append((p > level) != (q > level))
        rows.append(row)
        cols.append(col)
    crossed, rows, cols = torch.stack(crossed), torch.stack(rows), torch.stack(cols)

    def segment(i, j):
        return torch.hypot(rows[i] - rows[j], cols[i] - cols[j])

    count = crossed.sum(0)
    first = crossed.to(torch.int64).argmax(0, keepdim=True)
    last = 3 - crossed.flip(0).to(torch.int64).argmax(0, keepdim=True)
    one = torch.hypot(rows.gather(0, first)[0] - rows.gather(0, last)[0],
                      cols.gather(0, first)[0] - cols.gather(0, last)[0])
    centre_like_a = ((a + b + c + d) / 4 > level) == (a > level)
    saddle = torch.where(centre_like_a, segment(0, 1) + segment(2, 3), segment(0, 3) + segment(1, 2))
    length = torch.where(count == 2, one, torch.where(count == 4, saddle, torch.zeros_like(u)))
    return (length.sum(dim=(-2, -1)) / n).numpy()  # a cell is 1/n of the unit square a side


def sharpness(images):
    """N mean(u (1 - u)): the interface cells' share, times N (the same at every N for true cell averages)."""
    u = images.double().clamp(0, 1)
    return float(images.shape[-1] * (u * (1 - u)).mean())


def radial_spectrum(images):
    """Radially averaged power spectrum of images (B, 1, N, N) minus their mean: (|k| bins 0 .. N/2, power)."""
    u = images[:, 0].double()
    n = u.shape[-1]
    power = torch.fft.fft2(u - u.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).mean(0) / n**4
    k = torch.fft.fftfreq(n, 1.0 / n)
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long()
    bins = torch.bincount(radius.flatten(), weights=power.flatten(), minlength=n // 2 + 1)[: n // 2 + 1]
    counts = torch.bincount(radius.flatten(), minlength=n // 2 + 1)[: n // 2 + 1]
    return np.arange(n // 2 + 1), (bins / counts.clamp_min(1)).numpy()


def high_band_share(images, cutoff):
    """Share of the power (minus the mean) at |k| > cutoff."""
    u = images[:, 0].double()
    n = u.shape[-1]
    power = torch.fft.fft2(u - u.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).sum(0)
    k = torch.fft.fftfreq(n, 1.0 / n)
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    return float(power[radius > cutoff].sum() / power.sum())


def figures(samples, true_images, law, n0):
    """The figures of a row of test.py for samples on the N-grid (N = their size) of a model trained at n0,
    each beside the true samples at the same N and the continuum value: volume fraction, S2 error (root
    mean square over the lags 1 .. N/4 pixels along the axes, physical r up to 1/4), interface length per
    area, sharpness, the share of power above the training grid's band |k| > n0 / 2, and the radial
    spectra (for the plot)."""
    n = samples.shape[-1]
    lags = np.arange(1, n // 4 + 1)
    continuum = law.two_point(lags / n)
    s2_samples, s2_true = two_point_along_axes(samples, lags[-1])[lags], two_point_along_axes(true_images, lags[-1])[lags]

    def rms(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    k, power = radial_spectrum(samples)
    _, power_true = radial_spectrum(true_images)
    return {"volume_fraction": float(samples.double().mean()), "volume_fraction_true": float(true_images.double().mean()),
            "volume_fraction_continuum": law.volume_fraction(),
            "s2_error": rms(s2_samples, continuum), "s2_error_true": rms(s2_true, continuum),
            "s2_error_vs_true": rms(s2_samples, s2_true),
            "interface": float(interface_length(samples).mean()),
            "interface_true": float(interface_length(true_images).mean()), "interface_continuum": law.interface_length(),
            "sharpness": sharpness(samples), "sharpness_true": sharpness(true_images),
            "high_band": high_band_share(samples, n0 / 2), "high_band_true": high_band_share(true_images, n0 / 2),
            "spectrum_k": k.tolist(), "spectrum": power.tolist(), "spectrum_true": power_true.tolist()}


def main(argv=None):
    """Time the generator (COUNT microstructures at GRID from the default law), then print the statistics
    of --stats_count of them at 32, 64 and 128 against the closed forms, and of the 32 images
    Fourier-interpolated to 128 (what a 32 model that only interpolates would give)."""
    import argparse
    import time

    from resample import fourier_resample

    parser = argparse.ArgumentParser(description="Generate microstructures, report the time and their statistics.")
    parser.add_argument("--count", type=int, default=10000, help="microstructures to generate and time (default 10000)")
    parser.add_argument("--grid", type=int, default=128, help="grid N of the timed images, N x N cell averages (default 128)")
    parser.add_argument("--stats_count", type=int, default=200,
                        help="samples whose statistics are printed at 32, 64 and 128 against the closed forms (default 200)")
    args = parser.parse_args(argv)
    law = Microstructure()
    started = time.perf_counter()
    for first in range(0, args.count, 256):
        law.sample(min(256, args.count - first), [args.grid], seed=0, first=first)
    seconds = time.perf_counter() - started
    print(f"{args.count} microstructures at {args.grid} (fine grid {law.fine}, {torch.get_num_threads()} threads): "
          f"{seconds:.1f} s")
    images = law.sample(args.stats_count, [32, 64, 128], seed=0)
    images["32 -> 128 interpolated"] = fourier_resample(images[32], 128).clamp(0, 1)
    print(f"continuum: volume fraction {law.volume_fraction():.4f}, interface length per area {law.interface_length():.3f}")
    for name, grid in images.items():
        lengths = interface_length(grid)
        print(f"{name}: volume fraction {float(grid.mean()):.4f}, interface length {lengths.mean():.3f} +- "
              f"{lengths.std() / math.sqrt(len(lengths)):.3f}, sharpness {sharpness(grid):.3f}, power above |k| = 16 "
              f"{100 * high_band_share(grid, 16):.2f}% (n = {len(grid)})")


if __name__ == "__main__":
    main()
