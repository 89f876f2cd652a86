"""The priors of DESIGN.md section 3, each a multiplier lambda(k) of physical wavenumber."""
import math

import torch

from priors.base import FourierPrior

TWO_PI = 2 * math.pi


def laplacian_symbol(k1, k2, n, kind):
    """Symbol of -Lap on the n-grid: the 5-point stencil with h = 1/n, or spectral.

    stencil:  (4 / h^2) (sin^2(pi k1 h) + sin^2(pi k2 h));  spectral: (2 pi |k|)^2.
    They agree for |k| << n; only the spectral one is exactly the same at every n.
    """
    if kind == "stencil":
        h = 1.0 / n
        return (4 / h**2) * (torch.sin(math.pi * k1 * h) ** 2 + torch.sin(math.pi * k2 * h) ** 2)
    if kind == "spectral":
        return TWO_PI**2 * (k1**2 + k2**2)
    raise ValueError(f"unknown laplacian {kind!r}: expected 'stencil' or 'spectral'")


class StandardPrior(FourierPrior):
    """A = I: white noise (unit variance per pixel at n0)."""

    name = "standard"
    is_identity = True

    def symbol(self, k1, k2, n):
        return torch.ones_like(k1)


class LaplacianPrior(FourierPrior):
    """A = amplitude * (-Lap_h)^(-1/2), the reference `lap_conv` prior.

    dc='finite' (default) gives the mean mode the multiplier amplitude / (2 pi), that
    of the lowest non-zero mode |k| = 1 under the spectral symbol, and the same at
    every n. dc='zero' is the reference behaviour: the image mean is never noised,
    so a drift error there is amplified by 1/m(t) over the reverse process.
    Q = amplitude^2 (-Lap)^(-1) is not trace class in 2-D (pixel variance ~ log n).
    """

    name = "lap_conv"

    def __init__(self, n0, laplacian="stencil", dc="finite", amplitude=10.0):
        super().__init__(n0)
        if dc not in ("finite", "zero"):
            raise ValueError(f"unknown dc option {dc!r}: expected 'finite' or 'zero'")
        laplacian_symbol(torch.zeros(1), torch.zeros(1), n0, laplacian)  # validates the kind
        self.laplacian, self.dc, self.amplitude = laplacian, dc, float(amplitude)

    def options(self):
        return {"laplacian": self.laplacian, "dc": self.dc, "amplitude": self.amplitude}

    def symbol(self, k1, k2, n):
        sigma = laplacian_symbol(k1, k2, n, self.laplacian)
        is_dc = (k1 == 0) & (k2 == 0)
        lam = self.amplitude / torch.sqrt(torch.where(is_dc, torch.ones_like(sigma), sigma))
        dc_value = self.amplitude / TWO_PI if self.dc == "finite" else 0.0
        return torch.where(is_dc, torch.full_like(lam, dc_value), lam)


class MaternPrior(FourierPrior):
    """Trace-class Matern/Bessel prior A = scale * (c - Lap)^(-s), s > 1/2.

    Q = scale^2 (c - Lap)^(-2 s) has sum_k (c + 4 pi^2 |k|^2)^(-2 s) < inf iff s > 1/2,
    so pixel variance stays bounded as n grows. `scale` makes the pixel variance
    at n0 equal to 1, like the standard prior's. Spectral symbol: exactly consistent.
    """

    name = "matern"

    def __init__(self, n0, s=0.75, c=TWO_PI**2):
        super().__init__(n0)
        if not s > 0.5:
            raise ValueError(f"matern prior needs s > 1/2 to be trace class, got s={s}")
        if not c > 0:
            raise ValueError(f"matern prior needs c > 0 (finite DC variance), got c={c}")
        self.s, self.c = float(s), float(c)
        k = torch.arange(n0, dtype=torch.float64)
        k = torch.where(k > n0 / 2, k - n0, k)
        k1, k2 = torch.meshgrid(k, k, indexing="ij")
        raw = self._unscaled(k1, k2)
        # pixel variance = (1 / n0^2) sum_k lambda(k)^2  (DFT coefficients have variance 1/n0^2)
        self.scale = float(n0 / torch.sqrt((raw**2).sum()))

    def options(self):
        return {"s": self.s, "c": self.c}

    def _unscaled(self, k1, k2):
        return (self.c + TWO_PI**2 * (k1**2 + k2**2)) ** (-self.s)

    def symbol(self, k1, k2, n):
        return self.scale * self._unscaled(k1, k2)


class RandomModesPrior(FourierPrior):
    """The reference `fno` prior: fixed random complex multipliers on the lowest modes.

    lambda(k) = a(k) + i b(k), a ~ U[0.2, 1), b ~ U[0, 0.8), for |k1|, |k2| < n0/2,
    zero above. Drawn once from `prior_seed` as a table indexed by physical
    wavenumber (saved with the model), made Hermitian, lambda(-k) = conj(lambda(k)),
    so A maps real fields to real fields; the same table is used at every n.
    """

    name = "fno"

    def __init__(self, n0, prior_seed=0):
        super().__init__(n0)
        self.prior_seed = int(prior_seed)
        self.max_mode = (n0 - 1) // 2  # |k| < n0/2
        size = (2 * self.max_mode + 1, self.max_mode + 1)  # k1 in [-K, K], k2 in [0, K]
        gen = torch.Generator().manual_seed(self.prior_seed)
        real = 0.2 + 0.8 * torch.rand(size, generator=gen, dtype=torch.float64)
        imag = 0.8 * torch.rand(size, generator=gen, dtype=torch.float64)
        table = torch.complex(real, imag)
        K = self.max_mode
        table[:K, 0] = table[K + 1 :, 0].flip(0).conj()  # k2 = 0 column: Hermitian in k1
        table[K, 0] = table[K, 0].real.item()  # DC is real
        self.register_buffer("table", table)

    def options(self):
        return {"prior_seed": self.prior_seed}

    def symbol(self, k1, k2, n):
        K = self.max_mode
        inside = (k1.abs() <= K) & (k2.abs() <= K)
        sign = torch.where(k2 < 0, -1.0, 1.0).to(k1.dtype)  # use lambda(-k) = conj(lambda(k))
        r1 = (sign * k1).clamp(-K, K).long() + K
        r2 = (sign * k2).clamp(0, K).long()
        lam = self.table.cpu()[r1, r2]
        lam = torch.where(k2 < 0, lam.conj(), lam)
        return torch.where(inside, lam, torch.zeros_like(lam))


class CombinedPrior(FourierPrior):
    """The reference `combined_conv` prior: A = A_fno + A_lap_conv on the same noise."""

    name = "combined_conv"

    def __init__(self, n0, prior_seed=0, laplacian="stencil", dc="finite"):
        super().__init__(n0)
        self.random_modes = RandomModesPrior(n0, prior_seed)
        self.laplacian = LaplacianPrior(n0, laplacian, dc)

    def options(self):
        return {**self.random_modes.options(), "laplacian": self.laplacian.laplacian,
                "dc": self.laplacian.dc}

    def symbol(self, k1, k2, n):
        return self.random_modes.symbol(k1, k2, n) + self.laplacian.symbol(k1, k2, n).to(torch.complex128)
