"""The variance-preserving SDE in function space, its denoising loss and samplers.

Forward SDE (DESIGN.md section 2):  dX = -1/2 b(t) X dt + sqrt(b(t)) A dW,
b(t) = b_min + (b_max - b_min) t = 0.1 + 19.9 t on t in [0, 1]. Marginal:
X_t = m(t) X_0 + s(t) A z,  m(t) = exp(-t^2 (b_max - b_min)/4 - b_min t/2),
s(t)^2 = 1 - m(t)^2, z white noise, Q = A A^*.

Score network a(y, t), trained by denoising score matching with the loss
1/2 sum_pixels (a(X_t, t) s(t) / g(t) + eta)^2, eta = A z, g = sqrt(b(t));
its optimum is a = g Q grad log p_t, so the reverse drift needs no explicit Q.

Reverse SDE, Euler-Maruyama with step D = 1/N from tau = 1 down to tau = D:
y <- y + D (g a(y, tau) + 1/2 b(tau) y) + sqrt(D) g eta,  eta = A z fresh each step;
optionally ending with Tweedie's denoiser E[X_0 | X_t] = (y + s^2 a / g) / m.
Probability-flow ODE (same marginals, deterministic given y_1 = A z), Heun's method:
dy/dt = -1/2 (b(t) y + g(t) a(y, t)), integrated in EDM's variables (see `heun_ode`).
Ancestral sampling: the reverse process's exact Gaussian steps for a point mass, with the
data replaced by the denoiser at each step (see `ancestral`); DPM-Solver++(2M), the same steps
with the denoiser extended linearly in log sigma through the step before (see `dpm2m`).
"""
import math

import torch
from torch import nn

from priors.base import PerSampleGenerator
from resample import fourier_resample, resample, truncate_noise
from utils import progress_bar

B_MIN, B_MAX = 0.1, 20.0
T_EPS = 1e-5  # smallest training time: s(t) ~ sqrt(b_min t) stays away from 0


def beta(t):
    """b(t) = b_min + (b_max - b_min) t."""
    return B_MIN + (B_MAX - B_MIN) * t


def mean_coef(t):
    """m(t) = exp(-t^2 (b_max - b_min) / 4 - b_min t / 2)."""
    return torch.exp(-t**2 * (B_MAX - B_MIN) / 4 - B_MIN * t / 2)


def noise_std(t):
    """s(t) = sqrt(1 - m(t)^2)."""
    return torch.sqrt(-torch.expm1(-t**2 * (B_MAX - B_MIN) / 2 - B_MIN * t))


def _per_image(v):
    return v.reshape(-1, 1, 1, 1)


SIGMA_DATA = 0.28  # MNIST's pixel standard deviation (blurred digits at 28: 0.284); a dataset passes its own


