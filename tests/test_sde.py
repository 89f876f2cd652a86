import math

import pytest
import torch

import sde
from models import build_model
from priors import PerSampleGenerator, build_prior
from resample import bicubic_resample, fourier_resample

N0 = 28


def test_marginal_coefficients_follow_the_forward_sde():
    """m(t)^2 + s(t)^2 = 1 and d/dt log m(t) = -b(t)/2 (the VP drift)."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(sde.mean_coef(t) ** 2 + sde.noise_std(t) ** 2, torch.ones_like(t))
    h = 1e-6
    dlogm = (sde.mean_coef(t + h).log() - sde.mean_coef(t - h).log()) / (2 * h)
    assert torch.allclose(dlogm, -sde.beta(t) / 2, atol=1e-6)
    assert sde.beta(torch.tensor(0.0)) == pytest.approx(0.1)
    assert sde.beta(torch.tensor(1.0)) == pytest.approx(20.0)


class PointMassScore(torch.nn.Module):
    """The exact a(y, t) = g Q grad log p_t = -g (y - m c) / s^2 for data = the constant image c."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, y, t):
        t = t.reshape(-1, 1, 1, 1)
        return -sde.beta(t).sqrt() * (y - sde.mean_coef(t) * self.value) / sde.noise_std(t) ** 2


@pytest.mark.parametrize("prior_name", ["standard", "lap_conv", "matern"])
def test_exact_score_has_zero_denoising_loss(prior_name, generator):
    prior = build_prior(prior_name, N0)
    x0 = torch.full((6, 1, N0, N0), 0.3, dtype=torch.float64)
    loss = sde.dsm_loss(PointMassScore(0.3), x0, prior, generator)
    assert loss.item() < 1e-16


@pytest.mark.parametrize("prior_name", ["standard", "lap_conv"])
def test_sampler_with_the_exact_score_recovers_the_data(prior_name):
    """Reverse SDE with the exact score of a point mass at c ends near c.

    What remains is the last step's noise sqrt(D b(D)) A z ~ 0.03 A z and the Euler error.
    """
    prior = build_prior(prior_name, N0)
    samples = sde.euler_maruyama(PointMassScore(0.4), prior, (64, 1, N0, N0), 200,
                                 torch.Generator().manual_seed(0), clamp=False)
    assert abs(samples.mean().item() - 0.4) < 0.01
    last_step_std = math.sqrt(sde.beta(torch.tensor(0.005)).item() * 0.005)
    pixel_std = prior.sample((256, 1, N0, N0), torch.Generator().manual_seed(1)).std().item()
    assert samples.std().item() < 1.5 * last_step_std * pixel_std


def reference_euler_maruyama(score, prior, shape, steps, generator):
    """The sampler written out from DESIGN.md section 2, independently of sde.py."""
    y = prior.sample(shape, generator)
    dt = 1.0 / steps
    for i in range(steps):
        tau = 1.0 - i * dt
        b = 0.1 + 19.9 * tau
        a = score(y, torch.full((shape[0],), tau))
        y = y + dt * (math.sqrt(b) * a + 0.5 * b * y) + math.sqrt(dt) * math.sqrt(b) * prior.sample(shape, generator)
    return y.clamp(0, 1)


def dummy_score(y, t):
    """A fixed, non-trivial score: pulls towards 0.5 with a t-dependent strength."""
    return -(1.0 + t.reshape(-1, 1, 1, 1)) * (y - 0.5) * 2.0


@pytest.mark.parametrize("prior_name", ["standard", "combined_conv"])
def test_full_sampling_loop_matches_the_written_out_formula(prior_name):
    prior = build_prior(prior_name, N0)
    ours = sde.euler_maruyama(dummy_score, prior, (3, 1, N0, N0), 50, torch.Generator().manual_seed(7))
    reference = reference_euler_maruyama(dummy_score, prior, (3, 1, N0, N0), 50,
                                         torch.Generator().manual_seed(7))
    assert torch.allclose(ours, reference, atol=1e-5)


def test_full_sampling_loop_golden_values():
    """Regression guard: a 200-step run with the dummy score and seed 0 (values recorded once)."""
    prior = build_prior("standard", N0)
    out = sde.euler_maruyama(dummy_score, prior, (2, 1, N0, N0), 200, torch.Generator().manual_seed(0),
                             clamp=False)
    golden = torch.tensor(GOLDEN)
    assert torch.allclose(out[0, 0, 10, 10:14], golden, atol=1e-4), out[0, 0, 10, 10:14].tolist()


GOLDEN = [0.6346578598022461, 0.9150081872940063, -1.0631053447723389, 1.4621219635009766]


@pytest.mark.parametrize("mode,resolution", [("native", N0), ("native", 2 * N0), ("resample", 2 * N0),
                                             ("native-bl", 42), ("resample", 35)])
def test_generate_is_the_sampler_from_per_sample_noise_then_the_clamp(mode, resolution):
    """generate = for each sample i the unclamped sampler driven by the generator of (seed, i), with
    the band-limited score in native-bl mode, the n0 result interpolated in resample mode, a final
    denoiser on a finer grid; then clamped to [0, 1]."""
    prior = build_prior("lap_conv", N0)
    out = sde.generate(dummy_net(), prior, 5, N0, mode=mode, seed=2, batch_size=3, num_steps=4,
                       show_progress=False, resolution=resolution)
    grid = N0 if mode == "resample" else resolution
    net = sde.BandLimitedScore(dummy_net(), N0) if mode == "native-bl" else dummy_net()
    raw = torch.cat([sde.euler_maruyama(net, prior, (1, 1, grid, grid), 4, PerSampleGenerator(2, i, 1),
                                        noise_grid=resolution, clamp=False, tweedie=grid > N0) for i in range(5)])
    if mode == "resample":
        raw = fourier_resample(raw.clamp(0, 1), resolution)
    assert out.shape == (5, 1, resolution, resolution)
    assert torch.allclose(out, raw.clamp(0, 1), atol=1e-6)
    assert (raw.clamp(0, 1) != raw).float().mean() > 0.01  # the clamp acts: the comparison is not trivial


def dummy_net():
    class Net(torch.nn.Module):
        def forward(self, y, t):
            return dummy_score(y, t)
    return Net()


