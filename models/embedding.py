"""Conditioning shared by the score networks: a Fourier embedding of t, FiLM, and the
periodic position channels.

Kept apart from the three networks so that all of them see t and position the same way.
"""
import math

import torch
from torch import nn


class TimeCondition:
    """The embedding of each distinct t of a batch, and which of them each sample has.

    Layers that read it apply themselves to the distinct rows only and then pick a row per
    sample (`apply`). A sampler's batch shares one t, so these small matrix products run on
    one row whatever the batch size: BLAS picks other kernels, with other rounding, for other
    row counts (seen for fewer than 12 rows on this project's CPU), which would make a sample
    depend on the batch it was drawn in. It also runs them once per step instead of B times.
    """

    def __init__(self, values, index):
        self.values, self.index = values, index

    def apply(self, layer):
        """layer(embedding) for every sample: (B, ...)."""
        return layer(self.values)[self.index]


class TimeEmbedding(nn.Module):
    """t in [0, 1] -> R^dim: Fourier features over several octaves, then an MLP.

    gamma(t) = [sin(2 pi f_j t), cos(2 pi f_j t)]_j with f_j spaced geometrically
    from 1/2 to max_freq, so both the slow and the fast changes of the score in t
    are visible (a single sinusoid of frequency 1 on [0, 1] is nearly constant).
    """

    def __init__(self, dim, num_freqs=16, max_freq=500.0):
        super().__init__()
        freqs = torch.logspace(math.log10(0.5), math.log10(max_freq), num_freqs)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        """A TimeCondition for the per-sample times t (B,)."""
        distinct, index = torch.unique(t.reshape(-1), return_inverse=True)
        angle = 2 * math.pi * distinct.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return TimeCondition(self.mlp(torch.cat([angle.sin(), angle.cos()], dim=-1)), index)


class FiLM(nn.Module):
    """h -> h * (1 + scale(e)) + shift(e), per channel, from a time embedding e.

    Zero-initialised, so every conditioned block starts as the identity map.
    """

    def __init__(self, emb_dim, channels):
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, h, emb):
        """emb: the TimeCondition of the batch."""
        scale, shift = emb.apply(self.proj)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(shift, h, 1 + scale)  # h (1 + scale) + shift in one pass over h


def group_norm(channels, max_groups=32, min_group_size=4):
    """GroupNorm with the most groups (<= max_groups) of >= min_group_size channels each.

    At least 4 channels a group, as in DDPM (32 groups of 128+ channels): with one
    channel a group (instance norm) every block forgets each sample's mean and scale,
    and a small CNO then could not tell the noise's mean mode from the data's (its
    error in the predicted mean stayed at 100% at t = 1, samples saturated).
    """
    limit = max(1, min(max_groups, channels // min_group_size))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def periodic_grid(n, batch, dtype, device):
    """(batch, 4, n, n): sin/cos of 2 pi x and of 2 pi y at the pixel centres."""
    x = (torch.arange(n, dtype=dtype, device=device) + 0.5) / n
    angle_x = (2 * math.pi * x).reshape(1, 1, n, 1).expand(batch, 1, n, n)
    angle_y = (2 * math.pi * x).reshape(1, 1, 1, n).expand(batch, 1, n, n)
    return torch.cat([angle_x.sin(), angle_x.cos(), angle_y.sin(), angle_y.cos()], dim=1)
