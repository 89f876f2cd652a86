import math

import pytest
import torch

from priors import PRIORS, build_prior, laplacian_symbol, prior_from_config
from resample import truncate_noise

N0 = 28
ALL = [("standard", {}), ("lap_conv", {}), ("lap_conv", {"laplacian": "spectral"}),
       ("lap_conv", {"dc": "zero"}), ("fno", {"prior_seed": 3}), ("combined_conv", {"prior_seed": 3}),
       ("matern", {}), ("matern", {"s": 1.5, "c": 1.0})]


def mode_variance(samples):
    """E |c_k|^2 of the physical Fourier coefficients c_k = DFT / n^2, per mode."""
    n = samples.shape[-1]
    return (torch.fft.fft2(samples.double()) / n**2).abs().pow(2).mean(0).reshape(n, n)


def low_modes(n, limit):
    """Boolean mask over the n x n DFT grid of modes with |k1|, |k2| <= limit."""
    k = torch.fft.fftfreq(n, 1 / n).round().abs()
    return (k[:, None] <= limit) & (k[None, :] <= limit)


def reference_laplacian_operator(n):
    """10 (-Lap_h)^(-1/2) with the dense periodic 5-point matrix, h = 1/n, null space removed."""
    idx = torch.arange(n * n).reshape(n, n)
    lap = torch.zeros(n * n, n * n, dtype=torch.float64)
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        lap[idx.flatten(), torch.roll(idx, shift, dims=(0, 1)).flatten()] += n**2
    lap[idx.flatten(), idx.flatten()] -= 4 * n**2
    evals, evecs = torch.linalg.eigh(-lap)
    inv_sqrt = torch.where(evals > 1e-6, 10 / evals.clamp_min(1e-6).sqrt(), torch.zeros_like(evals))
    return evecs @ torch.diag(inv_sqrt) @ evecs.T