class ScoreModel(nn.Module):
    """The score network a(y, t) built from a raw network `net`.

    parametrization 'noise' (default): a(y, t) = -(g(t) / s(t)) net(y, t). The network
    predicts the prior noise eta, an O(1) target at every t, and the loss becomes
    1/2 |eta - net(X_t, t)|^2; same objective and optimum a = g Q grad log p_t, but the
    reference parametrization ('score', a = net) asks the network for outputs of size
    g/s ~ 300 at small t, which trains far slower.

    'edm' (Karras et al. 2022's preconditioning, for a prior of pixel variance v at n0): in
    x~ = y / m, sigma = s / m, the network outputs a denoiser
        D = c_skip x~ + c_out net(c_in x~, t),   with  sigma_v^2 = v sigma^2,
        c_skip = sd^2 / (sigma_v^2 + sd^2),  c_out = sigma_v sd / sqrt(sigma_v^2 + sd^2),
        c_in = 1 / sqrt(sigma_v^2 + sd^2),   sd = SIGMA_DATA,
    and a = g (m D - y) / s^2 (Tweedie). The noise parametrization's denoiser (y - s net) / m
    multiplies the network's error by sigma (152 at t = 1); this one keeps it at most sd, and its
    training loss weighs every t so that the network's own target has unit weight (`loss_weight`).
    """

    PARAMETRIZATIONS = ("noise", "score", "edm")
    GRID_CONDITIONINGS = ("physical", "pixel")

    def __init__(self, net, parametrization="noise", noise_variance=1.0, sigma_data=SIGMA_DATA,
                 grid_conditioning="physical", grid_variance=None):
        super().__init__()
        if parametrization not in self.PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {parametrization!r}: expected one of "
                             f"{', '.join(self.PARAMETRIZATIONS)}")
        if grid_conditioning not in self.GRID_CONDITIONINGS:
            raise ValueError(f"unknown grid conditioning {grid_conditioning!r}: expected one of "
                             f"{', '.join(self.GRID_CONDITIONINGS)}")
        if grid_conditioning == "pixel" and grid_variance is None:
            raise ValueError("grid_conditioning 'pixel' needs grid_variance (the prior's pixel_variance)")
        self.net, self.parametrization = net, parametrization
        self.noise_variance, self.sigma_data = float(noise_variance), float(sigma_data)
        self.grid_conditioning = grid_conditioning
        self.grid_variance = grid_variance  # n -> pixel variance of the prior's noise on the n-grid
        self._variance_ratios = {}

    def variance_ratio(self, n):
        """r^2(n) = v(n) / v(n0): the prior's pixel variance on the n-grid over the training grid's
        (1 at n0; (n / n0)^2 for white noise); 1 under 'physical' conditioning, where it is not used."""
        if self.grid_conditioning == "physical":
            return 1.0
        if n not in self._variance_ratios:
            self._variance_ratios[n] = self.grid_variance(n) / self.noise_variance
        return self._variance_ratios[n]

    def preconditioning(self, t):
        """(c_in, c_skip, c_out) of the 'edm' parametrization at times t, per image."""
        sigma2 = _per_image(sigma_of_t(t)) ** 2 * self.noise_variance
        total = sigma2 + self.sigma_data**2
        return total.rsqrt(), self.sigma_data**2 / total, sigma2.sqrt() * self.sigma_data / total.sqrt()

    def forward(self, y, t):
        """a(y, t) on the grid of y. Under grid_conditioning 'physical' (default) the network sees t on
        every grid: the same physical noise level, whose pixel variance v(n) = r^2 v(n0) changes with
        the grid. Under 'pixel', off the training grid n0 it sees the problem as one at n0: with
        x~ = y / m = X_0 + sigma eta and eta of pixel variance r^2 v(n0), x~ is an n0-type draw at
        sigma_e = r sigma, so the network denoises y_e = m(t_e) x~ at t_e = t(sigma_e), and
            a(y, t) = g (m D - y) / s^2,   D = E[X_0 | X_t = y] = the n0 denoiser at (y_e, t_e)
        (Tweedie). At n0 both are the same map."""
        ratio = self.variance_ratio(y.shape[-1])
        if ratio == 1.0:
            return self._score(y, t)
        m, s, g = _per_image(mean_coef(t)), _per_image(noise_std(t)), _per_image(beta(t).sqrt())
        t_e = t_of_sigma(sigma_of_t(t) * math.sqrt(ratio))
        denoised = tweedie_denoise(self._score, y * (_per_image(mean_coef(t_e)) / m), t_e)
        return g * (m * denoised - y) / s**2

    def _score(self, y, t):
        """a(y, t) of the parametrization, with the network conditioned on t as given."""
        if self.parametrization == "edm":
            m, s, g = _per_image(mean_coef(t)), _per_image(noise_std(t)), _per_image(beta(t).sqrt())
            c_in, c_skip, c_out = self.preconditioning(t)
            x = y / m
            denoised = c_skip * x + c_out * self.net(c_in * x, t).to(y.dtype)
            return g * (m * denoised - y) / s**2
        out = self.net(y, t).to(y.dtype)  # under autocast the net may answer in bfloat16
        if self.parametrization == "score":
            return out
        t = t.to(out.dtype)
        return -(beta(t).sqrt() / noise_std(t)).reshape(-1, 1, 1, 1) * out

    def loss_weight(self, t, grid=None):
        """Per-image weight of the denoising loss 1/2 |a s / g + eta|^2 = 1/2 |D - X_0|^2 / sigma^2 on
        the grid `grid` (default n0): 1, except for 'edm', where sigma^2 / c_out^2 makes it
        1/2 |net - its target|^2. Under 'pixel' conditioning off n0 the network answers at t_e, where
        |D - X_0|^2 / sigma^2 = r^2 |D - X_0|^2 / sigma_e^2: the n0 weight at t_e over r^2."""
        ratio = 1.0 if grid is None else self.variance_ratio(grid)
        if ratio != 1.0:
            return self.loss_weight(t_of_sigma(sigma_of_t(t) * math.sqrt(ratio))) / ratio
        if self.parametrization != "edm":
            return torch.ones_like(t)
        c_out = self.preconditioning(t)[2].reshape(-1)
        return sigma_of_t(t) ** 2 / c_out**2


