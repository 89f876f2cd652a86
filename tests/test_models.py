"""Properties every score network must have (registry, shapes, gradients, per-sample t)."""
import pytest
import torch

from models import MODELS, build_model, count_parameters, model_kwargs, parse_model_args

TINY = {
    "unet": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1),
    "fno": dict(width=8, modes=6, n_layers=2, projection_channels=16),
    "cno": dict(n_levels=2, n_res=1, n_res_neck=1, channel_multiplier=8, lift_channels=8),
}


def tiny(name):
    torch.manual_seed(0)
    return build_model(name, **TINY[name])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("n", [28, 56, 84, 27])
def test_a_trained_network_answers_on_any_grid_and_depends_on_its_input(name, n):
    """After a few optimiser steps (the output layers start at 0), on grids other than the training
    one: the right shape, finite, not zero, and a function of the image and of t."""
    model = trained_a_little(name)
    x = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(n))
    t = torch.tensor([0.1, 0.9])
    out = model(x, t)
    assert out.shape == (2, 1, n, n) and torch.isfinite(out).all()
    assert out.abs().mean() > 1e-3
    assert (model(x.flip(-1), t) - out).abs().mean() > 1e-4 * out.abs().mean()
    assert (model(x, t.flip(0)) - out).abs().mean() > 1e-4 * out.abs().mean()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_receives_a_gradient(name):
    model = tiny(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # zero-initialised output and FiLM layers pass gradients on after a step each
        optimizer.zero_grad()
        (model(torch.rand(3, 1, 28, 28), torch.rand(3)) - 1).pow(2).mean().backward()
        optimizer.step()
    unused = [k for k, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not unused


@pytest.mark.parametrize("name", list(MODELS))
def test_time_is_conditioned_per_sample(name):
    """Two copies of one image with two times differ; each equals the sample run alone."""
    model = trained_a_little(name)
    x = torch.rand(1, 1, 28, 28).repeat(2, 1, 1, 1)
    t = torch.tensor([0.05, 0.8])
    both = model(x, t)
    assert (both[0] - both[1]).abs().max() > 1e-4
    for i in range(2):
        alone = model(x[i:i + 1], t[i:i + 1])
        assert torch.allclose(both[i:i + 1], alone, atol=1e-5)


def trained_a_little(name):
    """A tiny model after a few SGD steps, so zero-initialised layers are no longer zero."""
    model = tiny(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (model(torch.rand(4, 1, 28, 28), torch.rand(4)) - 1).pow(2).mean().backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_profiles_build_and_overrides_are_validated(name):
    kwargs = model_kwargs(name, "small", {})
    assert count_parameters(build_model(name, **kwargs)) > 0
    with pytest.raises(ValueError, match="has no argument"):
        model_kwargs(name, "small", {"no_such_argument": 1})
    with pytest.raises(ValueError, match="unknown profile"):
        model_kwargs(name, "huge", {})


def test_model_args_are_parsed_as_literals():
    assert parse_model_args(["ch=32", "ch_mult=1,2,2", "activation=gelu"]) == {
        "ch": 32, "ch_mult": (1, 2, 2), "activation": "gelu"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["ch"])


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transformer")


def test_film_scales_and_shifts_each_channel_by_its_time_embedding():
    """FiLM(h) = h (1 + scale(e)) + shift(e), per sample and channel, with (scale, shift) the two halves
    of proj(e); checked against the formula written out here, with a non-zero projection."""
    from models.embedding import FiLM, TimeCondition

    torch.manual_seed(0)
    film = FiLM(emb_dim=4, channels=3)
    torch.nn.init.normal_(film.proj[1].weight)
    torch.nn.init.normal_(film.proj[1].bias)
    emb_values = torch.randn(2, 4)
    h = torch.randn(2, 3, 5, 5)
    out = film(h, TimeCondition(emb_values, torch.arange(2)))
    scale, shift = film.proj(emb_values).chunk(2, dim=1)
    assert torch.allclose(out, h * (1 + scale[:, :, None, None]) + shift[:, :, None, None], atol=1e-6)


@pytest.mark.parametrize("channels, groups", [(4, 1), (6, 1), (8, 2), (12, 3), (20, 5), (128, 32), (256, 32), (96, 24)])
def test_group_norm_takes_the_most_groups_of_at_least_four_channels_up_to_32(channels, groups):
    from models.embedding import group_norm
    norm = group_norm(channels)
    assert (norm.num_groups, norm.num_channels) == (groups, channels)


def test_time_embedding_features_are_sin_and_cos_of_2_pi_f_t_for_octaves_from_one_half_to_500():
    import math
    from models.embedding import TimeEmbedding
    embedding = TimeEmbedding(dim=8, num_freqs=16, max_freq=500.0)
    f = embedding.freqs.double()
    assert f[0].item() == pytest.approx(0.5, rel=1e-6) and f[-1].item() == pytest.approx(500.0, rel=1e-6)
    ratios = f[1:] / f[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 1000 ** (1 / 15)), rtol=1e-5)  # geometric
    embedding.mlp = torch.nn.Identity()  # the features themselves
    t = torch.tensor([0.3, 0.0, 0.3, 0.7])
    features = embedding(t).apply(torch.nn.Identity())
    angle = 2 * math.pi * t.double()[:, None] * f
    expected = torch.cat([angle.sin(), angle.cos()], dim=1).float()
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_unet_self_attention_is_softmax_q_k_over_sqrt_d_times_v_per_head_plus_the_input():
    from models.unet import SelfAttention

    torch.manual_seed(0)
    block = SelfAttention(8, heads=2)
    h = torch.randn(3, 8, 5, 4)
    assert torch.equal(block(h), h)  # W_o starts at zero: the identity
    torch.nn.init.normal_(block.out.weight)
    torch.nn.init.normal_(block.out.bias)
    qkv = block.qkv(block.norm(h)).reshape(3, 3 * 8, 20)
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    heads = []
    for j in range(2):
        qj, kj, vj = (a[:, 4 * j:4 * (j + 1)] for a in (q, k, v))  # (B, d, L)
        weights = torch.softmax(qj.transpose(1, 2) @ kj / 4 ** 0.5, dim=-1)  # (B, L, L), rows sum to 1
        heads.append(vj @ weights.transpose(1, 2))  # (B, d, L)
    expected = h + block.out(torch.cat(heads, dim=1).reshape(3, 8, 5, 4))
    assert torch.allclose(block(h), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "cno"])
def test_attention_at_the_coarsest_level_is_trained_and_answers_on_any_grid(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name], **{"unet": {"attn_heads": 2}, "cno": {"neck_attn_heads": 2}}[name])
    block = model.mid[1] if name == "unet" else model.neck_attention
    if name == "unet":
        assert [type(layer).__name__ for layer in model.mid] == ["ResBlock", "SelfAttention", "ResBlock"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (model(torch.rand(3, 1, 28, 28), torch.rand(3)) - 1).pow(2).mean().backward()
        optimizer.step()
    assert block.qkv.weight.grad.abs().sum() > 0 and block.out.weight.abs().sum() > 0
    x, t = torch.rand(2, 1, 33, 33), torch.rand(2)
    out = model(x, t)
    assert out.shape == (2, 1, 33, 33)
    torch.nn.init.zeros_(block.out.weight)
    torch.nn.init.zeros_(block.out.bias)
    assert not torch.allclose(model(x, t), out)  # the block is on the path to the output
    with pytest.raises(ValueError, match="attn_heads"):
        build_model(name, **TINY[name], **{"unet": {"attn_heads": 3}, "cno": {"neck_attn_heads": 3}}[name])
    with pytest.raises(ValueError, match="positive divisor"):
        build_model(name, **TINY[name], **{"unet": {"attn_heads": -2}, "cno": {"neck_attn_heads": -2}}[name])
