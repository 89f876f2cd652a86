import math

import pytest
import torch

import sde
from models import build_model
from priors import build_prior

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


@pytest.mark.parametrize("upscale", [1, 2])
@pytest.mark.parametrize("mode", ["native", "resample"])
def test_generate_shape_and_range(upscale, mode):
    prior = build_prior("lap_conv", N0)
    out = sde.generate(dummy_net(), prior, 5, N0, upscale, mode, seed=0, batch_size=3, num_steps=4,
                       show_progress=False)
    assert out.shape == (5, 1, upscale * N0, upscale * N0)
    assert out.min() >= 0 and out.max() <= 1


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
    with pytest.raises(ValueError, match="parametrization"):
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


@pytest.mark.parametrize("prior_name", ["standard", "lap_conv"])
def test_ancestral_steps_are_exact_for_a_point_mass_at_any_step_size(prior_name):
    """Each step samples the Brownian bridge of x~ = c + sigma A z exactly, so 3 steps end at
    sigma_min with x~ - c distributed as sigma_min A z (Euler-Maruyama is far off at 3 steps)."""
    prior = build_prior(prior_name, N0)
    out = sde.ancestral(GaussianScore(0.4, 0.0), prior, (256, 1, N0, N0), 3, torch.Generator().manual_seed(0),
                        clamp=False, tweedie=False).double()
    t_min = sde.t_of_sigma(torch.tensor(sde.SIGMA_MIN, dtype=torch.float64))
    residual = out / sde.mean_coef(t_min) - 0.4
    expected = sde.SIGMA_MIN * prior.sample((256, 1, N0, N0), torch.Generator().manual_seed(1)).double().std()
    assert abs(residual.mean().item()) < 0.05 * expected
    assert residual.std().item() == pytest.approx(expected.item(), rel=0.03)


def test_ancestral_sampling_of_gaussian_data_converges_to_its_variance():
    """Replacing X_0 by its mean E[X_0 | x~] shrinks the variance at coarse steps (under-dispersed,
    where Euler-Maruyama over-disperses); the error must shrink as the steps grow."""
    prior, variance = build_prior("standard", N0), 0.05
    errors = []
    for steps in (25, 200):
        out = sde.ancestral(GaussianScore(0.4, variance), prior, (64, 1, N0, N0), steps,
                            torch.Generator().manual_seed(0), clamp=False, tweedie=False).double()
        assert out.mean().item() == pytest.approx(0.4, abs=0.005)
        errors.append(abs(out.var().item() - variance) / variance)
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3, errors


def test_score_evaluations_are_counted_as_the_samplers_call_the_network():
    calls = []

    def counting(y, t):
        calls.append(1)
        return torch.zeros_like(y)

    prior = build_prior("standard", 8)
    for sampler, steps, tweedie in [("em", 7, False), ("em", 7, True), ("heun", 5, False), ("heun", 5, True),
                                    ("ancestral", 5, False), ("ancestral", 5, True)]:
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
