"""Fourier Neural Operator score network (Li et al., ICLR 2021), discretisation-consistent.

v_0 = P(u, sin 2 pi x, cos 2 pi x, sin 2 pi y, cos 2 pi y) + E(t)
v_{l+1} = act(FiLM_l(K_l v_l + W_l v_l, t)),   l = 0 .. L-1   (no act after the last)
a = Q(v_L)
(with local_path=1 each layer adds D_l v_l, a local differential path: DifferentialConv2d)
K_l v = sum_{|k1|, k2 < modes} R_l(k) c_k(v) e_k: the physical Fourier coefficients
c_k = rfft2(v, norm='forward') (the same for a function at every grid size n)
multiplied by complex weights indexed by physical wavenumber k. Modes |k| >= n/2
(including the Nyquist pair, which is aliased at n) are never used, so R_l(k) acts
on the same physical mode at every n.

Grid channels are periodic, band-limited functions of the pixel centres
x_i = (i + 1/2)/n on the torus (the project's one sampling convention): a raw
coordinate x in [0, 1) would be a discontinuous sawtooth on the periodic domain.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.embedding import FiLM, TimeEmbedding, periodic_grid

PROFILES = {
    "small": dict(width=32, modes=12, n_layers=4),
    "paper": dict(width=64, modes=14, n_layers=7),  # reference size (11.3M complex+real numel)
}


def modes_first(tensor, shape):
    """A spectral weight (or an optimizer moment of it) in the earlier channel-first layout
    (in, out, 2 modes - 1, modes, 2), brought into the modes-first `shape`."""
    if tensor.dim() != 5 or tensor.permute(2, 3, 0, 1, 4).shape != shape:
        raise ValueError(f"a spectral weight of shape {tuple(tensor.shape)} fits neither layout of {tuple(shape)}")
    return tensor.permute(2, 3, 0, 1, 4).contiguous()


def kept_modes(coef, m):
    """Rows k1 = 0 .. m-1 and -(m-1) .. -1, columns k2 = 0 .. m-1 of an rfft2 half spectrum."""
    n1 = coef.shape[-2]
    return torch.cat([coef[..., :m, :m], coef[..., n1 - (m - 1):, :m]], dim=-2)


def half_spectrum(low, n1, n2):
    """The rfft2 half spectrum (..., n1, n2 // 2 + 1) holding `low` on the kept modes, zero elsewhere."""
    m = low.shape[-1]
    half = low.new_zeros(*low.shape[:-2], n1, n2 // 2 + 1)
    half[..., :m, :m] = low[..., :m, :]
    half[..., n1 - (m - 1):, :m] = low[..., m:, :]
    return half


def column_weights(m, others, dtype, device):
    """(m,) weights of the rfft2 columns k2 = 0 .. m-1: 1 for k2 = 0, `others` for k2 >= 1 (the
    columns that stand for the pair +-k2 in the Hermitian sum)."""
    weights = torch.full((m,), others, dtype=dtype, device=device)
    weights[0] = 1.0
    return weights


class LowModes(torch.autograd.Function):
    """c_k = (1 / n1 n2) sum_x v(x) e^{-2 pi i k.x} on the kept modes (|k1| < m, 0 <= k2 < m < n2 / 2).

    Backward, for real v and torch's complex gradient g_k = dL/dRe c_k + i dL/dIm c_k:
        dL/dv(x) = (1 / n1 n2) Re sum_k g_k e^{+2 pi i k.x}
    = irfft2 of g with its columns k2 >= 1 halved (irfft2 counts them twice, for -k2). torch's own
    backward of rfft2 zero-fills a full n1 x n2 complex spectrum and runs a complex FFT on it; this
    one runs a real inverse FFT on the half spectrum (same result, 10% off an FNO training step).
    """

    @staticmethod
    def forward(ctx, v, m):
        ctx.grid, ctx.m = tuple(v.shape[-2:]), m
        return kept_modes(torch.fft.rfft2(v, norm="forward"), m)

    @staticmethod
    def backward(ctx, grad):
        (n1, n2), m = ctx.grid, ctx.m
        half = half_spectrum(grad * column_weights(m, 0.5, grad.real.dtype, grad.device), n1, n2)
        return torch.fft.irfft2(half, s=(n1, n2), norm="forward") / (n1 * n2), None


class FromLowModes(torch.autograd.Function):
    """u(x) = Re sum_k w_k2 c_k e^{2 pi i k.x} (w_0 = 1, w_k2 = 2 for k2 >= 1): irfft2 of the kept modes.

    Backward: dL/dc_k = w_k2 sum_x g(x) e^{-2 pi i k.x} = w_k2 rfft2(g)_k on the kept modes, without
    the zero-filled spectrum and the two scattered slices that autograd keeps for it.
    """

    @staticmethod
    def forward(ctx, low, n1, n2):
        ctx.grid, ctx.m = (n1, n2), low.shape[-1]
        return torch.fft.irfft2(half_spectrum(low, n1, n2), s=(n1, n2), norm="forward")

    @staticmethod
    def backward(ctx, grad):
        m = ctx.m
        return kept_modes(torch.fft.rfft2(grad), m) * column_weights(m, 2.0, grad.dtype, grad.device), None, None


def real_block(weight):
    """(..., in, 2, out, 2) real matrix of the complex weights R = A + iB of (..., in, out, 2): with a row
    (Re c_i, Im c_i) per input channel, its product is (Re, Im) of sum_i c_i R_io per output channel,
        Re = sum_i Re c_i A_io - Im c_i B_io,   Im = sum_i Re c_i B_io + Im c_i A_io."""
    a, b = weight[..., 0], weight[..., 1]
    return torch.stack([torch.stack([a, b], -1), torch.stack([-b, a], -1)], dim=-3)


class SpectralConv2d(nn.Module):
    """K v: complex weights R(k) on physical modes |k1| < modes, 0 <= k2 < modes.

    The weight is stored modes first, (2 modes - 1, modes, in, out, 2): rows in FFT order of k1
    (0 .. modes-1, then -(modes-1) .. -1), real and imaginary parts in the trailing dimension, so
    the parameter is real (any dtype cast, optimizer or DDP treats it like the others). The mixing
    is then one batched matrix product over the modes, (modes, batch, in) @ (modes, in, out), on
    contiguous operands: 2.2x faster forward + backward than an einsum over the channel-first
    layout, which copies every mode's matrix (measured on 2 CPU cores, width 64, 14 modes, batch 64).
    The product runs in real arithmetic (`real_block`): torch's CPU bmm on complex operands loops over
    the modes and copies each matrix; the real one is one batched BLAS call with the same four real
    products per complex one (the paper FNO's training step against the original code's: 0.95x -> 1.09x,
    docs/speed.md).
    Checkpoints with the earlier channel-first layout (in, out, 2 modes - 1, modes, 2) still load.
    """

    def __init__(self, in_ch, out_ch, modes):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_ch * out_ch)
        self.weight = nn.Parameter(scale * torch.randn(2 * modes - 1, modes, in_ch, out_ch, 2) / math.sqrt(2))
        self._register_load_state_dict_pre_hook(self._from_channel_first)

    def _from_channel_first(self, state_dict, prefix, *args):
        """Earlier checkpoints stored the weight as (in, out, 2 modes - 1, modes, 2)."""
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.shape != self.weight.shape:
            state_dict[prefix + "weight"] = modes_first(weight, self.weight.shape)

    def _weights_for(self, m):
        """Real weights (2m - 1, m, in, out, 2) for the m usable modes (m <= modes) of the current grid."""
        if m == self.modes:
            return self.weight
        rows = list(range(m)) + list(range(self.weight.shape[0] - (m - 1), self.weight.shape[0]))
        return self.weight[rows, :m]

    def forward(self, v):
        batch, n1, n2 = v.shape[0], *v.shape[-2:]
        m = min(self.modes, (n1 + 1) // 2, (n2 + 1) // 2)  # modes with |k| < n/2
        low = LowModes.apply(v, m)  # physical coefficients c_k of the kept modes, (B, in, 2m - 1, m)
        count = (2 * m - 1) * m
        rows = torch.view_as_real(low.permute(2, 3, 0, 1).contiguous()).reshape(count, batch, -1)
        with torch.autocast(v.device.type, enabled=False):  # float32, as the complex product it stands for
            mixed = torch.bmm(rows, real_block(self._weights_for(m)).reshape(count, rows.shape[-1], -1))
        mixed = torch.view_as_complex(mixed.reshape(2 * m - 1, m, batch, -1, 2))
        return FromLowModes.apply(mixed.permute(2, 3, 0, 1), n1, n2)  # (B, out, 2m - 1, m)


class DifferentialConv2d(nn.Module):
    """A local path that is one operator on every grid in the limit h -> 0 (the differential kernels
    of Liu-Schiaffini et al., ICML 2024): along each axis a 3-tap periodic stencil w with
    sum_j w_j = 0 (per channel pair), scaled by 1/h = n of that axis:

        D v(x) = sum_axis (1/h_axis) sum_{j=-1..1} w_axis,j v(x + j h_axis e_axis)
               = sum_axis [(w_+1 - w_-1) d_axis v + (w_+1 + w_-1) h_axis / 2 d_axis^2 v + O(h^2)],

    a learned first-order differential operator plus a term that vanishes like h. It sees the
    detail above the spectral path's modes that K cannot (the local branch of the FNO-UNet family),
    and stays consistent across grids where a plain 3x3 convolution (a stencil in pixels) is not.
    """

    def __init__(self, in_ch, out_ch, modes):
        super().__init__()
        # d/dx of mode k has gain 2 pi k: start with gain ~1 on the kept modes |k| < modes
        scale = 1.0 / (2 * math.pi * modes * math.sqrt(3 * in_ch))
        self.rows = nn.Parameter(scale * torch.randn(out_ch, in_ch, 3, 1))  # stencil along dim -2
        self.cols = nn.Parameter(scale * torch.randn(out_ch, in_ch, 1, 3))  # stencil along dim -1

    def forward(self, v):
        n1, n2 = v.shape[-2:]
        rows = self.rows - self.rows.mean(dim=2, keepdim=True)  # sum_j w_j = 0: no zeroth-order term
        cols = self.cols - self.cols.mean(dim=3, keepdim=True)
        along_rows = F.conv2d(F.pad(v, (0, 0, 1, 1), mode="circular"), rows)
        along_cols = F.conv2d(F.pad(v, (1, 1, 0, 0), mode="circular"), cols)
        return n1 * along_rows + n2 * along_cols


class FNOLayer(nn.Module):
    """act(FiLM(K v + W v [+ D v], t)); act may be None (last layer); D: the optional local path."""

    def __init__(self, width, modes, emb_dim, activation, local_path=False):
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes)
        self.pointwise = nn.Conv2d(width, width, 1)
        self.local = DifferentialConv2d(width, width, modes) if local_path else None
        self.film = FiLM(emb_dim, width)
        self.activation = activation

    def forward(self, v, emb):
        linear = self.spectral(v) + self.pointwise(v)
        if self.local is not None:
            linear = linear + self.local(v)
        v = self.film(linear, emb)
        return self.activation(v) if self.activation is not None else v


class FNO(nn.Module):
    """a(y, t): (B, in_channels, n, n), (B,) -> (B, out_channels, n, n), any n."""

    def __init__(self, in_channels=1, out_channels=1, width=64, modes=14, n_layers=7,
                 emb_dim=None, projection_channels=128, activation="gelu", local_path=False):
        super().__init__()
        emb_dim = emb_dim or 4 * width
        act = {"gelu": F.gelu, "identity": None}[activation]
        self.time_embedding = TimeEmbedding(emb_dim)
        self.lift = nn.Conv2d(in_channels + 4, width, 1)
        self.lift_time = nn.Linear(emb_dim, width)
        self.layers = nn.ModuleList(
            [FNOLayer(width, modes, emb_dim, act if i < n_layers - 1 else None, bool(local_path))
             for i in range(n_layers)])
        self.project = nn.Sequential(nn.Conv2d(width, projection_channels, 1),
                                     nn.GELU() if act is not None else nn.Identity(),
                                     nn.Conv2d(projection_channels, out_channels, 1))

    def forward(self, x, t):
        emb = self.time_embedding(t)
        grid = periodic_grid(x.shape[-1], x.shape[0], x.dtype, x.device)
        v = self.lift(torch.cat([x, grid], dim=1)) + emb.apply(self.lift_time)[:, :, None, None]
        for layer in self.layers:
            v = layer(v, emb)
        return self.project(v)