def test_standard_prior_is_unit_white_noise_at_n0(generator):
    prior = build_prior("standard", N0)
    z = prior.white_noise((4, 1, N0, N0), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(prior.apply(z), z)
    sample = prior.sample((2000, 1, N0, N0), generator)
    assert abs(sample.std().item() - 1) < 0.01


def test_lap_conv_equals_the_reference_operator_at_n0(generator):
    """Away from the mean mode, A z equals 10 (-Lap_h)^(-1/2) z with the dense stencil matrix."""
    n = 12  # the dense matrix is n^2 x n^2; the formula does not depend on n0
    op = reference_laplacian_operator(n)
    z = torch.randn(5, n * n, generator=generator, dtype=torch.float64)
    reference = (z @ op.T).reshape(5, 1, n, n)
    ours_zero_dc = build_prior("lap_conv", n, dc="zero").apply(z.reshape(5, 1, n, n))
    assert torch.allclose(ours_zero_dc, reference, atol=1e-10)
    ours = build_prior("lap_conv", n).apply(z.reshape(5, 1, n, n))
    mean_part = z.mean(1).reshape(5, 1, 1, 1) * 10 / (2 * math.pi)
    assert torch.allclose(ours, reference + mean_part, atol=1e-10)


def test_lap_conv_mean_mode_has_finite_variance_by_default_and_zero_on_request():
    assert build_prior("lap_conv", N0).multiplier(N0)[0, 0].real == pytest.approx(10 / (2 * math.pi))
    assert build_prior("lap_conv", N0, dc="zero").multiplier(N0)[0, 0] == 0


def test_fno_prior_reference_form_at_n0():
    lam = build_prior("fno", N0, prior_seed=5).multiplier(N0)
    inside = low_modes(N0, N0 // 2 - 1)
    k = torch.fft.fftfreq(N0, 1 / N0).round()
    upper = inside & (k[None, :] > 0)  # k2 > 0: the drawn half (the rest is its conjugate)
    assert (lam[upper].real >= 0.2).all() and (lam[upper].real < 1).all()
    assert (lam[upper].imag >= 0).all() and (lam[upper].imag < 0.8).all()
    assert (lam[~inside] == 0).all()
    flipped = lam[(-torch.arange(N0)) % N0][:, (-torch.arange(N0)) % N0]
    assert torch.allclose(flipped, lam.conj())  # Hermitian: real fields stay real


def test_fno_prior_is_seeded_and_round_trips_through_its_state():
    a, b = build_prior("fno", N0, prior_seed=1), build_prior("fno", N0, prior_seed=1)
    assert torch.equal(a.table, b.table)
    assert not torch.equal(a.table, build_prior("fno", N0, prior_seed=2).table)
    c = prior_from_config(a.config())
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.multiplier(56), a.multiplier(56))


def test_combined_prior_is_the_sum_of_its_parts():
    combined = build_prior("combined_conv", N0, prior_seed=4)
    parts = build_prior("fno", N0, prior_seed=4).multiplier(N0) + build_prior("lap_conv", N0).multiplier(N0)
    assert torch.allclose(combined.multiplier(N0), parts)
    default = build_prior("combined_conv", N0)  # the defaults of its parts: prior seed 0, stencil, finite DC
    assert torch.equal(default.multiplier(N0), build_prior("fno", N0).multiplier(N0)
                       + build_prior("lap_conv", N0).multiplier(N0))
    zero_dc = build_prior("combined_conv", N0, dc="zero", laplacian="spectral")
    assert torch.equal(zero_dc.multiplier(56), build_prior("fno", N0).multiplier(56)
                       + build_prior("lap_conv", N0, dc="zero", laplacian="spectral").multiplier(56))


@pytest.mark.parametrize("name,options", ALL)
@pytest.mark.parametrize("n", [14, 15, 28])
def test_prior_multiplier_is_a_function_of_physical_wavenumber(name, options, n):
    """lambda on the 2n-grid restricted to |k| < n/2 equals lambda on the n-grid.

    Exact for every symbol except the 5-point stencil, which depends on h = 1/n; it
    agrees to its discretisation error on |k| <= n/4 (DESIGN.md section 3).
    """
    prior = build_prior(name, N0, **options)
    coarse, fine = prior.multiplier(n), prior.multiplier(2 * n)
    k = torch.fft.fftfreq(n, 1 / n).round().long()
    limit = (n - 1) // 2
    stencil = name in ("lap_conv", "combined_conv") and options.get("laplacian", "stencil") == "stencil"
    if stencil:
        limit = n // 4
    keep = k.abs() <= limit
    fine_rows = fine[k[keep] % (2 * n)][:, k[keep] % (2 * n)]
    coarse_rows = coarse[keep][:, keep]
    if stencil:
        # 1 - lambda_2n / lambda_n <= 1 - (sigma_n / sigma_2n)^(1/2) at |k1| = |k2| = n/4 (< 6%),
        # attained on the axes; equality there up to rounding
        kk = torch.tensor(float(limit), dtype=torch.float64)
        bound = (laplacian_symbol(kk, kk, 2 * n, "stencil") / laplacian_symbol(kk, kk, n, "stencil")).sqrt()
        assert ((fine_rows - coarse_rows).abs() <= (1 - 1 / bound) * coarse_rows.abs() * (1 + 1e-9)).all()
    else:
        assert torch.allclose(fine_rows, coarse_rows, atol=1e-12)


def closed_form_symbol(name, options, k1, k2, n, n0=N0):
    """lambda(k) on the n-grid as DESIGN.md section 3 and the README define it, written here
    independently of priors/ (k1, k2 float64 wavenumber grids)."""
    if name == "standard":
        return torch.ones_like(k1)
    if name == "lap_conv":
        if options.get("laplacian", "stencil") == "spectral":
            sigma = (2 * math.pi) ** 2 * (k1**2 + k2**2)
        else:  # the 5-point stencil of the n-grid: h = 1/n
            sigma = 4 * n**2 * (torch.sin(math.pi * k1 / n) ** 2 + torch.sin(math.pi * k2 / n) ** 2)
        dc = (k1 == 0) & (k2 == 0)
        dc_value = 0.0 if options.get("dc") == "zero" else 10 / (2 * math.pi)
        return torch.where(dc, torch.full_like(k1, dc_value), 10 / sigma.where(~dc, torch.ones_like(k1)).sqrt())
    if name == "matern":
        s, c = options.get("s", 0.75), options.get("c", 4 * math.pi**2)
        k = torch.fft.fftfreq(n0, 1 / n0).double()
        q1, q2 = torch.meshgrid(k, k, indexing="ij")
        scale = n0 / ((c + 4 * math.pi**2 * (q1**2 + q2**2)) ** (-2 * s)).sum().sqrt()  # pixel variance 1 at n0
        return scale * (c + 4 * math.pi**2 * (k1**2 + k2**2)) ** (-s)
    raise ValueError(name)


CLOSED_FORM = [(name, options) for name, options in ALL if name in ("standard", "lap_conv", "matern")]


def wavenumber_grid(n):
    k = torch.fft.fftfreq(n, 1 / n).double()
    return torch.meshgrid(k, k, indexing="ij")


@pytest.mark.parametrize("name,options", CLOSED_FORM)
@pytest.mark.parametrize("n", [20, 28, 35, 42, 56])
def test_prior_symbols_are_their_closed_forms_on_every_grid(name, options, n):
    """The multiplier on grids finer, coarser and not multiples of n0, against the formula with
    h = 1/n (the reference work reused the n0 stencil at 56: that slip fails here)."""
    prior = build_prior(name, N0, **options)
    expected = closed_form_symbol(name, options, *wavenumber_grid(n), n)
    assert torch.allclose(prior.multiplier(n).real, expected, rtol=1e-12, atol=0)
    assert (prior.multiplier(n).imag == 0).all()


def test_lap_conv_is_the_dense_stencil_of_the_grid_it_is_applied_on(generator):
    """A prior built at n0 = 8 applied on a 12-grid is 10 (-Lap_h)^(-1/2) with h = 1/12."""
    z = torch.randn(5, 144, generator=generator, dtype=torch.float64)
    reference = (z @ reference_laplacian_operator(12).T).reshape(5, 1, 12, 12)
    ours = build_prior("lap_conv", 8, dc="zero").apply(z.reshape(5, 1, 12, 12))
    assert torch.allclose(ours, reference, atol=1e-10)


def folded_variance(symbol_fine, n):
    """Mode variances E|c_k|^2 on the n-grid of a fine-grid field with multiplier symbol_fine (on the
    fine grid, FFT order), truncated to n with the Nyquist pair folded at gain 1/sqrt(2): each kept
    mode keeps |lambda(k)|^2 / n0^2; an even n's Nyquist bin averages the pair +-n/2."""
    fine = symbol_fine.shape[-1]
    k = torch.fft.fftfreq(n, 1 / n).round().long()
    power = symbol_fine.abs().pow(2) / N0**2

    def pick(a, b):
        return power[a % fine][:, b % fine]

    out = pick(k, k).clone()
    if n % 2 == 0:  # the Nyquist row / column: average of the +n/2 and -n/2 modes of the fine grid
        other = k.clone()
        other[n // 2] = n // 2  # fftfreq labels the bin -n/2
        out = (pick(k, k) + pick(other, k) + pick(k, other) + pick(other, other)) / 4
    return out


@pytest.mark.parametrize("name,options", ALL)
@pytest.mark.parametrize("fine,coarse", [(56, 28), (42, 28), (35, 28), (28, 14)])
def test_a_finer_draw_truncated_to_a_coarser_grid_has_the_coarse_law(name, options, fine, coarse, generator):
    """Noise drawn on the fine grid (a multiple of the coarse one or not) and truncated has, mode
    by mode, the variances |lambda(k)|^2 / n0^2 of the symbol: for the exactly consistent priors
    those of a draw on the coarse grid, for the 5-point stencil those of the fine grid's stencil
    (consistent up to its discretisation error only, DESIGN.md section 3).
    Tolerances from the sampling error: a mode variance estimated from `count` draws has relative
    sd 1/sqrt(count), sqrt(2/count) for a real mode, so 5 sqrt(2/count) = 16% bounds every mode
    (over a few hundred modes the largest of them sits near 3.5 sd) and 5 sqrt(2 / (count M)) their
    mean over the M kept modes."""
    prior = build_prior(name, N0, **options)
    count = 2000
    truncated = truncate_noise(prior.sample((count, 1, fine, fine), generator, dtype=torch.float64), coarse)
    if name in CLOSED_FORM_NAMES:
        symbol_fine = closed_form_symbol(name, options, *wavenumber_grid(fine), fine)
    else:  # random multipliers: a table by physical wavenumber, same at every grid (tested above)
        symbol_fine = prior.multiplier(fine)
    expected = folded_variance(symbol_fine, coarse)
    keep = expected > 0
    ratio = mode_variance(truncated)[keep] / expected[keep]
    assert (ratio - 1).abs().max().item() < 5 * math.sqrt(2 / count)
    assert abs(ratio.mean().item() - 1) < 5 * math.sqrt(2 / (count * keep.sum().item()))
    assert (mode_variance(truncated)[~keep] < 1e-20).all()
    stencil = name in ("lap_conv", "combined_conv") and options.get("laplacian", "stencil") == "stencil"
    if not stencil:  # the coarse grid's own law (off an even grid's Nyquist bin, where a symbol that is not
        # even in k, the random one, averages its two modes)
        inner = low_modes(coarse, (coarse - 1) // 2)
        own = prior.multiplier(coarse).abs().pow(2) / N0**2
        assert torch.allclose(expected[inner], own[inner], rtol=1e-10)


CLOSED_FORM_NAMES = ("standard", "lap_conv", "matern")


def test_standard_white_noise_scales_with_resolution():
    """Consistent white noise: pixel std n / n0, so a mode's coefficient variance is fixed."""
    prior = build_prior("standard", N0)
    fine = prior.sample((500, 1, 56, 56), torch.Generator().manual_seed(0))
    assert abs(fine.std().item() - 2.0) < 0.02


def test_matern_prior_is_trace_class_and_lap_conv_is_not():
    """Pixel variance (1/n0^2) sum_k |lambda(k)|^2 converges for matern, grows like log n for lap_conv."""
    def pixel_variance(prior, n):
        return (prior.multiplier(n).abs().pow(2).sum() / N0**2).item()

    matern, lap = build_prior("matern", N0), build_prior("lap_conv", N0, laplacian="spectral")
    assert pixel_variance(matern, N0) == pytest.approx(1.0)
    m_growth = pixel_variance(matern, 8 * N0) - pixel_variance(matern, 4 * N0)
    l_growth = pixel_variance(lap, 8 * N0) - pixel_variance(lap, 4 * N0)
    assert m_growth < 0.01 * pixel_variance(matern, N0)
    assert l_growth > 0.5 * (pixel_variance(lap, 4 * N0) - pixel_variance(lap, 2 * N0))


def test_bad_prior_options_are_refused():
    with pytest.raises(ValueError, match="s > 1/2"):
        build_prior("matern", N0, s=0.5)
    with pytest.raises(ValueError, match="unknown prior"):
        build_prior("nope", N0)
    assert set(PRIORS) == {"standard", "lap_conv", "fno", "combined_conv", "matern"}


@pytest.mark.parametrize("name,options", ALL)
def test_pixel_variance_is_the_variance_of_a_draw_at_n0(name, options, generator):
    """(1/n0^2) sum_k |lambda(k)|^2 against the empirical pixel variance of 2,000 draws at n0 (relative
    sd of that estimate below 1%; 4% is 4 sd), and 1 for the priors scaled to unit pixel variance."""
    prior = build_prior(name, N0, **options)
    draws = prior.sample((2000, 1, N0, N0), generator, dtype=torch.float64)
    assert prior.pixel_variance() == pytest.approx(draws.var().item(), rel=0.04)
    if name in ("standard", "matern"):
        assert prior.pixel_variance() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("name,options", ALL)
def test_pixel_variance_on_a_coarse_grid_is_that_of_the_truncated_n0_noise(name, options, generator):
    """pixel_variance(n) against the empirical pixel variance of n0 draws truncated to n = 14 (the noise of
    a coarse level); (14 / 28)^2 for white noise."""
    prior = build_prior(name, N0, **options)
    coarse = truncate_noise(prior.sample((2000, 1, N0, N0), generator, dtype=torch.float64), 14)
    assert prior.pixel_variance(14) == pytest.approx(coarse.var().item(), rel=0.05)
    assert prior.pixel_variance(N0) == prior.pixel_variance()
    if name == "standard":
        assert prior.pixel_variance(14) == pytest.approx(0.25, rel=1e-12)
        assert prior.pixel_variance(7) == pytest.approx(1 / 16, rel=1e-12)  # odd: no Nyquist pair to fold


@pytest.mark.parametrize("name,options", ALL)
def test_every_prior_round_trips_through_its_config(name, options):
    """prior_from_config(prior.config()) (what a checkpoint stores) is the same operator, on any grid."""
    prior = build_prior(name, N0, **options)
    again = prior_from_config(prior.config())
    again.load_state_dict(prior.state_dict())
    assert again.config() == prior.config()
    for n in (N0, 42):
        assert torch.equal(again.multiplier(n), prior.multiplier(n))


def test_a_moved_or_cast_prior_rebuilds_its_cached_multipliers(generator):
    prior = build_prior("lap_conv", N0)
    z = torch.randn(2, 1, N0, N0, generator=generator)
    single = prior.apply(z)
    prior.double()
    double = prior.apply(z.double())
    assert double.dtype == torch.float64 and torch.allclose(double, single.double(), atol=1e-5)
    assert all(key[2] == torch.float64 for key in prior._cache)  # the float32 entry was dropped


def test_per_sample_noise_gives_image_i_the_stream_of_seed_and_i_alone():
    """Sample i of a call draws from PCG64 seeded by SeedSequence(seed, spawn_key=(i,)): images of one
    batch differ, and rows first .. first + count - 1 are those of a call that starts at 0."""
    import numpy as np

    from priors.base import PerSampleGenerator, standard_normal

    whole = PerSampleGenerator(7, 0, 4).randn((4, 3, 5), torch.float64)
    assert whole.dtype == torch.float64 and not torch.equal(whole[0], whole[1])
    expected = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(2,))).standard_normal((3, 5))
    assert torch.equal(whole[2], torch.from_numpy(expected))
    assert torch.equal(PerSampleGenerator(7, 2, 2).randn((2, 3, 5), torch.float64), whole[2:])
    assert standard_normal((4, 3, 5), PerSampleGenerator(7, 0, 4), torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"a sampling seed must be >= 0, got -1"):
        PerSampleGenerator(-1, 0, 2)
    with pytest.raises(ValueError, match=r"a per-sample draw needs batch 4, got shape \(3, 5\)"):
        PerSampleGenerator(7, 0, 4).randn((3, 5))


def test_the_smallest_training_grid_is_two_pixels():
    from priors import build_prior

    assert build_prior("standard", 2).sample((1, 1, 2, 2), torch.Generator().manual_seed(0)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"training resolution n0 must be >= 2, got 1"):
        build_prior("standard", 1)


def test_an_unknown_prior_name_is_refused_with_the_list_of_names():
    with pytest.raises(ValueError) as caught:
        build_prior("nope", N0)
    assert str(caught.value) == f"unknown prior 'nope': expected one of {', '.join(PRIORS)}"
    assert ", ".join(PRIORS) == "standard, lap_conv, fno, combined_conv, matern"


def reference_fno_symbol(prior_seed, n0, k1, k2):
    """lambda(k) of the reference `fno` prior from its raw draws, written independently of priors/:
    a + i b with a ~ U[0.2, 1), b ~ U[0, 0.8) drawn (real table first, then imaginary) for
    k1 in [-K, K], k2 in [0, K], K = floor((n0 - 1) / 2); lambda(-k) = conj(lambda(k)) fills k2 < 0
    and the k1 < 0 half of the k2 = 0 column; the mean mode is real; zero outside |k1|, |k2| <= K."""
    K = (n0 - 1) // 2
    gen = torch.Generator().manual_seed(prior_seed)
    real = 0.2 + 0.8 * torch.rand((2 * K + 1, K + 1), generator=gen, dtype=torch.float64)
    imag = 0.8 * torch.rand((2 * K + 1, K + 1), generator=gen, dtype=torch.float64)
    drawn = torch.complex(real, imag)
    out = torch.zeros(k1.shape, dtype=torch.complex128)
    for index in torch.cartesian_prod(torch.arange(k1.shape[0]), torch.arange(k1.shape[1])):
        a, b = int(k1[tuple(index)]), int(k2[tuple(index)])
        if abs(a) > K or abs(b) > K:
            continue
        if (a, b) == (0, 0):
            out[tuple(index)] = drawn[K, 0].real
        elif b > 0 or (b == 0 and a > 0):
            out[tuple(index)] = drawn[a + K, b]
        else:
            out[tuple(index)] = drawn[-a + K, -b].conj()
    return out


@pytest.mark.parametrize("n0, n", [(28, 28), (15, 15), (15, 40)])
def test_fno_prior_is_its_reference_table_on_every_mode(n0, n):
    """Every mode, the k2 = 0 column and the mean mode included, against the raw draws."""
    k1, k2 = wavenumber_grid(n)
    expected = reference_fno_symbol(3, n0, k1, k2)
    assert torch.equal(build_prior("fno", n0, prior_seed=3).multiplier(n), expected)


def test_fno_prior_support_is_the_modes_below_half_n0_for_odd_n0():
    """n0 = 15: |k| < 7.5 keeps |k1|, |k2| <= 7 (an even-n0-only formula would keep 6)."""
    k1, k2 = wavenumber_grid(30)
    lam = build_prior("fno", 15).multiplier(30)
    assert torch.equal(lam != 0, (k1.abs() <= 7) & (k2.abs() <= 7))
