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
import torch
from torch import nn

from resample import wavenumbers


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

        Drawn on the CPU from `generator` so a seed gives the same noise on any device.
        """
        n = shape[-1]
        z = torch.randn(shape, generator=generator, dtype=dtype)
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
