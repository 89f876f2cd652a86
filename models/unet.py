"""DDPM-style UNet score network (Ho et al. 2020 layout), attention optional (`attn_heads`).

Residual blocks with GroupNorm, SiLU and FiLM time conditioning; strided-conv
downsampling and nearest-neighbour upsampling to the skip's size, so any grid
size n works (28, 56, 84, odd n). A CNN: run on a finer grid its 3x3 kernels see
a smaller physical neighbourhood, so it is not a neural operator.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.embedding import FiLM, TimeEmbedding, group_norm

PROFILES = {
    # 0.28M parameters, 0.35 s a training step (batch 64) on 2 CPU cores; its validation MMD
    # after one epoch of full MNIST was at the n = 128 floor (README, results)
    "small": dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1),
    # the reference size, for a GPU: 10.7M parameters here (the reference's is 9.9M)
    "paper": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=4),
}


class ResBlock(nn.Module):
    """h = conv(act(FiLM(GN(conv(act(GN(x))))), t)) + skip(x)."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.film = FiLM(emb_dim, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = F.silu(self.film(self.norm2(h), emb))
        h = self.conv2(self.dropout(h))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """h + W_o [softmax(Q_j K_j^T / sqrt(d)) V_j]_j over the n1 n2 positions, (Q, K, V) = W_qkv GN(h), heads
    j of d = C / heads channels each (DDPM's mid-block attention, multi-head). W_o starts at zero as in
    DDPM and ADM, so the block starts as the identity and training turns it on."""

    def __init__(self, ch, heads):
        super().__init__()
        if heads < 1 or ch % heads:
            raise ValueError(f"attn_heads={heads} must be a positive divisor of the {ch} channels "
                             "of the coarsest level")
        self.heads = heads
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h):
        b, c, n1, n2 = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, 3, self.heads, c // self.heads, n1 * n2).unbind(1)
        mixed = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return h + self.out(mixed.transpose(-1, -2).reshape(b, c, n1, n2))


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's size, then a 3x3 conv."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """a(y, t): (B, in_channels, n, n), (B,) -> (B, out_channels, n, n)."""

    def __init__(self, in_channels=1, out_channels=1, ch=64, ch_mult=(1, 2, 2), num_res_blocks=4,
                 emb_dim=None, dropout=0.0, attn_heads=0):
        super().__init__()
        emb_dim = emb_dim or 4 * ch
        self.time_embedding = TimeEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, current = [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(current, ch * mult, emb_dim, dropout))
                current = ch * mult
                skip_channels.append(current)
            if level < len(ch_mult) - 1:
                self.down.append(Downsample(current))
                skip_channels.append(current)
        # the coarsest level (7 x 7 at 28 with ch_mult of three): ResBlock, [SelfAttention,] ResBlock
        self.mid = nn.ModuleList([ResBlock(current, current, emb_dim, dropout),
                                  *([SelfAttention(current, attn_heads)] if attn_heads else []),
                                  ResBlock(current, current, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(current + skip_channels.pop(), ch * mult, emb_dim, dropout))
                current = ch * mult
            if level > 0:
                self.up.append(Upsample(current))
        self.norm_out = group_norm(current)
        self.conv_out = nn.Conv2d(current, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t):
        emb = self.time_embedding(t)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h, skips[-1].shape[-2:])
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