T_SAMPLINGS = ("uniform", "lognormal")
# EDM's training distribution ln sigma ~ N(-1.2, 1.2^2) was set for data of standard deviation 0.5;
# its median sigma = 0.30 = 0.6 sd, so for ours the median is 0.6 sigma_data (Karras et al. 2022).
P_MEAN, P_STD = math.log(0.6 * SIGMA_DATA), 1.2  # P_MEAN: MNIST's; training_times takes a dataset's sigma_data


def training_times(count, generator=None, t_sampling="uniform", noise_variance=1.0, t_eps=T_EPS,
                   sigma_data=SIGMA_DATA):
    """Diffusion times t of `count` training images, on the CPU.

    'uniform' (the reference, DESIGN.md section 2): t ~ U(t_eps, 1). In sigma = s / m that puts half
    of the images above sigma = 3.4, where an image in [0, 1] is nearly all noise.
    'lognormal' (EDM's p(sigma)): the pixel noise level sigma_v = sqrt(v) sigma(t) of a prior of pixel
    variance v has ln sigma_v ~ N(log(0.6 sigma_data), P_STD^2); t = t_of_sigma(sigma_v / sqrt(v)), kept in
    [t_eps, 1] (a draw falls outside about once in 10^5).
    """
    if t_sampling == "uniform":
        return t_eps + (1 - t_eps) * torch.rand(count, generator=generator)
    if t_sampling != "lognormal":
        raise ValueError(f"unknown t_sampling {t_sampling!r}: expected one of {', '.join(T_SAMPLINGS)}")
    log_median = math.log(0.6 * sigma_data)
    sigma_v = torch.exp(log_median + P_STD * torch.randn(count, generator=generator, dtype=torch.float64))
    return t_of_sigma(sigma_v / math.sqrt(noise_variance)).clamp(t_eps, 1.0)


def dsm_loss(score_net, x0, prior, generator=None, t_eps=T_EPS, shard=(0, 1), t_sampling="uniform",
             noise_grid=None):
    """Denoising score-matching loss, summed over pixels, averaged over the batch.

    t from `training_times` per image (t_sampling 'uniform': t ~ U(t_eps, 1); 'lognormal': EDM's
    log-normal noise levels), eta = A z, X_t = m X_0 + s eta,
    loss = mean_batch w(t) 1/2 sum_pixels (a(X_t, t) s / g + eta)^2, w = the model's
    `loss_weight(t)` (1 but for the 'edm' parametrization).
    Random numbers come from `generator` on the CPU (same on every device).
    shard=(rank, world): x0 is slice `rank` of a global batch of world * len(x0) images;
    t and eta are drawn for the whole global batch (the generator is shared by all
    ranks) and sliced, so W processes reproduce one process with batch W * len(x0).
    noise_grid: a grid finer than x0's (a coarse level of multilevel training): eta is drawn there and
    Fourier-truncated to x0's grid (`truncate_noise`, the law of the `resample` protocol), so X_t on
    the coarse grid is the truncation of X_t on the fine one (but for the Nyquist pair, which noise folds
    at gain 1/sqrt(2), to keep its law, and data at gain 1, to keep their samples: data.reduce_to_grid).
    """
    rank, world = shard
    batch = x0.shape[0]
    mine = slice(rank * batch, (rank + 1) * batch)
    # only 'lognormal' reads the pixel variance; it costs up to 2 ms of CPU a call (random priors)
    variance = prior.pixel_variance() if t_sampling == "lognormal" else 1.0
    model = getattr(score_net, "module", score_net)  # DistributedDataParallel wraps the ScoreModel
    t = training_times(world * batch, generator, t_sampling, variance, t_eps, getattr(model, "sigma_data", SIGMA_DATA))
    t = t[mine].to(device=x0.device, dtype=x0.dtype)
    eta = _draw_noise(prior, (world * batch, *x0.shape[1:]), noise_grid, generator, x0.device, x0.dtype)[mine]
    m, s, g = _per_image(mean_coef(t)), _per_image(noise_std(t)), _per_image(beta(t).sqrt())
    x_t = m * x0 + s * eta
    residual = score_net(x_t, t) * s / g + eta
    weight = model.loss_weight(t, x0.shape[-1]) if hasattr(model, "loss_weight") else torch.ones_like(t)
    return 0.5 * (weight * residual.pow(2).flatten(1).sum(1)).mean()


