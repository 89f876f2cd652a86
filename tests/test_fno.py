import math

import pytest
import torch

from models.fno import FNO, SpectralConv2d, periodic_grid
from resample import fourier_resample


def band_limited_batch(n, max_mode=6, batch=2, channels=1):
    """A random real field with modes |k| <= max_mode, sampled at the pixel centres of the n-grid."""
    coarse = torch.randn(batch, channels, 2 * max_mode + 1, 2 * max_mode + 1,
                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return fourier_resample(coarse, n)  # odd size: no Nyquist bin, the field is exactly band-limited


def test_spectral_conv_acts_on_physical_modes_at_every_resolution():
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 4, modes=8).double()
    x28, x56 = band_limited_batch(28, channels=3), band_limited_batch(56, channels=3)
    out28, out56 = layer(x28), layer(x56)
    assert torch.allclose(fourier_resample(out28, 56), out56, atol=1e-12)


@pytest.mark.parametrize("n_fine", [56, 84, 57])
def test_linear_fno_is_discretisation_consistent(n_fine):
    """With the activation removed every layer is linear and band-preserving, so the network
    commutes with exact Fourier interpolation: output at n_fine = interpolated output at 28."""
    torch.manual_seed(0)
    model = FNO(width=8, modes=10, n_layers=3, projection_channels=8, activation="identity").double()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    out28 = model(band_limited_batch(28), t)
    out_fine = model(band_limited_batch(n_fine), t)
    assert torch.allclose(fourier_resample(out28, n_fine), out_fine, atol=1e-10)


def test_fno_low_modes_agree_across_grids_up_to_aliasing():
    """With GELU the only difference between grids is where the activation's new high
    frequencies alias; on the low modes it is 1.0e-7 of the output here (measured), so 1e-6
    leaves room for rounding only: a slip in the mode indexing or the FFT norm is far above."""
    torch.manual_seed(0)
    model = FNO(width=16, modes=10, n_layers=4).double()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    out28 = model(band_limited_batch(28, max_mode=4), t)
    out112 = model(band_limited_batch(112, max_mode=4), t)
    low28 = fourier_resample(fourier_resample(out28, 9), 112)  # modes |k| <= 4
    low112 = fourier_resample(fourier_resample(out112, 9), 112)
    relative = (low28 - low112).norm() / low112.norm()
    assert relative < 1e-6, relative


def test_periodic_grid_channels_use_pixel_centres():
    grid = periodic_grid(4, 1, torch.float64, "cpu")
    x = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64)
    assert torch.allclose(grid[0, 0, :, 0], torch.sin(2 * math.pi * x))
    assert torch.allclose(grid[0, 3, 0, :], torch.cos(2 * math.pi * x))


