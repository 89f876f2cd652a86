"""Tests of the CNO score network (models/cno.py) and of its alias-free activation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import count_parameters
from models.cno import CNO, NEGATIVE_SLOPE, PROFILES, CNOActivation
from resample import fourier_resample

TINY = dict(n_levels=2, n_res=1, n_res_neck=1, channel_multiplier=4, lift_channels=4, emb_dim=16)


def tiny_cno(seed=0, **overrides):
    """A tiny CNO with every parameter perturbed, so FiLM and the output conv are not zero."""
    torch.manual_seed(seed)
    model = CNO(**{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("n", [28, 56, 84, 27, 29])
@pytest.mark.parametrize("resampler", ["fourier", "bicubic"])
def test_output_has_the_input_grid_and_is_finite(n, resampler):
    model = tiny_cno(activation_resampler=resampler)
    out = model(torch.randn(2, 1, n, n), torch.rand(2))
    assert out.shape == (2, 1, n, n)
    assert torch.isfinite(out).all()


def test_latent_grid_is_the_input_size_rounded_up_to_a_multiple_of_2_pow_levels():
    three = CNO(**{**TINY, "n_levels": 3})
    assert [three.latent_size(n) for n in (27, 28, 29, 32, 56, 84)] == [32, 32, 32, 32, 56, 88]
    two = CNO(**TINY)
    assert [two.latent_size(n) for n in (27, 28, 29, 56)] == [28, 28, 32, 56]
    assert CNO(**TINY, latent_multiple=16).latent_size(28) == 32
    with pytest.raises(ValueError):
        CNO(**TINY, latent_multiple=6)


def test_output_is_zero_at_initialisation():
    torch.manual_seed(0)
    out = CNO(**TINY)(torch.randn(2, 1, 28, 28), torch.rand(2))
    assert torch.equal(out, torch.zeros_like(out))


def test_every_parameter_gets_a_nonzero_gradient():
    """FiLM and the output conv start at zero, so gradients reach the whole network
    only from the third step: step 1 moves the output conv, step 2 the FiLM layers,
    step 3 sees a gradient in the time-embedding MLP."""
    torch.manual_seed(0)
    model = CNO(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target, t = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.rand(4)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(x, t), target).backward()
        optimizer.step()
    without_gradient = [name for name, p in model.named_parameters()
                        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() == 0]
    assert without_gradient == []


def test_time_conditioning_is_per_sample():
    model = tiny_cno()
    image = torch.randn(1, 1, 28, 28)
    out = model(image.expand(2, -1, -1, -1), torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_each_output_depends_only_on_its_own_sample():
    """No batch statistics: sample i of a batch equals sample i run alone (GroupNorm, not BatchNorm).

    In float64, so that float32 kernels that block differently for another batch
    size (differences ~1e-5 here) cannot hide or fake a dependence."""
    model = tiny_cno().double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    batched = model(x, t)
    for i in range(3):
        alone = model(x[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-10)


def test_scalar_t_is_broadcast_and_a_wrong_t_count_is_rejected():
    model = tiny_cno()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.tensor([0.3, 0.3])))
    with pytest.raises(ValueError):
        model(x, torch.rand(3))


def test_cno_is_deterministic_and_has_no_train_eval_difference():
    model = tiny_cno()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    model.eval()
    first, second = model(x, t), model(x, t)
    model.train()
    assert torch.equal(first, second)
    assert torch.equal(first, model(x, t))


def test_cno_commutes_with_periodic_shifts_by_a_coarsest_grid_pixel():
    """Periodic 3x3 convs commute with integer shifts, and the activation maps a shift by 2
    pixels on the s-grid to a shift by 1 pixel on the s/2-grid; so a shift by 2**n_levels
    pixels of the latent grid (here n = n_lat = 16) commutes with the whole network."""
    model = tiny_cno()
    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    shifted = model(torch.roll(x, shifts=(4, -8), dims=(-2, -1)), t)
    torch.testing.assert_close(shifted, torch.roll(model(x, t), shifts=(4, -8), dims=(-2, -1)),
                               rtol=1e-4, atol=1e-4)


def test_position_channels_break_the_shift_symmetry_so_the_cno_can_find_the_centre():
    """Without them the network's output for a constant input is constant (it cannot know
    where it is on the torus); with them it varies over the grid, and a shifted input no
    longer gives the shifted output."""
    x, t = torch.full((1, 1, 16, 16), 0.5), torch.rand(1)
    blind = tiny_cno(grid_channels=False)(x, t)
    assert torch.allclose(blind, blind.mean().expand_as(blind), atol=1e-5)
    model = tiny_cno(grid_channels=True)
    assert model(x, t).std() > 1e-2
    y = torch.randn(1, 1, 16, 16)
    moved = model(torch.roll(y, shifts=(4, -8), dims=(-2, -1)), t)
    assert (moved - torch.roll(model(y, t), shifts=(4, -8), dims=(-2, -1))).abs().max() > 1e-2


def test_profiles_see_position_and_old_checkpoints_without_it_still_build():
    assert all(profile["grid_channels"] for profile in PROFILES.values())
    assert CNO(**TINY).lift.block.conv.in_channels == 1
    assert CNO(**TINY, grid_channels=True).lift.block.conv.in_channels == 5


def relative_error(approx, exact):
    return ((approx - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("out_size", [8, 16, 32])
def test_fourier_activation_matches_a_fine_grid_reference_and_bicubic_does_not(out_size):
    """sigma_{s->m}(u) vs P_m LReLU(u) computed on a 32x finer grid, u a full-band
    field on the s = 16 grid (the worst case: every mode up to Nyquist).

    The Fourier activation's only error is aliasing: LReLU(u)'s modes |k| >= r - m/2
    (>= 1.5 s here) folded into the band by sampling on the r-grid. LReLU(u) has
    kinks along the zero set of u, so its spectrum decays slowly; the measured
    relative error is 1-3% (seed 0), hence the tolerance 5%. The bicubic variant
    adds interpolation error and a non-periodic border (30-35%), and evaluating
    LReLU on the s-grid without upsampling aliases much more (17-38%).
    """
    size = 16
    torch.manual_seed(0)
    u = torch.randn(4, 3, size, size, dtype=torch.float64)
    reference = fourier_resample(F.leaky_relu(fourier_resample(u, 32 * size), NEGATIVE_SLOPE), out_size)
    fourier = CNOActivation("fourier")(u, out_size)
    bicubic = CNOActivation("bicubic")(u, out_size)
    pointwise = fourier_resample(F.leaky_relu(u, NEGATIVE_SLOPE), out_size)
    assert relative_error(fourier, reference) < 0.05
    assert relative_error(bicubic, reference) > 0.15
    assert relative_error(pointwise, reference) > 0.15


@pytest.mark.parametrize("out_size, shift_in, shift_out", [(8, 2, 1), (16, 1, 1), (32, 1, 2)])
def test_fourier_activation_commutes_with_periodic_shifts(out_size, shift_in, shift_out):
    """sigma(roll(u, k)) = roll(sigma(u), k m / s) exactly (to float rounding) whenever k m / s
    is an integer: Fourier resampling is periodic and LReLU is pointwise."""
    torch.manual_seed(0)
    u = torch.randn(2, 3, 16, 16)
    activation = CNOActivation("fourier")
    shifted = activation(torch.roll(u, shift_in, dims=-1), out_size)
    torch.testing.assert_close(shifted, torch.roll(activation(u, out_size), shift_out, dims=-1),
                               rtol=1e-5, atol=1e-5)


def test_bicubic_activation_does_not_commute_with_periodic_shifts():
    """F.interpolate treats the grid as a bounded image (clamped border), not a periodic one."""
    torch.manual_seed(0)
    u = torch.randn(2, 3, 16, 16)
    activation = CNOActivation("bicubic")
    shifted = activation(torch.roll(u, 1, dims=-1), 16)
    assert (shifted - torch.roll(activation(u, 16), 1, dims=-1)).abs().max() > 1e-2


def test_unknown_activation_resampler_is_rejected():
    with pytest.raises(ValueError):
        CNOActivation("bilinear")


def test_profiles_have_the_intended_sizes():
    small = count_parameters(CNO(**PROFILES["small"]))
    paper = count_parameters(CNO(**PROFILES["paper"]))
    assert 300_000 <= small <= 600_000
    assert abs(paper - 13.4e6) / 13.4e6 < 0.01


@pytest.mark.parametrize("resampler", ["fourier", "bicubic"])
def test_cno_activation_is_leaky_relu_of_slope_one_hundredth(resampler):
    """The reference CNO's LeakyReLU slope, 0.01, written here as a number: a constant field
    resamples to itself, so -1 -> -0.01 and 2 -> 2 on every grid."""
    field = torch.tensor([-1.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1).expand(1, 2, 8, 8)
    out = CNOActivation(resampler)(field, 16)
    expected = torch.tensor([-0.01, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1).expand(1, 2, 16, 16)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-9)