def test_resample_mode_at_upscale_one_equals_native():
    prior = build_prior("standard", N0)
    native = sde.generate(dummy_net(), prior, 4, N0, 1, "native", seed=3, num_steps=5, show_progress=False)
    resampled = sde.generate(dummy_net(), prior, 4, N0, 1, "resample", seed=3, num_steps=5, show_progress=False)
    assert torch.equal(native, resampled)


def test_generation_does_not_depend_on_how_the_batches_run_on_the_device():
    prior = build_prior("standard", N0)
    first = sde.generate(dummy_net(), prior, 6, N0, 1, seed=5, batch_size=3, num_steps=5, show_progress=False)
    again = sde.generate(dummy_net(), prior, 6, N0, 1, seed=5, batch_size=3, num_steps=5, show_progress=False)
    other_seed = sde.generate(dummy_net(), prior, 6, N0, 1, seed=6, batch_size=3, num_steps=5, show_progress=False)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)


def test_denoising_loss_decreases_on_a_tiny_overfit():
    torch.manual_seed(0)
    model = build_model("unet", ch=8, ch_mult=(1, 2), num_res_blocks=1)
    prior = build_prior("standard", N0)
    x0 = torch.rand(8, 1, N0, N0, generator=torch.Generator().manual_seed(0))

    def fixed_loss():
        with torch.no_grad():
            return sde.dsm_loss(model, x0, prior, torch.Generator().manual_seed(99)).item()

    before = fixed_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = sde.dsm_loss(model, x0, prior, train_generator)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def test_noise_parametrization_turns_the_loss_into_noise_regression(generator):
    """a = -(g/s) net makes 1/2 |a s/g + eta|^2 = 1/2 |eta - net|^2 (same objective, O(1) target)."""
    class Constant(torch.nn.Module):
        def forward(self, y, t):
            return torch.full_like(y, 0.25)

    prior = build_prior("lap_conv", N0)
    x0 = torch.rand(5, 1, N0, N0, dtype=torch.float64)
    model = sde.ScoreModel(Constant(), "noise")
    loss = sde.dsm_loss(model, x0, prior, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    torch.rand(5, generator=gen)  # the loss draws t first, then eta
    eta = prior.sample(x0.shape, gen, dtype=torch.float64)
    assert loss.item() == pytest.approx(0.5 * (eta - 0.25).pow(2).flatten(1).sum(1).mean().item(), rel=1e-9)
    assert torch.equal(sde.ScoreModel(Constant(), "score")(x0, torch.rand(5)), torch.full_like(x0, 0.25))
    with pytest.raises(ValueError, match="^unknown parametrization 'velocity': expected one of noise, score, edm$"):
        sde.ScoreModel(Constant(), "velocity")


def test_tweedie_denoiser_of_the_exact_score_returns_the_data_from_any_state(generator):
    """For a point mass at c, E[X_0 | X_t = y] = c whatever y and t."""
    y = torch.randn(4, 1, N0, N0, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(sde.tweedie_denoise(PointMassScore(0.4), y, t), torch.full_like(y, 0.4), atol=1e-12)


def test_euler_maruyama_with_tweedie_removes_the_last_step_noise():
    prior = build_prior("lap_conv", N0)
    samples = sde.euler_maruyama(PointMassScore(0.4), prior, (8, 1, N0, N0), 50,
                                 torch.Generator().manual_seed(0), clamp=False, tweedie=True)
    assert (samples - 0.4).abs().max().item() < 1e-5


class GaussianScore(torch.nn.Module):
    """Exact a(y, t) = -g (y - m mu) / (m^2 v + s^2) for data X_0 ~ N(mu, v I), standard prior."""

    def __init__(self, mu, variance):
        super().__init__()
        self.mu, self.variance = mu, variance

    def forward(self, y, t):
        t = t.reshape(-1, 1, 1, 1).double()
        m, s = sde.mean_coef(t), sde.noise_std(t)
        return -sde.beta(t).sqrt() * (y - m * self.mu) / (m**2 * self.variance + s**2)


def test_sigma_and_t_are_inverse_maps():
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sde.t_of_sigma(sde.sigma_of_t(t)), t, rtol=1e-9)
    assert torch.allclose(sde.sigma_of_t(t), sde.noise_std(t) / sde.mean_coef(t), rtol=1e-9)


def exact_flow_at_sigma_min(start, mu, variance):
    """Closed-form probability flow of N(mu, v): x~ - mu scales like sqrt(v + sigma^2)."""
    one = torch.tensor(1.0, dtype=torch.float64)
    sigma_max, sigma_min = sde.sigma_of_t(one), torch.tensor(sde.SIGMA_MIN, dtype=torch.float64)
    x = start / sde.mean_coef(one)
    x_end = mu + (x - mu) * torch.sqrt((variance + sigma_min**2) / (variance + sigma_max**2))
    return x_end * sde.mean_coef(sde.t_of_sigma(sigma_min))


@pytest.mark.parametrize("variance", [0.0, 0.05])
def test_heun_follows_the_closed_form_probability_flow(variance):
    """Point mass (v = 0): the flow is linear in sigma, so Heun is exact; v > 0: second order."""
    prior = build_prior("standard", N0)
    score = GaussianScore(0.4, variance)
    start = prior.sample((4, 1, N0, N0), torch.Generator().manual_seed(0)).double()
    exact = exact_flow_at_sigma_min(start, 0.4, variance)
    errors = []
    for steps in (20, 40):
        out = sde.heun_ode(score, prior, start.shape, steps, torch.Generator().manual_seed(0), clamp=False,
                           tweedie=False)
        errors.append((out.double() - exact).abs().max().item())
    if variance == 0:
        assert max(errors) < 1e-4
    else:
        # 40 steps: error below 10% of the data std; halving the steps: ~1/4 the error
        assert errors[1] < 0.1 * variance**0.5 and errors[1] < errors[0] / 3


def test_heun_with_the_final_denoiser_ends_on_the_data_for_a_point_mass():
    out = sde.heun_ode(GaussianScore(0.4, 0.0), build_prior("lap_conv", N0), (4, 1, N0, N0), 5,
                       torch.Generator().manual_seed(0), clamp=False)
    assert (out - 0.4).abs().max().item() < 1e-4


@pytest.mark.parametrize("sampler", ["ancestral", "dpm2m"])
@pytest.mark.parametrize("prior_name", ["standard", "lap_conv"])
def test_ancestral_steps_are_exact_for_a_point_mass_at_any_step_size(prior_name, sampler):
    """Each step samples the Brownian bridge of x~ = c + sigma A z exactly, so 3 steps end at
    sigma_min with x~ - c distributed as sigma_min A z (Euler-Maruyama is far off at 3 steps).
    DPM-Solver++(2M) too: its correction vanishes where D does not change."""
    prior = build_prior(prior_name, N0)
    out = sde.SAMPLERS[sampler](GaussianScore(0.4, 0.0), prior, (256, 1, N0, N0), 3,
                                torch.Generator().manual_seed(0), clamp=False, tweedie=False).double()
    t_min = sde.t_of_sigma(torch.tensor(sde.SIGMA_MIN, dtype=torch.float64))
    residual = out / sde.mean_coef(t_min) - 0.4
    expected = sde.SIGMA_MIN * prior.sample((256, 1, N0, N0), torch.Generator().manual_seed(1)).double().std()
    assert abs(residual.mean().item()) < 0.05 * expected
    assert residual.std().item() == pytest.approx(expected.item(), rel=0.03)


@pytest.mark.parametrize("sampler, bound, shrink", [("ancestral", 0.1, 3), ("dpm2m", 0.02, 10)])
def test_sigma_grid_sampling_of_gaussian_data_converges_to_its_variance(sampler, bound, shrink):
    """ancestral: replacing X_0 by its mean E[X_0 | x~] shrinks the variance at coarse steps
    (under-dispersed, where Euler-Maruyama over-disperses; 7% short at 200 steps). dpm2m:
    over-dispersed at coarse steps (about +20% at 25), converging faster (second order). The error
    must shrink as the steps grow."""
    prior, variance = build_prior("standard", N0), 0.05
    errors = []
    for steps in (25, 200):
        out = sde.SAMPLERS[sampler](GaussianScore(0.4, variance), prior, (64, 1, N0, N0), steps,
                                    torch.Generator().manual_seed(0), clamp=False, tweedie=False).double()
        assert out.mean().item() == pytest.approx(0.4, abs=0.005)
        errors.append(abs(out.var().item() - variance) / variance)
    assert errors[1] < bound and errors[1] < errors[0] / shrink, errors


class DenoiserOfLogSigma(torch.nn.Module):
    """The score whose denoiser is D(x~, sigma) = c lambda, lambda = -log sigma, whatever the state."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, y, t):
        t = t.reshape(-1, 1, 1, 1).double()
        m, s = sde.mean_coef(t), sde.noise_std(t)
        return sde.beta(t).sqrt() * (m * self.c * -torch.log(sde.sigma_of_t(t)) - y) / s**2


def test_dpm2m_is_second_order_in_the_step_where_ancestral_is_first():
    """(This pins the midpoint form: the exact integral of the linear extension would be exact here.)
    With D depending on sigma only, the samplers' output is the D-free run (same noise) plus
    their quadrature of int 2 e^{-2 (lambda_end - u)} D(u) du over lambda from -log sigma(1) to
    -log sigma_min; for D = lambda that integral is lambda_end (1 - r) + H r - (1 - r) / 2,
    H = lambda_end - lambda_start, r = e^{-2H}. Doubling the steps halves the ancestral error
    (first order) and quarters DPM-Solver++(2M)'s (second order)."""
    prior = build_prior("standard", 8)
    start = -math.log(sde.sigma_of_t(torch.tensor(1.0, dtype=torch.float64)).item())
    end = -math.log(sde.SIGMA_MIN)
    r = math.exp(-2 * (end - start))
    exact = end * (1 - r) + (end - start) * r - (1 - r) / 2
    m_end = sde.mean_coef(sde.t_of_sigma(torch.tensor(sde.SIGMA_MIN, dtype=torch.float64)))

    def error(sampler, steps):
        with_d, without = (sde.SAMPLERS[sampler](DenoiserOfLogSigma(c), prior, (2, 1, 8, 8), steps,
                                                 torch.Generator().manual_seed(0), clamp=False, tweedie=False)
                           for c in (1.0, 0.0))
        return ((with_d.double() - without.double()) / m_end - exact).abs().max().item()

    for sampler, low, high in [("ancestral", 1.7, 2.6), ("dpm2m", 3.4, 4.4)]:
        errors = [error(sampler, steps) for steps in (20, 40, 80)]
        rates = [errors[0] / errors[1], errors[1] / errors[2]]
        assert all(low < rate < high for rate in rates), (sampler, errors)
    assert error("dpm2m", 80) < 0.1 * error("ancestral", 80)


def test_score_evaluations_are_counted_as_the_samplers_call_the_network():
    calls = []

    def counting(y, t):
        calls.append(1)
        return torch.zeros_like(y)

    prior = build_prior("standard", 8)
    for sampler, steps, tweedie in [("em", 7, False), ("em", 7, True), ("heun", 5, False), ("heun", 5, True),
                                    ("ancestral", 5, False), ("ancestral", 5, True), ("dpm2m", 5, False),
                                    ("dpm2m", 5, True)]:
        calls.clear()
        sde.SAMPLERS[sampler](counting, prior, (2, 1, 8, 8), steps, torch.Generator().manual_seed(0),
                              tweedie=tweedie)
        assert len(calls) == sde.score_evaluations(sampler, steps, tweedie), (sampler, tweedie)


@pytest.mark.parametrize("sampler", list(sde.SAMPLERS))
def test_generate_runs_every_sampler(sampler):
    out = sde.generate(dummy_net(), build_prior("standard", N0), 5, N0, 2, "native", seed=1, batch_size=3,
                       num_steps=3, show_progress=False, sampler=sampler, tweedie=True)
    assert out.shape == (5, 1, 2 * N0, 2 * N0) and torch.isfinite(out).all()


def test_score_model_answers_in_the_input_dtype_under_autocast():
    torch.manual_seed(0)
    model = sde.ScoreModel(build_model("unet", ch=8, ch_mult=(1, 2), num_res_blocks=1))
    with torch.no_grad():  # leave the zero initialisation, so the output is not 0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    y, t = torch.randn(2, 1, N0, N0), torch.tensor([0.1, 0.7])
    full = model(y, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(y, t)
    assert low.dtype == torch.float32 and full.abs().max() > 0
    assert (low - full).abs().max() < 0.05 * full.abs().max()


# ------------------------------------------------------------ sampling on a finer grid

BL_N0 = 8  # the 'training' grid of the band-limited tests


def physical_modes(n):
    """(k1, k2) of torch.fft.rfft2 on an n-grid, as float64 grids."""
    k1 = torch.fft.fftfreq(n, 1.0 / n).double()
    k2 = torch.fft.rfftfreq(n, 1.0 / n).double()
    return torch.meshgrid(k1, k2, indexing="ij")


def mode_variances(fields):
    """Per-mode variance of the physical Fourier coefficients (rfft2, norm='forward') over the batch."""
    coef = torch.fft.rfft2(fields.double(), norm="forward")[:, 0]
    return (coef - coef.mean(0)).abs().pow(2).mean(0)


class BandLimitedGaussianData:
    """X_0 = mu + B w on the n0 grid: w white noise (unit pixel variance at n0), B the Fourier
    multiplier beta(k) = 0.4 / (1 + |k|^2 / 4) on |k1|, |k2| < n0/2 and 0 elsewhere (nothing on
    the Nyquist pair), mu a constant. Its physical coefficients have variance beta(k)^2 / n0^2,
    and for a prior with multiplier lambda(k) the denoiser is, mode by mode (Wiener),
        D_k(y) = mu_k + m beta_k^2 / (m^2 beta_k^2 + s^2 |lambda_k|^2) (y_k - m mu_k).
    """

    def __init__(self, n0, prior, mu=0.3):
        self.n0, self.prior, self.mu = n0, prior, mu

    def beta(self, k1, k2):
        inside = (k1.abs() < self.n0 / 2) & (k2.abs() < self.n0 / 2)
        return torch.where(inside, 0.4 / (1 + (k1**2 + k2**2) / 4), torch.zeros_like(k1))

    def fine_grid_variances(self, n):
        """What the samples' mode variances must be on an n-grid: beta^2 / n0^2 in band, 0 above."""
        return self.beta(*physical_modes(n)) ** 2 / self.n0**2

    def noise_network(self):
        """The exact noise predictor eta(y, t) = (y - m D(y)) / s of the n0 grid, as a spectral
        operator that knows the modes of the n0 grid only (|k1|, |k2| <= n0/2) and answers 0 on
        any mode above them, as a network trained at n0 may (an FNO does exactly that)."""
        data = self

        class NoiseNet(torch.nn.Module):
            def forward(self, y, t):
                n = y.shape[-1]
                k1, k2 = physical_modes(n)
                m, s = (sde.mean_coef(t.double()).reshape(-1, 1, 1, 1),
                        sde.noise_std(t.double()).reshape(-1, 1, 1, 1))
                beta2 = data.beta(k1, k2) ** 2
                lam2 = data.prior.multiplier(n)[:, : n // 2 + 1].abs() ** 2
                mu = torch.zeros_like(k1, dtype=torch.complex128)
                mu[0, 0] = data.mu
                coef = torch.fft.rfft2(y.double(), norm="forward")
                denoised = mu + m * beta2 / (m**2 * beta2 + s**2 * lam2) * (coef - m * mu)
                known = (k1.abs() <= data.n0 / 2) & (k2.abs() <= data.n0 / 2)
                eta = torch.where(known, (coef - m * denoised) / s, torch.zeros_like(coef))
                return torch.fft.irfft2(eta, s=(n, n), norm="forward").to(y.dtype)

        return sde.ScoreModel(NoiseNet(), "noise")


@pytest.mark.parametrize("fine", [16, 13])
def test_band_limited_native_sampling_reproduces_the_fine_grid_law_of_band_limited_data(fine):
    """Gaussian data band-limited at n0 = 8, sampled on a 16-grid (and a 13-grid) from their exact
    n0 noise predictor: through the band-limited denoiser the samples have the data's per-mode
    variances in band and exactly nothing above it; the same predictor run on the fine grid as it
    is (today's `native`) leaves the modes above the n0 grid's noisier than the data by orders of
    magnitude. Tolerances from the sampling error: with B samples a complex mode's variance is
    estimated with relative sd 1/sqrt(B) (sqrt(2/B) for a real one), so 6/sqrt(B) = 13% bounds every
    band mode and 2% their mean (sd 0.5% over the ~25 modes); Euler-Maruyama's own error at 100
    steps, measured with B = 2000: at most 6% on a mode, 0.2% on the mean."""
    prior = build_prior("matern", BL_N0)
    data = BandLimitedGaussianData(BL_N0, prior)
    batch, steps = 2000, 100
    network = data.noise_network()
    shape = (batch, 1, fine, fine)
    band_limited = sde.euler_maruyama(sde.BandLimitedScore(network, BL_N0), prior, shape, steps,
                                      torch.Generator().manual_seed(0), clamp=False, tweedie=True)
    expected = data.fine_grid_variances(fine)
    in_band = expected > 0
    measured = mode_variances(band_limited)
    relative = measured[in_band] / expected[in_band] - 1
    assert relative.abs().max() < 6 / math.sqrt(batch), relative
    assert abs(relative.mean()) < 0.02, relative.mean()
    assert measured[~in_band].max() < 1e-12
    assert band_limited.mean().item() == pytest.approx(data.mu, abs=0.005)

    native = sde.euler_maruyama(network, prior, shape, steps, torch.Generator().manual_seed(0), clamp=False,
                                tweedie=True)
    k1, k2 = physical_modes(fine)
    above_n0_grid = (k1.abs() > BL_N0 / 2) | (k2.abs() > BL_N0 / 2)
    assert mode_variances(native)[above_n0_grid].min() > 100 * expected.max()


def test_band_limited_score_hands_the_network_noise_of_the_law_it_was_trained_on():
    """P_n0 folds the fine grid's Nyquist pair with gain 1/sqrt(2): pure prior noise drawn on the
    2 n0 grid reaches the network with the mode variances |lambda(k)|^2 / n0^2 of noise drawn at n0,
    the Nyquist row and column included (gain 1 would double them)."""
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, y, t):
            seen.append(y)
            return torch.zeros_like(y)

    prior = build_prior("lap_conv", BL_N0, laplacian="spectral")  # the stencil's symbol depends on h
    batch = 6000
    noise = prior.sample((batch, 1, 2 * BL_N0, 2 * BL_N0), torch.Generator().manual_seed(0), dtype=torch.float64)
    sde.BandLimitedScore(Recorder(), BL_N0)(noise, torch.full((batch,), 0.5, dtype=torch.float64))
    assert seen[0].shape == (batch, 1, BL_N0, BL_N0)
    expected = prior.multiplier(BL_N0)[:, : BL_N0 // 2 + 1].abs() ** 2 / BL_N0**2
    relative = mode_variances(seen[0]) / expected - 1
    assert relative.abs().max() < 6 * math.sqrt(2 / batch), relative
    sde.BandLimitedScore(Recorder(), BL_N0, nyquist_gain=1.0)(noise, torch.full((batch,), 0.5, dtype=torch.float64))
    ratio = mode_variances(seen[1]) / expected
    nyquist = BL_N0 // 2
    assert (ratio[nyquist, 1:-1] - 2).abs().max() < 0.15  # the plain band projection: twice the variance
    assert (ratio[1:nyquist, 1:-1] - 1).abs().max() < 6 * math.sqrt(2 / batch)


class ShrinkTowardsHalf(torch.nn.Module):
    """A non-linear noise 'network' (per-pixel, t-dependent), for path comparisons."""

    def forward(self, y, t):
        return torch.tanh(2 * (y - 0.5)) * (0.5 + t.reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("sampler", list(sde.SAMPLERS))
@pytest.mark.parametrize("fine", [18, 20, 13])
def test_band_limited_native_sampling_is_the_n0_process_run_on_the_fine_grid(sampler, fine):
    """For odd n0 (no Nyquist pair) P_n0 U_N = I, so the band-limited sampler's low band follows the
    n0 sampler driven by the truncated fine-grid noise exactly, and its output is the interpolated n0
    sample: native-bl equals resample path by path, for any fine grid, multiple of n0 or not."""
    n0, prior = 9, build_prior("lap_conv", 9)
    score = sde.ScoreModel(ShrinkTowardsHalf(), "noise")
    shape = (3, 1, fine, fine)
    kwargs = dict(noise_grid=fine, clamp=False, tweedie=True)
    native_bl = sde.SAMPLERS[sampler](sde.BandLimitedScore(score, n0), prior, shape, 6,
                                      torch.Generator().manual_seed(1), **kwargs)
    at_n0 = sde.SAMPLERS[sampler](score, prior, (3, 1, n0, n0), 6, torch.Generator().manual_seed(1), **kwargs)
    # float32 rounding only: the states reach ~100 here, and the paths agree to 2e-5 of that
    assert (native_bl - fourier_resample(at_n0, fine)).abs().max() < 2e-5 * at_n0.abs().max()


@pytest.mark.parametrize("mode", sde.SAMPLE_MODES)
def test_every_sample_mode_is_the_plain_sampler_on_the_training_grid(mode):
    prior = build_prior("standard", N0)
    plain = sde.generate(dummy_net(), prior, 4, N0, 1, "native", seed=3, num_steps=5, show_progress=False)
    assert torch.equal(sde.generate(dummy_net(), prior, 4, N0, 1, mode, seed=3, num_steps=5, show_progress=False),
                       plain)


@pytest.mark.parametrize("name", ["unet", "fno", "cno"])
def test_samples_do_not_depend_on_the_batch_size(name):
    """Sample i is a function of (seed, i): bitwise the same with batches of 7 and of 64, in every
    mode, at n0 and on a finer grid."""
    torch.manual_seed(0)
    kwargs = {"unet": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1), "fno": dict(width=8, modes=4, n_layers=2),
              "cno": dict(n_levels=2, n_res=1, n_res_neck=1, channel_multiplier=8, lift_channels=4, emb_dim=16,
                          input_skip=True, grid_channels=True)}[name]
    model = sde.ScoreModel(build_model(name, **kwargs))
    with torch.no_grad():  # leave the zero initialisation, so the network's output matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prior = build_prior("lap_conv", N0)
    for resolution, mode in [(N0, "native"), (2 * N0, "native-bl"), (2 * N0, "resample"), (42, "native")]:
        runs = [sde.generate(model, prior, 22, N0, mode=mode, seed=4, batch_size=size, num_steps=3,
                             show_progress=False, sampler="ancestral", resolution=resolution) for size in (7, 64)]
        assert torch.equal(*runs), (mode, resolution)
    def at_n0(count, seed, batch_size):
        return sde.generate(model, prior, count, N0, seed=seed, batch_size=batch_size, num_steps=3,
                            show_progress=False, sampler="ancestral")

    first_three = at_n0(3, 4, 3)
    assert torch.equal(first_three, at_n0(22, 4, 64)[:3])  # a longer call starts with the same samples
    assert not torch.equal(first_three, at_n0(3, 5, 3))


def test_a_finer_grid_always_ends_with_the_denoiser():
    """On a grid finer than n0 the last Euler-Maruyama step would leave fine-grid noise: generate
    ends with the denoiser there even when asked not to, and only there."""
    prior = build_prior("standard", N0)

    def draw(mode, resolution, tweedie):
        return sde.generate(dummy_net(), prior, 2, N0, mode=mode, seed=0, num_steps=4, show_progress=False,
                            resolution=resolution, tweedie=tweedie)

    assert not torch.equal(draw("native", N0, False), draw("native", N0, True))
    assert not torch.equal(draw("resample", 2 * N0, False), draw("resample", 2 * N0, True))
    for mode in ("native", "native-bl"):
        assert torch.equal(draw(mode, 2 * N0, False), draw(mode, 2 * N0, True))


def edm_coefficients(t, v, sd=sde.SIGMA_DATA):
    """EDM's c_in, c_skip, c_out written out here for sigma_v^2 = v sigma(t)^2."""
    sigma = torch.sqrt(torch.expm1(t**2 * 19.9 / 2 + 0.1 * t)).reshape(-1, 1, 1, 1)
    total = v * sigma**2 + sd**2
    return 1 / total.sqrt(), sd**2 / total, (v * sigma**2).sqrt() * sd / total.sqrt(), sigma


@pytest.mark.parametrize("prior_name", ["standard", "lap_conv"])
def test_edm_parametrization_with_the_ideal_output_is_the_exact_score(prior_name, generator):
    """For data = the constant c the ideal denoiser is c, so the ideal network output is
    F* = (c - c_skip x~) / c_out of its input c_in x~: the score is then exactly the point mass's
    and the denoising loss is 0."""
    prior = build_prior(prior_name, N0)
    v = prior.pixel_variance()

    class Ideal(torch.nn.Module):
        def forward(self, u, t):
            c_in, c_skip, c_out, _ = edm_coefficients(t, v)
            return (0.3 - c_skip * u / c_in) / c_out

    model = sde.ScoreModel(Ideal(), "edm", v)
    y = torch.randn(4, 1, N0, N0, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.6, 1.0], dtype=torch.float64)
    assert torch.allclose(model(y, t), PointMassScore(0.3)(y, t), rtol=1e-8, atol=1e-8)
    x0 = torch.full((6, 1, N0, N0), 0.3, dtype=torch.float64)
    assert sde.dsm_loss(model, x0, prior, generator).item() < 1e-12


def test_edm_loss_gives_the_network_target_unit_weight_at_every_t():
    """With a constant output F the loss is 1/2 mean_batch |F - F*|^2 (summed over pixels),
    F* = (X_0 - c_skip x~) / c_out the network's target, x~ = X_t / m."""
    class Constant(torch.nn.Module):
        def forward(self, u, t):
            return torch.full_like(u, 0.25)

    prior = build_prior("lap_conv", N0)  # pixel variance 0.077: a slip between sigma and v sigma shows
    v = prior.pixel_variance()
    x0 = torch.rand(5, 1, N0, N0, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = sde.dsm_loss(sde.ScoreModel(Constant(), "edm", v), x0, prior, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    t = sde.T_EPS + (1 - sde.T_EPS) * torch.rand(5, generator=gen, dtype=torch.float32).double()
    eta = prior.sample(x0.shape, gen, dtype=torch.float64)
    _, c_skip, c_out, sigma = edm_coefficients(t, v)
    x_tilde = x0 + sigma * eta  # X_t / m
    target = (x0 - c_skip * x_tilde) / c_out
    expected = 0.5 * (0.25 - target).pow(2).flatten(1).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_interleave_shards_rebuilds_the_order_of_one_process():
    whole = torch.arange(11.0).reshape(11, 1, 1, 1)
    batch, world = 2, 3
    parts = [torch.cat([whole[b * batch:(b + 1) * batch] for b in range(rank, 6, world)]) for rank in range(world)]
    assert torch.equal(sde.interleave_shards(parts, batch), whole)


def test_automatic_sampling_batch_is_a_pixel_budget_on_a_cpu_and_1000_on_a_gpu():
    assert sde.auto_batch_size(28, "cpu") == 64 and sde.auto_batch_size(56, "cpu") == 16
    assert sde.auto_batch_size(300, None) == 1  # never 0
    assert sde.auto_batch_size(28, "cuda") == 1000
    assert sde.sampling_batch_size(7, 28, "cpu") == 16 and sde.sampling_batch_size(None, 56, "cpu") == 16
    assert sde.sampling_batch_size(7, 28, "cuda") == 7


def test_generate_defaults_and_refusals():
    """Without upscale or resolution: the training grid; seed 0, 200 steps by default; bad modes,
    samplers and coarser grids are refused with messages that name the choices."""
    prior = build_prior("standard", 8)
    default = sde.generate(dummy_net(), prior, 2, 8, show_progress=False)
    assert default.shape == (2, 1, 8, 8)
    assert torch.equal(default, sde.generate(dummy_net(), prior, 2, 8, seed=0, num_steps=200, show_progress=False))
    with pytest.raises(ValueError, match="^unknown sample mode 'x': expected one of native-bl, resample, native$"):
        sde.generate(dummy_net(), prior, 2, 8, mode="x")
    with pytest.raises(ValueError, match=r"^unknown sampler 'rk4': expected one of \['em', 'heun', 'ancestral', 'dpm2m'\]$"):
        sde.generate(dummy_net(), prior, 2, 8, sampler="rk4")
    with pytest.raises(ValueError, match="^the output grid 6 is coarser than the training grid 8$"):
        sde.generate(dummy_net(), prior, 2, 8, resolution=6)


def test_a_shard_samples_only_its_batches():
    prior = build_prior("standard", 8)
    whole = sde.generate(dummy_net(), prior, 40, 8, seed=3, batch_size=16, num_steps=3, show_progress=False)
    parts = [sde.generate(dummy_net(), prior, 40, 8, seed=3, batch_size=16, num_steps=3, show_progress=False,
                          shard=(rank, 2)) for rank in range(2)]
    assert [len(p) for p in parts] == [16 + 8, 16]  # batches 0 and 2, then batch 1
    assert torch.equal(sde.interleave_shards(parts, 16), whole)


def test_the_loss_draws_t_uniformly_from_t_eps_to_1_and_slices_its_shard_of_the_global_batch():
    """t = t_eps + (1 - t_eps) U per image of the global batch; rank r of W takes images r B .. (r + 1) B - 1
    of t and of the noise, so the ranks' losses average to the one-process loss of the global batch."""
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, y, t):
            seen.append(t.clone())
            return torch.tanh(y) * (1 + t.reshape(-1, 1, 1, 1))

    prior = build_prior("lap_conv", 8)
    x0 = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = sde.dsm_loss(Recorder(), x0, prior, torch.Generator().manual_seed(5))
    expected_t = sde.T_EPS + (1 - sde.T_EPS) * torch.rand(6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(seen[0], expected_t.double(), rtol=0, atol=1e-12)
    shards = [sde.dsm_loss(Recorder(), x0[2 * r:2 * r + 2], prior, torch.Generator().manual_seed(5), shard=(r, 3))
              for r in range(3)]
    assert torch.equal(torch.cat(seen[1:]), seen[0])
    assert sum(s.item() for s in shards) / 3 == pytest.approx(whole.item(), rel=1e-12)


@pytest.mark.parametrize("variance", [1.0, 4.0])
def test_lognormal_training_times_give_edms_log_normal_pixel_noise_level_at_our_data_scale(variance):
    """ln(sqrt(v) sigma(t)) ~ N(ln(0.6 * 0.28), 1.2^2): EDM's N(-1.2, 1.2^2) for data of sd 0.5, its median
    0.30 = 0.6 sd moved to our sd 0.28; the prior's pixel variance v enters as in the preconditioning."""
    t = sde.training_times(200_000, torch.Generator().manual_seed(0), "lognormal", variance)
    assert t.min() >= sde.T_EPS and t.max() <= 1
    log_level = torch.log(math.sqrt(variance) * sde.sigma_of_t(t.double()))
    assert log_level.mean().item() == pytest.approx(math.log(0.6 * 0.28), abs=0.01)  # 0.0027 = 1 sd of the mean
    assert log_level.std().item() == pytest.approx(1.2, abs=0.01)
    uniform = sde.training_times(200_000, torch.Generator().manual_seed(0))
    assert uniform.min() >= sde.T_EPS and uniform.mean().item() == pytest.approx(0.5, abs=0.005)
    with pytest.raises(ValueError, match="t_sampling"):
        sde.training_times(3, None, "beta")


def test_the_loss_takes_its_times_from_the_chosen_t_sampling_with_the_priors_pixel_variance():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, y, t):
            seen.append(t.clone())
            return torch.tanh(y)

    prior = build_prior("lap_conv", N0)  # pixel variance 0.077, so a forgotten v shows
    x0 = torch.rand(6, 1, N0, N0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sde.dsm_loss(Recorder(), x0, prior, torch.Generator().manual_seed(5), t_sampling="lognormal")
    expected = sde.training_times(6, torch.Generator().manual_seed(5), "lognormal", prior.pixel_variance())
    assert abs(math.log(prior.pixel_variance())) > 0.5
    assert torch.allclose(seen[0], expected.double(), rtol=0, atol=1e-12)
    shards = [sde.dsm_loss(Recorder(), x0[2 * r:2 * r + 2], prior, torch.Generator().manual_seed(5), shard=(r, 3),
                           t_sampling="lognormal") for r in range(3)]
    assert torch.equal(torch.cat(seen[1:]), seen[0]) and all(torch.isfinite(s) for s in shards)


def test_the_loss_reads_the_weight_of_a_wrapped_model_as_distributed_data_parallel_wraps_it():
    class Constant(torch.nn.Module):
        def forward(self, u, t):
            return torch.full_like(u, 0.25)

    class Wrapper(torch.nn.Module):  # DistributedDataParallel's shape: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, y, t):
            return self.module(y, t)

    prior = build_prior("lap_conv", 8)
    model = sde.ScoreModel(Constant(), "edm", prior.pixel_variance())
    x0 = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direct = sde.dsm_loss(model, x0, prior, torch.Generator().manual_seed(1))
    wrapped = sde.dsm_loss(Wrapper(model), x0, prior, torch.Generator().manual_seed(1))
    assert wrapped.item() == pytest.approx(direct.item(), rel=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_sigma_grid_is_karras_rho_7_from_sigma_max_to_sigma_min_then_zero(steps):
    grid = sde.sigma_grid(steps, 80.0)
    assert grid.dtype == torch.float64 and len(grid) == steps + 1 and grid[-1] == 0
    i = torch.arange(steps, dtype=torch.float64)
    fraction = i / (steps - 1) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + fraction * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert torch.allclose(grid[:-1], expected, rtol=1e-12)
    assert sde.SIGMA_MIN == 0.002 and sde.SIGMA_RHO == 7.0


@pytest.mark.parametrize("sampler", ["heun", "ancestral", "dpm2m"])
def test_sigma_grid_samplers_step_counts_and_clamp(sampler):
    prior = build_prior("standard", 8)
    score = GaussianScore(0.4, 0.0)
    run = sde.SAMPLERS[sampler]
    one = run(score, prior, (2, 1, 8, 8), 1, torch.Generator().manual_seed(0), clamp=False, tweedie=True)
    # one step: straight to the denoiser. atol: the start x~ = A z / m(1) is ~500 in float32 and the
    # sampler's coefficients are float32, so D = mu holds to ~1e-5 (9e-6 here, over 1e-5 on CI's CPU)
    assert torch.allclose(one, torch.full_like(one, 0.4), atol=1e-4)
    two = run(score, prior, (2, 1, 8, 8), 2, torch.Generator().manual_seed(0), clamp=False, tweedie=False)
    assert two.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=f"^{sampler}_?\\w* needs num_steps >= 1 with the final denoiser, >= 2 without$"):
        run(score, prior, (2, 1, 8, 8), 1, torch.Generator().manual_seed(0), tweedie=False)
    far = GaussianScore(1.7, 0.0)  # a point mass outside [0, 1]: the clamp must act
    raw = run(far, prior, (2, 1, 8, 8), 3, torch.Generator().manual_seed(0), clamp=False)
    clamped = run(far, prior, (2, 1, 8, 8), 3, torch.Generator().manual_seed(0))
    assert raw.min() > 1.5 and torch.equal(clamped, raw.clamp(0, 1))


def test_generate_interpolates_resample_mode_as_asked_and_returns_an_empty_batch_for_no_samples():
    prior = build_prior("standard", 8)
    kwargs = dict(seed=1, num_steps=3, show_progress=False, resolution=20, mode="resample")
    bicubic = sde.generate(dummy_net(), prior, 3, 8, interp="bicubic", **kwargs)
    at_n0 = torch.cat([sde.euler_maruyama(dummy_net(), prior, (1, 1, 8, 8), 3, PerSampleGenerator(1, i, 1),
                                          noise_grid=20) for i in range(3)])  # the noise drawn at 20, truncated
    assert torch.allclose(bicubic, bicubic_resample(at_n0, 20).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(bicubic, sde.generate(dummy_net(), prior, 3, 8, **kwargs))
    assert sde.generate(dummy_net(), prior, 0, 8, resolution=20, show_progress=False).shape == (0, 1, 20, 20)


def test_edm_defaults_to_unit_noise_variance():
    class Net(torch.nn.Module):
        def forward(self, u, t):
            return torch.sin(u)

    y, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0.3, 0.8], dtype=torch.float64)
    assert torch.equal(sde.ScoreModel(Net(), "edm")(y, t), sde.ScoreModel(Net(), "edm", 1.0)(y, t))
    assert not torch.equal(sde.ScoreModel(Net(), "edm", 0.5)(y, t), sde.ScoreModel(Net(), "edm")(y, t))


def test_without_the_final_denoiser_the_sigma_grid_samplers_return_m_at_sigma_min_times_x():
    """y = m x~ at the last nonzero sigma, m = 1 / sqrt(1 + sigma^2) (s^2 + m^2 = 1, sigma = s / m)."""
    sigmas = sde.sigma_grid(3, 80.0)
    x = torch.full((2, 1, 3, 3), 0.5, dtype=torch.float64)
    y = sde._finish_on_sigma_grid(x, sigmas, tweedie=False, clamp=False)
    m_at_sigma_min = 1 / math.sqrt(1 + sde.SIGMA_MIN**2)
    torch.testing.assert_close(y, torch.full_like(x, 0.5 * m_at_sigma_min), rtol=1e-12, atol=0)
    assert torch.equal(sde._finish_on_sigma_grid(x, sigmas, tweedie=True, clamp=False), x)  # D(x~) is y
    wide = torch.tensor([-0.5, 0.5, 1.5], dtype=torch.float64)
    assert torch.equal(sde._finish_on_sigma_grid(wide, sigmas, tweedie=True, clamp=True), wide.clamp(0, 1))


def test_lognormal_training_times_stop_at_t_1_with_the_tail_beyond_sigma_1():
    """A prior of tiny pixel variance v puts sigma_v / sqrt(v) above sigma(1) for the log-normal
    tail P(ln sigma_v > ln(sqrt(v) sigma(1))): those times are t = 1 exactly, none beyond."""
    variance = 1e-4
    t = sde.training_times(200_000, torch.Generator().manual_seed(0), "lognormal", variance)
    sigma_1 = math.sqrt(math.expm1((sde.B_MAX - sde.B_MIN) / 2 + sde.B_MIN))
    z = (math.log(math.sqrt(variance) * sigma_1) - sde.P_MEAN) / sde.P_STD
    tail = 0.5 * math.erfc(z / math.sqrt(2))
    assert 0.02 < tail < 0.05  # the case is a real test of the upper end
    assert t.max().item() == 1.0 and t.min().item() >= sde.T_EPS
    assert (t == 1.0).double().mean().item() == pytest.approx(tail, abs=0.002)  # sd of the fraction 4e-4


# ---------------------------------------------------------------- coarse grids (multilevel training)

class IdealWhiteGaussian(torch.nn.Module):
    """The ideal 'edm' network output for data X_0 ~ N(0, c I) on the n0 grid under the standard prior
    (noise of unit pixel variance at n0): the denoiser is D = c / (c + sigma^2) x~, and the output is
    F* = (D - c_skip x~) / c_out of the input u = c_in x~."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, u, t):
        c_in, c_skip, c_out, sigma = edm_coefficients(t, 1.0)
        x = u / c_in
        return (self.c / (self.c + sigma**2) * x - c_skip * x) / c_out


@pytest.mark.parametrize("n", [7, 14, 56])
def test_pixel_conditioning_makes_the_n0_denoiser_exact_on_any_grid_for_white_gaussian_data(n):
    """On the n-grid the noise of the standard prior has pixel variance r^2 = (n / n0)^2, so for white
    N(0, c) data the exact denoiser is c / (c + r^2 sigma^2) x~: 'pixel' conditioning hands the n0
    network this problem as one at sigma_e = r sigma and gets it exactly; 'physical' does not."""
    c = 0.08
    prior = build_prior("standard", N0)
    pixel = sde.ScoreModel(IdealWhiteGaussian(c), "edm", prior.pixel_variance(), grid_conditioning="pixel",
                           grid_variance=prior.pixel_variance)
    physical = sde.ScoreModel(IdealWhiteGaussian(c), "edm", prior.pixel_variance())
    y = torch.randn(4, 1, n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.02, 0.15, 0.5, 0.9], dtype=torch.float64)
    m, s, g = (v.reshape(-1, 1, 1, 1) for v in (sde.mean_coef(t), sde.noise_std(t), sde.beta(t).sqrt()))
    sigma = s / m
    exact_denoiser = c / (c + (n / N0) ** 2 * sigma**2) * (y / m)
    exact = g * (m * exact_denoiser - y) / s**2
    assert pixel.variance_ratio(n) == pytest.approx((n / N0) ** 2, rel=1e-12)
    torch.testing.assert_close(pixel(y, t), exact, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(physical(y, t), exact, rtol=1e-3)
    y0 = torch.randn(2, 1, N0, N0, dtype=torch.float64)
    assert torch.equal(pixel(y0, t[:2]), physical(y0, t[:2]))  # at n0 the two are one map


def test_pixel_conditioning_weighs_a_coarse_grids_loss_by_its_own_edm_coefficients():
    """Off n0 the network answers at t_e, so the weight that gives its target unit weight is
    sigma^2 / c_out^2 with c_out of the grid's pixel variance v(n) = r^2 v(n0)."""
    prior = build_prior("lap_conv", N0)  # not white: r^2 is the ratio of the operator's sums over the grids
    v0, v14 = prior.pixel_variance(), prior.pixel_variance(14)
    assert 0.3 < v14 / v0 < 0.95
    model = sde.ScoreModel(IdealWhiteGaussian(0.1), "edm", v0, grid_conditioning="pixel",
                           grid_variance=prior.pixel_variance)
    t = torch.tensor([0.01, 0.3, 0.95], dtype=torch.float64)
    _, _, c_out, sigma = edm_coefficients(t, v14)
    torch.testing.assert_close(model.loss_weight(t, 14), (sigma**2 / c_out**2).reshape(-1), rtol=1e-9, atol=0)
    torch.testing.assert_close(model.loss_weight(t, N0), model.loss_weight(t), rtol=0, atol=0)
    physical = sde.ScoreModel(IdealWhiteGaussian(0.1), "edm", v0)
    torch.testing.assert_close(physical.loss_weight(t, 14), physical.loss_weight(t), rtol=0, atol=0)


def test_a_coarse_levels_noise_is_the_n0_draw_truncated_to_its_grid():
    """dsm_loss with noise_grid: with a = 0 ('score' parametrization, zero output) the loss is
    1/2 mean |eta|^2, eta the truncation (`truncate_noise`) of the draw on the noise grid."""
    class Zero(torch.nn.Module):
        def forward(self, u, t):
            return torch.zeros_like(u)

    prior = build_prior("lap_conv", 16)
    x0 = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    loss = sde.dsm_loss(sde.ScoreModel(Zero(), "score"), x0, prior, torch.Generator().manual_seed(2), noise_grid=16)
    gen = torch.Generator().manual_seed(2)
    torch.rand(3, generator=gen)  # the times come first
    eta = sde.truncate_noise(prior.sample((3, 1, 16, 16), gen, dtype=torch.float64), 8)
    assert loss.item() == pytest.approx(0.5 * eta.pow(2).flatten(1).sum(1).mean().item(), rel=1e-12)


def test_pixel_conditioning_needs_the_grids_variance_and_a_known_name():
    with pytest.raises(ValueError, match="grid_variance"):
        sde.ScoreModel(IdealWhiteGaussian(0.1), "edm", grid_conditioning="pixel")
    with pytest.raises(ValueError, match="grid conditioning"):
        sde.ScoreModel(IdealWhiteGaussian(0.1), "edm", grid_conditioning="cells")