def _draw_noise(prior, shape, noise_grid, generator, device, dtype=torch.float32):
    """Prior noise for a grid of `shape`, drawn on the noise_grid and truncated if finer."""
    n = shape[-1]
    if noise_grid is None or noise_grid == n:
        return prior.sample(shape, generator, device, dtype)
    fine = prior.sample((*shape[:-2], noise_grid, noise_grid), generator, device, dtype)
    return truncate_noise(fine, n)


def tweedie_denoise(score_net, y, t):
    """E[X_0 | X_t = y] = (y + s^2 Q grad log p_t(y)) / m = (y + s^2 a(y, t) / g) / m (Tweedie)."""
    m, s, g = _per_image(mean_coef(t)), _per_image(noise_std(t)), _per_image(beta(t).sqrt())
    return (y + s**2 * score_net(y, t) / g) / m


@torch.inference_mode()
def euler_maruyama(score_net, prior, shape, num_steps=200, generator=None, device=None,
                   noise_grid=None, progress=None, clamp=True, tweedie=False):
    """Sample (B, C, n, n) by Euler-Maruyama on the reverse SDE (reference sampler).

    y_N = A z;  for tau = 1, 1 - D, .., D:  y <- y + D (g a(y, tau) + b(tau) y / 2) + sqrt(D) g A z'.
    tweedie: replace the last step (tau = D) by the denoiser E[X_0 | X_D = y], which
    removes the noise the last step would add; same number of score evaluations.
    noise_grid: draw every noise field on this finer grid and Fourier-truncate it to n
    (the 'resample' protocol; the truncated field has the law of noise drawn at n).
    progress: a tqdm bar to advance by one per step, or None.
    Clamped to [0, 1] at the end, as in the reference.
    """
    step = 1.0 / num_steps
    y = _draw_noise(prior, shape, noise_grid, generator, device)
    for i in range(num_steps - 1 if tweedie else num_steps):
        tau = torch.full((shape[0],), 1.0 - i * step, device=y.device)
        b = _per_image(beta(tau))
        drift = b.sqrt() * score_net(y, tau) + 0.5 * b * y
        noise = _draw_noise(prior, shape, noise_grid, generator, device)
        y = y + step * drift + math.sqrt(step) * b.sqrt() * noise
        if progress is not None:
            progress.update(1)
    if tweedie:
        y = tweedie_denoise(score_net, y, torch.full((shape[0],), step, device=y.device))
        if progress is not None:
            progress.update(1)
    return y.clamp(0, 1) if clamp else y


SIGMA_MIN, SIGMA_RHO = 0.002, 7.0  # EDM's choices (Karras et al. 2022)


def sigma_of_t(t):
    """sigma(t) = s(t) / m(t): the noise level of x~ = X_t / m(t) = X_0 + sigma A z."""
    return torch.sqrt(torch.expm1(t**2 * (B_MAX - B_MIN) / 2 + B_MIN * t))


def t_of_sigma(sigma):
    """Inverse of sigma_of_t: solve t^2 (b_max - b_min) / 2 + b_min t = log(1 + sigma^2)."""
    slope = B_MAX - B_MIN
    return (torch.sqrt(B_MIN**2 + 2 * slope * torch.log1p(sigma**2)) - B_MIN) / slope