def test_checkpoints_with_the_channel_first_spectral_weight_still_load():
    """The weight moved to a modes-first layout; a state dict in the earlier (in, out, 2m - 1, m, 2)
    layout loads into the same operator."""
    torch.manual_seed(0)
    model = FNO(width=8, modes=5, n_layers=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old_layout = {k: (v.permute(2, 3, 0, 1, 4) if k.endswith("spectral.weight") else v)
                  for k, v in model.state_dict().items()}
    assert old_layout["layers.0.spectral.weight"].shape == (8, 8, 9, 5, 2)
    again = FNO(width=8, modes=5, n_layers=2).double()
    again.load_state_dict(old_layout)
    x, t = band_limited_batch(28), torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.equal(again(x, t), model(x, t))


@pytest.mark.parametrize("n1, n2, modes", [(12, 12, 4), (6, 10, 5), (10, 6, 5), (7, 7, 5)])
def test_spectral_conv_is_the_mode_by_mode_complex_product(n1, n2, modes):
    """out_k = sum_i R_io(k) c_k(v_i) on the kept modes, 0 elsewhere: checked against an explicit loop
    (the output is real, so on the k2 = 0 column only the Hermitian part of R c survives). A grid
    keeps m = min(modes, ceil(n1 / 2), ceil(n2 / 2)) modes, |k| < n/2 on both axes: coarse and
    non-square grids cut the layer's modes on one axis or the other."""
    torch.manual_seed(0)
    layer = SpectralConv2d(2, 3, modes=modes).double()
    v = torch.randn(2, 2, n1, n2, dtype=torch.float64)
    coef = torch.fft.rfft2(v, norm="forward")
    weight = torch.view_as_complex(layer.weight.detach())
    m = min(modes, (n1 + 1) // 2, (n2 + 1) // 2)
    expected = torch.zeros(2, 3, n1, n2 // 2 + 1, dtype=torch.complex128)
    for k1 in range(-(m - 1), m):
        for k2 in range(m):
            row = k1 if k1 >= 0 else 2 * modes - 1 + k1  # the weight's rows are in FFT order of k1
            expected[:, :, k1 % n1, k2] = torch.einsum("bi,io->bo", coef[:, :, k1 % n1, k2], weight[row, k2])
    column = expected[:, :, :, 0]
    expected[:, :, :, 0] = 0.5 * (column + column[:, :, (-torch.arange(n1)) % n1].conj())
    assert torch.allclose(torch.fft.rfft2(layer(v), norm="forward"), expected, atol=1e-12)


def test_a_modes_first_state_dict_loads_as_it_is_and_a_foreign_weight_is_refused():
    from models.fno import modes_first

    torch.manual_seed(0)
    model = FNO(width=8, modes=5, n_layers=2).double()
    again = FNO(width=8, modes=5, n_layers=2).double()
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.layers[0].spectral.weight, model.layers[0].spectral.weight)
    with pytest.raises(ValueError) as caught:
        modes_first(torch.zeros(8, 8, 7, 5, 2), (9, 5, 8, 8, 2))  # 2 modes - 1 = 7 rows: another size
    assert str(caught.value) == "a spectral weight of shape (8, 8, 7, 5, 2) fits neither layout of (9, 5, 8, 8, 2)"
    partial = {k: v for k, v in model.state_dict().items() if not k.endswith("spectral.weight")}
    assert FNO(width=8, modes=5, n_layers=2).double().load_state_dict(partial, strict=False).missing_keys == [
        "layers.0.spectral.weight", "layers.1.spectral.weight"]  # a state dict without the weight loads
    with pytest.raises(ValueError, match="fits neither layout"):
        modes_first(torch.zeros(9, 5, 8, 8), (9, 5, 8, 8, 2))



@pytest.mark.parametrize("n1, n2, m", [(28, 28, 14), (9, 8, 4), (7, 7, 4), (12, 13, 5)])
def test_the_spectral_transforms_hand_written_gradients_equal_autograds(n1, n2, m):
    """LowModes and FromLowModes have their own backward (cheaper than autograd's); both must give
    autograd's gradients of the plain rfft2 / irfft2 path, in float64, at even, odd and mixed grids."""
    from models.fno import FromLowModes, LowModes, half_spectrum, kept_modes

    gen = torch.Generator().manual_seed(n1 * n2 + m)
    v = torch.randn(2, 3, n1, n2, dtype=torch.float64, generator=gen, requires_grad=True)
    grad_low = torch.randn(2, 3, 2 * m - 1, m, dtype=torch.complex128, generator=gen)
    plain = kept_modes(torch.fft.rfft2(v, norm="forward"), m)
    assert torch.equal(LowModes.apply(v, m), plain)
    expected, = torch.autograd.grad(plain, v, grad_low)
    mine, = torch.autograd.grad(LowModes.apply(v, m), v, grad_low)
    assert torch.allclose(mine, expected, rtol=0, atol=1e-14 * expected.abs().max())

    low = torch.randn(2, 3, 2 * m - 1, m, dtype=torch.complex128, generator=gen, requires_grad=True)
    grad_u = torch.randn(2, 3, n1, n2, dtype=torch.float64, generator=gen)
    plain_u = torch.fft.irfft2(half_spectrum(low, n1, n2), s=(n1, n2), norm="forward")
    assert torch.equal(FromLowModes.apply(low, n1, n2), plain_u)
    expected, = torch.autograd.grad(plain_u, low, grad_u)
    mine, = torch.autograd.grad(FromLowModes.apply(low, n1, n2), low, grad_u)
    assert torch.allclose(mine, expected, rtol=0, atol=1e-14 * expected.abs().max())
    assert torch.autograd.gradcheck(lambda x: LowModes.apply(x, m), (v,))
    assert torch.autograd.gradcheck(lambda c: FromLowModes.apply(c, n1, n2), (low,))


def sampled_waves(n1, n2):
    """v = sin 2 pi (x + 2 y) + cos 2 pi (3 x) at the pixel centres of an n1 x n2 grid (x along
    dim -2), and its exact derivatives d/dx, d/dy, d2/dx2, d2/dy2."""
    x = ((torch.arange(n1, dtype=torch.float64) + 0.5) / n1)[:, None].expand(n1, n2)
    y = ((torch.arange(n2, dtype=torch.float64) + 0.5) / n2)[None, :].expand(n1, n2)
    tau = 2 * math.pi
    phase = tau * (x + 2 * y)
    v = torch.sin(phase) + torch.cos(3 * tau * x)
    dx = tau * torch.cos(phase) - 3 * tau * torch.sin(3 * tau * x)
    dy = 2 * tau * torch.cos(phase)
    dxx = -tau ** 2 * torch.sin(phase) - 9 * tau ** 2 * torch.cos(3 * tau * x)
    dyy = -4 * tau ** 2 * torch.sin(phase)
    return [f[None, None] for f in (v, dx, dy, dxx, dyy)]


@pytest.mark.parametrize("n1, n2", [(28, 28), (28, 42)])
def test_the_local_path_tends_to_its_first_order_differential_operator(n1, n2):
    """D v = a_x dv/dx + a_y dv/dy + (s_x h_x / 2) d2v/dx2 + (s_y h_y / 2) d2v/dy2 + O(h^2), with
    a = w_+1 - w_-1 and s = w_+1 + w_-1 of the zero-sum stencil of each axis, each axis with its own
    h: the first-order part alone is reached at rate h, the expansion to second order at rate h^2."""
    from models.fno import DifferentialConv2d
    local = DifferentialConv2d(1, 1, modes=4).double()
    rows, cols = [0.3, 1.0, -0.5], [-0.2, 0.7, 0.4]  # far from zero-sum: a missing mean subtraction shows
    with torch.no_grad():
        local.rows.copy_(torch.tensor(rows, dtype=torch.float64).view(1, 1, 3, 1))
        local.cols.copy_(torch.tensor(cols, dtype=torch.float64).view(1, 1, 1, 3))
    a_x, a_y = rows[2] - rows[0], cols[2] - cols[0]
    s_x, s_y = rows[2] + rows[0] - 2 * sum(rows) / 3, cols[2] + cols[0] - 2 * sum(cols) / 3
    first, second = [], []
    for scale in (1, 2, 4, 8):
        v, dx, dy, dxx, dyy = sampled_waves(scale * n1, scale * n2)
        with torch.no_grad():
            out = local(v)
        limit = a_x * dx + a_y * dy
        expansion = limit + s_x / (2 * scale * n1) * dxx + s_y / (2 * scale * n2) * dyy
        first.append(((out - limit).abs().max() / limit.abs().max()).item())
        second.append(((out - expansion).abs().max() / limit.abs().max()).item())
    assert first[-1] < 0.05 and second[-1] < 2e-3, (first, second)
    assert all(1.8 < coarse / fine < 2.2 for coarse, fine in zip(first, first[1:])), first  # O(h)
    assert all(3.6 < coarse / fine < 4.4 for coarse, fine in zip(second, second[1:])), second  # O(h^2)


def test_an_fno_with_the_local_path_trains_and_keeps_its_grids_apart_only_by_h():
    """local_path=1 adds one DifferentialConv2d per layer (2 stencils of 3 taps per channel pair);
    the linear network's outputs on two grids differ by O(h), not by a factor of the grid size."""
    torch.manual_seed(0)
    plain = FNO(width=8, modes=6, n_layers=2, projection_channels=8, activation="identity").double()
    torch.manual_seed(0)
    local = FNO(width=8, modes=6, n_layers=2, projection_channels=8, activation="identity",
                local_path=1).double()
    extra = sum(p.numel() for p in local.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * (2 * 8 * 8 * 3)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    outputs = {n: local(band_limited_batch(n, max_mode=3), t) for n in (28, 56, 112)}
    gap = {n: (fourier_resample(outputs[n], 112) - outputs[112]).norm() / outputs[112].norm() for n in (28, 56)}
    assert gap[56] < 0.6 * gap[28] and gap[28] < 0.3, gap
    outputs[28].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in local.parameters())


def test_the_spectral_product_stays_float32_under_bf16_autocast():
    """Autocast would run the real batched product in bfloat16 (and CUDA's view_as_complex refuses bf16):
    the layer turns it off, so its output is the float32 one."""
    torch.manual_seed(0)
    layer = SpectralConv2d(8, 8, modes=5)
    v = torch.randn(3, 8, 12, 12)
    expected = layer(v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(v)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
