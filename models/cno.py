"""Convolutional Neural Operator (Raonic et al., NeurIPS 2023, arXiv 2302.01178) as a score a(y, t).

The CNO2d graph of the authors' code (an operator U-Net):

    lift -> [skip_i = R^{n_res}(h_i);  h_{i+1} = D_i(h_i)]_{i<N} -> R^{n_res_neck}
         -> [h = U_i(cat(h, I_i(skip_i)))]  -> project(cat(h, I_0(skip_0)))

with D (down), U (up) and I (same size, the "ED expansion" blocks) CNO blocks
conv3x3 -> GroupNorm -> FiLM(t) -> sigma, R ResNet blocks, and sigma the CNO
activation, which is where all resampling happens:

    sigma_{s->m}(h) = P_m LReLU(I_r h),   r = 2 max(s, m),

I_r the exact Fourier interpolation of the s-grid function h to the r-grid and
P_m the ideal low-pass (Fourier truncation) sampled on the m-grid. Its output is a
band-limited function of band |k| <= m/2; the only error against the continuous
P_m LReLU(h) is the aliasing of LReLU(h)'s modes |k| >= r - m/2 >= 3m/2 folded
back by sampling on the r-grid. r = 2 max(s, m) is StyleGAN3's rule, which the
original CNO's filtered LReLU follows; for an up block (m = 2s) it is 4s, where
the authors' pure-PyTorch variant uses 2s (output band = the whole 2s-grid, so
every mode of LReLU(h) above it folds back). `activation_resampler="bicubic"`
is that variant (r = 2s, both resizes by antialiased bicubic `F.interpolate`),
for benchmarking.

Design decisions (see also docs/conventions.md):
- GroupNorm + FiLM instead of BatchNorm: batch statistics would mix samples at
  different noise levels, so the score of one sample would depend on the others.
- Convolutions pad circularly: every grid here is a periodic function on the unit
  square (the priors and the Fourier resampling assume it), and a zero border
  would be a discontinuity that the Fourier low-pass turns into ringing.
- The lift and projection CNO blocks have no norm (as in the original, which
  has no BatchNorm there), so the lifted features keep the amplitude of y.
- Position channels (sin/cos of 2 pi x and 2 pi y, as the FNO's) join the input:
  periodic convolutions and Fourier resampling make the network exactly equivariant
  to translations of the torus, so without them it cannot tell the centre of the
  image from its border. Trained that way (0.37M, 2 epochs), it drew strokes at
  random places, wrapped round the border (MMD at 28 1.07 vs the UNet's 0.016);
  the zero padding of the UNet and of the authors' CNO leaks that position.
- Sizes follow the input: the network runs on a latent grid n_lat = n rounded up
  to a multiple of 2**n_levels (28 -> 32 for 3 levels), the input is Fourier-
  interpolated to it and the output Fourier-truncated back to n.

`python bench/speed.py --only activation` compares the fourier and bicubic activations
and CNO training steps with each.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.embedding import FiLM, TimeEmbedding, group_norm, periodic_grid
from models.unet import SelfAttention
from resample import fourier_resample

# LeakyReLU(0.01), the slope of the paper and of the authors' pure-PyTorch CNO, so
# the fourier/bicubic benchmark differs only in the resampler (and in r for up blocks). StyleGAN3's
# sqrt(2) * LReLU(0.2) is a gain chosen to keep unnormalised activations at unit
# variance; here every activation follows a GroupNorm + FiLM, so the gain buys nothing.
NEGATIVE_SLOPE = 0.01

RESAMPLERS = ("fourier", "bicubic")

PROFILES = {
    # the paper's graph, narrow and shallow (lift = d_e / 2 as in the original):
    # ~0.37M parameters, a training step (batch 64, 28x28) in ~0.4 s on 2 CPU cores.
    "small": dict(n_levels=3, n_res=1, n_res_neck=2, channel_multiplier=16, lift_channels=8,
                  emb_dim=64, input_skip=True, grid_channels=True),
    # the reference size (CNO2d: 3 levels, 4 + 4 ResNet blocks, d_e = 64, lift 32), for a GPU:
    # 13.4M parameters, 5.2M of them in the FiLM layers (emb_dim 512).
    "paper": dict(n_levels=3, n_res=4, n_res_neck=4, channel_multiplier=64, lift_channels=32,
                  emb_dim=512, input_skip=True, grid_channels=True),
}


def bicubic_resize(h, size):
    """The authors' resize: F.interpolate bicubic, antialiased when shrinking, on (B, C, s, s)."""
    if h.shape[-1] == size:
        return h
    return F.interpolate(h, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


class CNOActivation(nn.Module):
    """sigma_{s->m}(h) = P_m LReLU(I_r h): upsample to the r-grid, LeakyReLU, low-pass to m.

    "fourier": I_r and P_m exact Fourier interpolation and truncation (two small
    dense matrices per axis, see resample.py), r = 2 max(s, m).
    "bicubic": the authors' pure-PyTorch CNO, r = 2 s, antialiased bicubic resizes.
    """

    def __init__(self, resampler="fourier", negative_slope=NEGATIVE_SLOPE):
        super().__init__()
        if resampler not in RESAMPLERS:
            raise ValueError(f"unknown activation resampler {resampler!r}: expected one of {RESAMPLERS}")
        self.resampler = resampler
        self.negative_slope = negative_slope
        self.resize = fourier_resample if resampler == "fourier" else bicubic_resize

    def fine_size(self, in_size, out_size):
        """r, the grid on which the pointwise LeakyReLU is evaluated."""
        return 2 * (max(in_size, out_size) if self.resampler == "fourier" else in_size)

    def forward(self, h, out_size):
        fine = self.resize(h, self.fine_size(h.shape[-1], out_size))
        # in place: `fine` is a fresh tensor (r > s) that the resize's backward does not need
        return self.resize(F.leaky_relu(fine, self.negative_slope, inplace=True), out_size)


def wrap_pad(h):
    """Pad (..., s, s) to (..., s+2, s+2) with one periodic image pixel on each side."""
    h = torch.cat([h[..., -1:], h, h[..., :1]], dim=-1)
    return torch.cat([h[..., -1:, :], h, h[..., :1, :]], dim=-2)


class PeriodicConv3x3(nn.Conv2d):
    """3x3 convolution on the periodic grid: (W * h)_ij = sum_ab W_ab h_{(i+a) mod s, (j+b) mod s}.

    Same map as padding_mode="circular", whose pad copies slices into a new tensor
    (and scatters them back in the backward pass); that was 5-15% slower per
    training step on the 2-core CPU.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, kernel_size=3)

    def forward(self, h):
        return super().forward(wrap_pad(h))


class CNOBlock(nn.Module):
    """h -> sigma_{s->m}(FiLM(GN(conv(h)), e)): a (D), (U) or (I) block, by the output size m."""

    def __init__(self, in_channels, out_channels, emb_dim, resampler, normalize=True):
        super().__init__()
        self.conv = PeriodicConv3x3(in_channels, out_channels)
        self.norm = group_norm(out_channels) if normalize else nn.Identity()
        self.film = FiLM(emb_dim, out_channels)
        self.activation = CNOActivation(resampler)

    def forward(self, h, emb, out_size):
        return self.activation(self.film(self.norm(self.conv(h)), emb), out_size)


class ResidualBlock(nn.Module):
    """h + FiLM(GN(conv(sigma_{s->s}(FiLM(GN(conv(h)), e)))), e) on a fixed s-grid."""

    def __init__(self, channels, emb_dim, resampler):
        super().__init__()
        self.conv1, self.conv2 = PeriodicConv3x3(channels, channels), PeriodicConv3x3(channels, channels)
        self.norm1, self.norm2 = group_norm(channels), group_norm(channels)
        self.film1, self.film2 = FiLM(emb_dim, channels), FiLM(emb_dim, channels)
        self.activation = CNOActivation(resampler)

    def forward(self, h, emb):
        inner = self.activation(self.film1(self.norm1(self.conv1(h)), emb), h.shape[-1])
        return h + self.film2(self.norm2(self.conv2(inner)), emb)


class ResidualStack(nn.Module):
    """num_blocks ResidualBlocks in sequence (the identity when num_blocks = 0)."""

    def __init__(self, channels, num_blocks, emb_dim, resampler):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(channels, emb_dim, resampler) for _ in range(num_blocks))

    def forward(self, h, emb):
        for block in self.blocks:
            h = block(h, emb)
        return h


class LiftProjectBlock(nn.Module):
    """A CNO block without norm (in -> hidden) then a 3x3 conv (hidden -> out)."""

    def __init__(self, in_channels, hidden_channels, out_channels, emb_dim, resampler):
        super().__init__()
        self.block = CNOBlock(in_channels, hidden_channels, emb_dim, resampler, normalize=False)
        self.conv = PeriodicConv3x3(hidden_channels, out_channels)

    def forward(self, h, emb):
        return self.conv(self.block(h, emb, h.shape[-1]))


class CNO(nn.Module):
    """a(y, t): (B, in_channels, n, n), (B,) -> (B, out_channels, n, n), any n >= 4.

    Channels: the lift gives c_lift = lift_channels; down block i gives
    c_{i+1} = channel_multiplier * 2**i. Sizes: s_i = n_lat / 2**i on level i.
    """

    def __init__(self, in_channels=1, out_channels=1, n_levels=3, n_res=4, n_res_neck=4,
                 channel_multiplier=64, lift_channels=32, emb_dim=512,
                 activation_resampler="fourier", latent_multiple=None, input_skip=False,
                 grid_channels=False, neck_attn_heads=0):
        super().__init__()
        self.n_levels = int(n_levels)
        self.latent_multiple = int(latent_multiple or 2 ** self.n_levels)
        if self.n_levels < 1 or self.latent_multiple % 2 ** self.n_levels:
            raise ValueError(f"need n_levels >= 1 and latent_multiple a multiple of 2**n_levels, "
                             f"got {n_levels}, {latent_multiple}")
        N, act = self.n_levels, activation_resampler
        self.encoder_channels = [lift_channels] + [channel_multiplier * 2 ** i for i in range(N)]
        enc = self.encoder_channels

        self.time_embedding = TimeEmbedding(emb_dim)
        # False only for checkpoints made before the position channels existed
        self.grid_channels = bool(grid_channels)
        lift_in = in_channels + (4 if self.grid_channels else 0)
        self.lift = LiftProjectBlock(lift_in, lift_channels, lift_channels, emb_dim, act)
        self.down_blocks = nn.ModuleList(CNOBlock(enc[i], enc[i + 1], emb_dim, act) for i in range(N))
        self.skip_stacks = nn.ModuleList(ResidualStack(enc[i], n_res, emb_dim, act) for i in range(N))
        self.neck = ResidualStack(enc[N], n_res_neck, emb_dim, act)
        # optional self-attention after the neck (the coarsest grid), the UNet's block: starts as the identity
        self.neck_attention = SelfAttention(enc[N], neck_attn_heads) if neck_attn_heads else None
        # bridge_blocks[i] carries level i (the neck for i = N) to the decoder's grid on level i
        # no norm on the bridges (the CNO's U-Net skips): they carry each sample's own level and
        # scale from the residual streams to the decoder, as the original's BatchNorm (a fixed
        # affine map at evaluation) does; a per-sample norm there would erase them
        self.bridge_blocks = nn.ModuleList(CNOBlock(enc[i], enc[i], emb_dim, act, normalize=False)
                                           for i in range(N + 1))
        # up block j takes level N-j to level N-j-1; below the neck its input has a skip concatenated
        self.up_blocks = nn.ModuleList(
            CNOBlock(enc[N - j] * (1 if j == 0 else 2), enc[N - j - 1], emb_dim, act) for j in range(N))
        self.project = LiftProjectBlock(2 * lift_channels, lift_channels, out_channels, emb_dim, act)
        nn.init.zeros_(self.project.conv.weight)  # the score starts at 0
        nn.init.zeros_(self.project.conv.bias)
        # optional linear path y -> output with a per-t, per-channel gain (zero at start)
        self.input_skip = nn.Linear(emb_dim, out_channels * in_channels) if input_skip else None
        if self.input_skip is not None:
            nn.init.zeros_(self.input_skip.weight)
            nn.init.zeros_(self.input_skip.bias)

    def latent_size(self, n):
        """n rounded up to a multiple of 2**n_levels (or of latent_multiple)."""
        return self.latent_multiple * math.ceil(n / self.latent_multiple)

    def forward(self, x, t):
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 4:
            raise ValueError(f"expected x of shape (B, C, n, n) with n >= 4, got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ValueError(f"expected one t per sample ({x.shape[0]}), got {t.numel()}")
        n, N = x.shape[-1], self.n_levels
        sizes = [self.latent_size(n) // 2 ** i for i in range(N + 1)]
        emb = self.time_embedding(t)

        inputs = x
        if self.grid_channels:
            inputs = torch.cat([x, periodic_grid(n, x.shape[0], x.dtype, x.device)], dim=1)
        h = self.lift(fourier_resample(inputs, sizes[0]), emb)
        skips = []
        for level in range(N):
            skips.append(self.skip_stacks[level](h, emb))
            h = self.down_blocks[level](h, emb, sizes[level + 1])
        h = self.neck(h, emb)
        if self.neck_attention is not None:
            h = self.neck_attention(h)
        h = self.bridge_blocks[N](h, emb, sizes[N])
        for j, level in enumerate(range(N, 0, -1)):
            if j > 0:
                h = torch.cat([h, self.bridge_blocks[level](skips[level], emb, sizes[level])], dim=1)
            h = self.up_blocks[j](h, emb, sizes[level - 1])
        h = torch.cat([h, self.bridge_blocks[0](skips[0], emb, sizes[0])], dim=1)
        out = fourier_resample(self.project(h, emb), n)
        if self.input_skip is not None:
            gain = emb.apply(self.input_skip).reshape(x.shape[0], out.shape[1], x.shape[1])
            out = out + torch.einsum("boi,bihw->bohw", gain, x)
        return out