def sigma_grid(num_steps, sigma_max, sigma_min=SIGMA_MIN, rho=SIGMA_RHO):
    """sigma_0 = sigma_max > .. > sigma_{N-1} = sigma_min, uniform in sigma^(1/rho), then sigma_N = 0."""
    one = num_steps == 1  # a grid of one step: sigma_max alone (linspace would need two points)
    fraction = torch.zeros(1, dtype=torch.float64) if one else torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inner = (sigma_max ** (1 / rho) + fraction * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([inner, torch.zeros(1, dtype=torch.float64)])


def denoise_at_sigma(score_net, x, sigma):
    """D(x~, sigma) = E[X_0 | X~ = x~] for x~ = y / m(t): Tweedie's denoiser at t = t(sigma), y = m(t) x~."""
    t = torch.full((x.shape[0],), t_of_sigma(torch.tensor(sigma, dtype=torch.float64)).item(), device=x.device)
    return tweedie_denoise(score_net, _per_image(mean_coef(t)) * x, t)


def _start_on_sigma_grid(name, prior, shape, num_steps, tweedie, noise_grid, generator, device):
    """Start of the sigma-grid samplers: x~ = y_1 / m(1) with y_1 = A z drawn as in `euler_maruyama`,
    the `sigma_grid` from sigma(1), and the number of steps to run (the last one, to sigma = 0, is
    taken only with the final denoiser)."""
    if num_steps < (1 if tweedie else 2):
        raise ValueError(f"{name} needs num_steps >= 1 with the final denoiser, >= 2 without")
    y = _draw_noise(prior, shape, noise_grid, generator, device)
    sigmas = sigma_grid(num_steps, sigma_of_t(torch.tensor(1.0, dtype=torch.float64)).item())
    return y / mean_coef(torch.tensor(1.0)).item(), sigmas, num_steps if tweedie else num_steps - 1


def _finish_on_sigma_grid(x, sigmas, tweedie, clamp):
    """Back from x~ to y; without the final denoiser the samplers stopped at sigma_min = sigmas[-2]."""
    if not tweedie:
        x = x * mean_coef(t_of_sigma(sigmas[-2])).item()
    return x.clamp(0, 1) if clamp else x


@torch.inference_mode()
def heun_ode(score_net, prior, shape, num_steps=25, generator=None, device=None, noise_grid=None,
             progress=None, clamp=True, tweedie=True):
    """Sample by Heun's method on the probability-flow ODE, in EDM's variables.

    With x~ = y / m(t) and sigma = s(t) / m(t), the flow dy/dt = -1/2 (b y + g a) becomes
    dx~/dsigma = (x~ - D(x~, sigma)) / sigma,  D = E[X_0 | X_t] (Tweedie, `tweedie_denoise`),
    which is exactly linear in sigma for a point mass. From y_1 = A z (sigma_0 = sigma(1)),
    Heun steps over `sigma_grid`; the last step, to sigma = 0, is Euler, i.e. x~ <- D: 2N - 1
    score evaluations. tweedie=False stops at sigma_min instead (2N - 2 evaluations).
    The only randomness is the starting noise, drawn as in `euler_maruyama`.
    """
    x, sigmas, steps_run = _start_on_sigma_grid("heun_ode", prior, shape, num_steps, tweedie, noise_grid,
                                                generator, device)
    for i in range(steps_run):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        slope = (x - denoise_at_sigma(score_net, x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        if sigma_next > 0:
            slope_next = (x_euler - denoise_at_sigma(score_net, x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        else:
            x = x_euler
        if progress is not None:
            progress.update(1)
    return _finish_on_sigma_grid(x, sigmas, tweedie, clamp)


@torch.inference_mode()
def ancestral(score_net, prior, shape, num_steps=50, generator=None, device=None, noise_grid=None,
              progress=None, clamp=True, tweedie=True, multistep=False):
    """Sample by ancestral (DDPM-type) steps of the reverse SDE on EDM's sigma grid.

    In x~ = y / m(t), sigma = s(t) / m(t) the forward process is X~_sigma = X_0 + sigma A z, a
    Brownian motion in sigma^2 with covariance Q; so given X~_sigma = x~ and X_0 = x_0,
    X~_sigma' (sigma' < sigma) is Gaussian (the Brownian bridge):
        mean x_0 + r (x~ - x_0),  covariance sigma'^2 (1 - r) Q,   r = sigma'^2 / sigma^2.
    Each step draws from it with x_0 replaced by Tweedie's D(x~, sigma): exact for a point
    mass at any step size, unlike Euler-Maruyama, whose step is a first-order expansion in t.
    Steps over `sigma_grid`; the last, to sigma = 0, returns D: N score evaluations.
    tweedie=False stops at sigma_min instead (N - 1 evaluations). Noise A z' drawn as in
    `euler_maruyama` (so the `resample` protocol applies unchanged).
    multistep: the second-order step of `dpm2m` (the same noise, the same evaluations).
    """
    x, sigmas, steps_run = _start_on_sigma_grid("dpm2m" if multistep else "ancestral", prior, shape, num_steps,
                                                tweedie, noise_grid, generator, device)
    previous = None  # (D, h) of the step before, for the multistep correction
    for i in range(steps_run):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        x0 = denoise_at_sigma(score_net, x, sigma)
        ratio = (sigma_next / sigma) ** 2
        x = x0 + ratio * (x - x0)
        if sigma_next > 0:
            x = x + sigma_next * math.sqrt(1 - ratio) * _draw_noise(prior, shape, noise_grid, generator, device)
            h = math.log(sigma / sigma_next)
            if multistep and previous is not None:
                x0_previous, h_previous = previous
                x = x + (1 - ratio) * h / (2 * h_previous) * (x0 - x0_previous)
            previous = (x0, h)
        if progress is not None:
            progress.update(1)
    return _finish_on_sigma_grid(x, sigmas, tweedie, clamp)


def dpm2m(score_net, prior, shape, num_steps=50, generator=None, device=None, noise_grid=None,
          progress=None, clamp=True, tweedie=True):
    """Sample by DPM-Solver++(2M) in its SDE form (Lu et al. 2022), on EDM's sigma grid.

    In lambda = -log sigma, the reverse SDE of x~ (the ancestral sampler's process) has the exact
    step from sigma to sigma' < sigma, h = lambda' - lambda = log(sigma / sigma'), r = e^{-2h}:
        x~' = r x~ + int_lambda^lambda' 2 e^{-2 (lambda' - u)} D(u) du + sigma' sqrt(1 - r) A z'.
    `ancestral` holds D at its value at lambda (integral (1 - r) D): first order in h. Here D is
    extended linearly in lambda through the previous step's denoiser,
    D(u) ~ D + (u - lambda) (D - D_prev) / h_prev, and taken at the step's midpoint (the midpoint
    rule for the integral; "midpoint" form of k-diffusion): the step adds
        (1 - r) (h / (2 h_prev)) (D - D_prev),
    second order in h, with the ancestral sampler's noise and its N score evaluations. (The exact
    integral of the linear extension, coefficient (h / h_prev) (1 - (1 - r) / (2 h)), overshot the
    variance of Gaussian data by 60-150% at 12-25 steps, the midpoint form by about 20%.) The
    first step (no D_prev) is the ancestral step; the last, to sigma = 0, returns D.
    """
    return ancestral(score_net, prior, shape, num_steps, generator, device, noise_grid, progress, clamp,
                     tweedie, multistep=True)


SAMPLERS = {"em": euler_maruyama, "heun": heun_ode, "ancestral": ancestral, "dpm2m": dpm2m}
# samplers that run on the sigma grid and, without the final denoiser, stop one step early
SIGMA_GRID_SAMPLERS = ("heun", "ancestral", "dpm2m")


def score_evaluations(sampler, num_steps, tweedie):
    """Number of score-network calls per sample (the cost measure of a sampler)."""
    if sampler == "em":
        return num_steps
    if sampler in ("ancestral", "dpm2m"):
        return num_steps if tweedie else num_steps - 1
    return 2 * num_steps - 1 if tweedie else 2 * num_steps - 2


# --sampler auto, per network: a sampler of at most 50 score evaluations, below Euler-Maruyama with
# 200 steps at n = 1000 on profile cpu's seed-0 checkpoints (results/samplers_cpu.md: UNet 0.0111 vs
# 0.0168, FNO 0.0107 vs 0.0239, CNO 0.0117 vs 0.0167), chosen on cpu-v1's (results/samplers_n1000.md). UNet:
# DPM-Solver++(2M) 25 steps 0.0116 / 0.0247 at 28 / 56 (50 steps: 0.0115 / 0.0264, equal within
# noise at twice the cost; ancestral 50 0.0201, EM 200 0.0157); CNO: Heun 13 0.0261 (dpm2m 25
# 0.0314, EM 200 0.0389); FNO: Heun 13 0.0414 (dpm2m 25 0.0447, EM 200 0.0506).
AUTO_SAMPLERS = {"unet": ("dpm2m", 25), "cno": ("heun", 13), "fno": ("heun", 13)}
DEFAULT_STEPS = 200  # a sampler named without its number of steps


def resolve_sampler(sampler, num_steps, model_name):
    """(sampler, steps) to run: 'auto' is the network's entry of AUTO_SAMPLERS; num_steps None
    leaves the steps to auto's choice, or DEFAULT_STEPS for a named sampler."""
    if sampler == "auto":
        sampler, steps = AUTO_SAMPLERS[model_name]
        return sampler, steps if num_steps is None else num_steps
    return sampler, DEFAULT_STEPS if num_steps is None else num_steps


def default_tweedie(sampler):
    """Whether a sampler ends with the denoiser unless told: the sigma-grid samplers do, EM (as the
    reference) does not."""
    return sampler in SIGMA_GRID_SAMPLERS


CPU_PIXELS_PER_BATCH = 64 * 28 * 28  # a batch this size of activations stays in cache
GPU_MAX_BATCH = 1000


def auto_batch_size(n, device):
    """Sampling batch for an n-grid: on a CPU a fixed pixel budget (per-image cost at 56 was
    2-2.5x lower with batch 16 than 256 for the small UNet), on a GPU as large as allowed."""
    if torch.device(device or "cpu").type == "cuda":
        return GPU_MAX_BATCH
    return max(1, CPU_PIXELS_PER_BATCH // (n * n))


def sampling_batch_size(batch_size, grid, device):
    """The batch `generate` samples with: `batch_size` (None: `auto_batch_size` of the grid the
    sampler runs on), on a CPU rounded up to a multiple of Blockwise.BLOCK."""
    batch_size = batch_size or auto_batch_size(grid, device)
    if torch.device(device or "cpu").type == "cpu":
        batch_size = Blockwise.BLOCK * math.ceil(batch_size / Blockwise.BLOCK)
    return batch_size


class Blockwise(nn.Module):
    """`net` evaluated on consecutive blocks of BLOCK samples (the last one padded with copies of
    its last sample), for sampling on a CPU.

    BLAS and oneDNN choose other kernels, with other rounding, for other numbers of rows (seen on
    this project's CPU: a batch of 1 in the convolutions, 5 or 9 in the FNO's spectral product,
    and row counts that do not fill a 1x1 convolution's tiles with one thread). `generate` makes
    every sampling batch a multiple of BLOCK, so a sample always meets the same block of
    neighbours and the same arithmetic: a call gives bitwise the same samples for any
    --batch_size (tested). Cost, measured on this project's 2-core CPU (1 thread, interleaved, under
    load; small profiles, 64 samples at 28): blocks of 16 take 0.68x (UNet), 0.86x (FNO) and 1.08x (CNO)
    the time of one call on 64.
    """

    BLOCK = 16

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, t):
        outputs = []
        for start in range(0, y.shape[0], self.BLOCK):
            y_block, t_block = y[start:start + self.BLOCK], t[start:start + self.BLOCK]
            count, extra = y_block.shape[0], self.BLOCK - y_block.shape[0]
            if extra:
                y_block = torch.cat([y_block, y_block[-1:].expand(extra, *y_block.shape[1:])])
                t_block = torch.cat([t_block, t_block[-1:].expand(extra)])
            outputs.append(self.net(y_block, t_block)[:count])
        return torch.cat(outputs)


class BandLimitedScore(nn.Module):
    """The score on a finer N-grid of a network trained at n0, built from its denoiser.

    D_N(y, t) = U_N D_n0(P_n0 y, t): P_n0 the Fourier truncation to the n0 grid, with the
    Nyquist pair folded at gain 1/sqrt(2) (`truncate_noise`), so the network sees noise of
    exactly the law it was trained on; D_n0 Tweedie's denoiser of `score_net` at n0; U_N the
    exact band-limited interpolation to N (`fourier_resample`). For any prior Q (Tweedie):
        a_N(y, t) = g Q grad log p_t(y) = g (m D_N(y, t) - y) / s^2.
    Data that carry nothing above the n0 band have a denoiser with nothing there either, so
    this drift removes the high band while the low band evolves exactly as at n0.
    On the n0 grid itself it is `score_net`.
    """

    def __init__(self, score_net, n0, nyquist_gain=1 / math.sqrt(2)):
        super().__init__()
        self.score_net, self.n0, self.nyquist_gain = score_net, int(n0), nyquist_gain

    def denoise(self, y, t):
        """D_N(y, t) = U_N D_n0(P_n0 y, t). nyquist_gain: the fold of P_n0 (1/sqrt(2), `truncate_noise`;
        1 is the plain band projection, kept to measure what the fold is for: bench/nyquist_fold.py)."""
        coarse = fourier_resample(y, self.n0, nyquist_gain=self.nyquist_gain)
        return fourier_resample(tweedie_denoise(self.score_net, coarse, t), tuple(y.shape[-2:]))

    def forward(self, y, t):
        if tuple(y.shape[-2:]) == (self.n0, self.n0):
            return self.score_net(y, t)
        m, s, g = _per_image(mean_coef(t)), _per_image(noise_std(t)), _per_image(beta(t).sqrt())
        return g * (m * self.denoise(y, t) - y) / s**2


# 'native-bl': the reverse SDE on the fine grid with the band-limited score above;
# 'resample': noise drawn on the fine grid, truncated to n0, the SDE at n0, the result interpolated up;
# 'native': the network run on the fine grid as it is (the ablation: it has never seen the
# modes above the n0 band, and what it answers there stays in the sample)
SAMPLE_MODES = ("native-bl", "resample", "native")


def ends_with_denoiser(tweedie, grid, n0):
    """On a grid finer than n0 every sampler ends with the denoiser: a last Euler-Maruyama step
    would leave fine-grid noise that the resample protocol does not have."""
    return bool(tweedie) or grid > n0


def generate(score_net, prior, num_samples, n0, upscale=1, mode="native", seed=0,
             batch_size=None, num_steps=200, device=None, interp="fourier", desc=None,
             show_progress=True, shard=(0, 1), sampler="em", tweedie=False, resolution=None):
    """num_samples images on the N-grid, N = resolution or upscale * n0 (any N >= n0), on `device`.

    mode (see SAMPLE_MODES): 'native-bl', 'resample' (with `interp`, 'fourier' or 'bicubic',
    then clamped) or 'native'; all three are the same at N = n0.
    sampler: 'em' (Euler-Maruyama on the reverse SDE), 'heun' (probability-flow ODE),
    'ancestral' (Gaussian bridge steps with the denoiser, on the sigma grid) or 'dpm2m' (those
    steps made second order);
    tweedie: finish with the denoiser E[X_0 | X_t] (see `euler_maruyama`, `heun_ode`); forced
    on when the sampler runs on a grid finer than n0 (`ends_with_denoiser`).
    Sample i draws its noise from its own generator, seeded by (seed, i) (`PerSampleGenerator`),
    so it is the same whatever the batch size, shard or device; on a CPU the network runs on
    blocks of 16 samples and the batch size is rounded up to a multiple of 16 (`Blockwise`), so
    samples are bitwise the same for any batch size. batch_size None:
    `auto_batch_size` of the grid the sampler runs on. Returns a CPU float32 tensor.
    shard=(rank, world): only the batches b with b % world == rank (their concatenation, in
    order); `interleave_shards` rebuilds the whole.
    """
    if mode not in SAMPLE_MODES:
        raise ValueError(f"unknown sample mode {mode!r}: expected one of {', '.join(SAMPLE_MODES)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {list(SAMPLERS)}")
    n = int(resolution or upscale * n0)
    if n < n0:
        raise ValueError(f"the output grid {n} is coarser than the training grid {n0}")
    grid = n0 if mode == "resample" else n
    tweedie = ends_with_denoiser(tweedie, grid, n0)
    net = BandLimitedScore(score_net, n0) if mode == "native-bl" else score_net
    batch_size = sampling_batch_size(batch_size, grid, device)
    if torch.device(device or "cpu").type == "cpu":
        net = Blockwise(net)
    was_training = score_net.training
    score_net.eval()
    rank, world = shard
    mine = range(rank, math.ceil(num_samples / batch_size), world)
    out = []
    steps_per_batch = num_steps - 1 if sampler in SIGMA_GRID_SAMPLERS and not tweedie else num_steps
    with progress_bar(total=len(mine) * steps_per_batch, desc=desc or f"sampling {mode} {n}x{n}",
              unit="step", disable=not show_progress, leave=False) as bar:
        for b in mine:
            first = b * batch_size
            size = min(batch_size, num_samples - first)
            noise = PerSampleGenerator(seed, first, size)
            y = SAMPLERS[sampler](net, prior, (size, 1, grid, grid), num_steps, noise, device,
                                  noise_grid=n, progress=bar, tweedie=tweedie)
            if grid != n:
                y = resample(y, n, interp).clamp(0, 1)
            out.append(y.float().cpu())
    score_net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1, n, n)


def interleave_shards(parts, batch_size):
    """Undo the sharding of `generate`: parts[r] holds batches r, r + W, ... of batch_size."""
    chunks = [list(part.split(batch_size)) for part in parts]
    ordered = []
    for i in range(max(len(c) for c in chunks)):
        ordered += [c[i] for c in chunks if i < len(c)]
    return torch.cat(ordered)
