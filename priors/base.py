"""The prior's noise operator A as a Fourier multiplier on the periodic unit square.

A acts on e_k(x) = exp(2 pi i k.x) by A e_k = lambda(k) e_k, with lambda a function
of the physical wavenumber k in Z^2 (never of an array index), so the same A is
used at every grid size n. Q = A A^* has eigenvalues |lambda(k)|^2.

White noise convention (resolution-consistent): on the n-grid, z has i.i.d.
N(0, (n / n0)^2) pixels, so every physical mode's DFT coefficient has the same
variance 1 / n0^2 at every n, and a 2n sample Fourier-truncated to the n-grid is
distributed as an n sample. At the training resolution n0 this is the usual unit
white noise; at 2 n0 its pixels have standard deviation 2. The `standard` prior
(A = I) is therefore not trace class: its pixel variance grows like n^2.
"""
import numpy as np
import torch
from torch import nn

from resample import wavenumbers


class PerSampleGenerator:
    """A source of white noise in which image i of a batch draws only from its own generator.

    Built for samples first .. first + count - 1 of a call with `seed`: sample i's numbers come
    from numpy's PCG64 seeded by the SeedSequence of entropy `seed` and spawn key (i,) (distinct
    streams for distinct pairs, whatever their size; torch's CPU generator keeps only 32 bits of
    a seed), so sample i is a function of (seed, i) alone, whatever the batch size, shard or
    device of the call. Pass it wherever `FourierPrior.sample` takes a generator; every draw's
    batch dimension is `count`.
    """

    def __init__(self, seed, first, count):
        if seed < 0:
            raise ValueError(f"a sampling seed must be >= 0, got {seed}")
        self.generators = [np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
                           for i in range(first, first + count)]

    def randn(self, shape, dtype=torch.float32):
        if shape[0] != len(self.generators):
            raise ValueError(f"a per-sample draw needs batch {len(self.generators)}, got shape {tuple(shape)}")
        numbers = np.stack([g.standard_normal(tuple(shape[1:])) for g in self.generators])
        return torch.from_numpy(numbers).to(dtype)


def standard_normal(shape, generator=None, dtype=torch.float32):
    """N(0, 1) numbers on the CPU from a torch.Generator (or None) or a PerSampleGenerator."""
    if isinstance(generator, PerSampleGenerator):
        return generator.randn(shape, dtype)
    return torch.randn(shape, generator=generator, dtype=dtype)


class FourierPrior(nn.Module):
    """Base class: subclasses define `symbol(k1, k2, n)`, the multiplier lambda(k)."""

    name = "base"
    is_identity = False

    def __init__(self, n0):
        super().__init__()
        if n0 < 2:
            raise ValueError(f"training resolution n0 must be >= 2, got {n0}")
        self.n0 = int(n0)
        self._cache = {}

    def symbol(self, k1, k2, n):
        """lambda(k) on integer wavenumber grids k1, k2 (float64) for an n-grid."""
        raise NotImplementedError

    def options(self):
        """Constructor keyword arguments (JSON-able) needed to rebuild this prior."""
        return {}

    def config(self):
        return {"name": self.name, "n0": self.n0, **self.options()}

    def pixel_variance(self, n=None):
        """Variance of a pixel of the noise on the n-grid (default n0), as the project draws it there:
        (1/n0^2) sum_k |lambda(k)|^2 (each DFT mode of the consistent white noise has variance 1/n0^2 on
        every grid). From n0 up, A z drawn on the n-grid (its own lambda, the n-grid's modes); below n0, an
        n0 draw truncated to n (`resample.truncate_noise`, the noise of a coarse training level): n0's
        lambda on the modes |k_i| <= n/2, a folded Nyquist pair +-n/2 counting half per axis (its two modes
        share one bin at gain 1/sqrt(2)). The two agree but for the stencil Laplacian, whose lambda
        depends on h. For `standard`: (n / n0)^2, a coarse grid's noise pixel is the mean of a cell's."""
        n = self.n0 if n is None else int(n)
        if n >= self.n0:
            return float(self.multiplier(n).abs().pow(2).sum() / self.n0**2)
        k = wavenumbers(self.n0).to(torch.float64).abs()
        axis = torch.where(k == n / 2, 0.5, (k <= n / 2).to(torch.float64))
        weight = axis[:, None] * axis[None, :]
        return float((weight * self.multiplier(self.n0).abs().pow(2)).sum() / self.n0**2)

    def multiplier(self, n, device=None):
        """lambda on the full n x n DFT grid (FFT order), complex128 on `device`."""
        k = wavenumbers(n).to(torch.float64)
        k1, k2 = torch.meshgrid(k, k, indexing="ij")
        lam = torch.as_tensor(self.symbol(k1, k2, n))
        return torch.broadcast_to(lam.to(torch.complex128), (n, n)).to(device)

    def _rfft_multiplier(self, n, device, dtype):
        key = (n, str(device), dtype)
        if key not in self._cache:
            full = self.multiplier(n, device)[:, : n // 2 + 1]
            cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
            self._cache[key] = full.to(cdtype)
        return self._cache[key]

    def white_noise(self, shape, generator=None, device=None, dtype=torch.float32):
        """Consistent white noise on the grid of shape (..., n, n): pixel std n / n0.

        Drawn on the CPU from `generator` (a torch.Generator or a PerSampleGenerator) so a
        seed gives the same noise on any device.
        """
        n = shape[-1]
        z = standard_normal(shape, generator, dtype)
        return (z * (n / self.n0)).to(device)

    def apply(self, z):
        """A z for a field z of shape (..., n, n) (square grids)."""
        if self.is_identity:
            return z
        n = z.shape[-1]
        lam = self._rfft_multiplier(n, z.device, z.dtype)
        return torch.fft.irfft2(lam * torch.fft.rfft2(z), s=(n, n))

    def sample(self, shape, generator=None, device=None, dtype=torch.float32):
        """eta = A z, z consistent white noise of the given shape (..., n, n)."""
        return self.apply(self.white_noise(shape, generator, device, dtype))

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}  # moved or cast: rebuild cached multipliers lazily
        return super()._apply(fn, *args, **kwargs)
