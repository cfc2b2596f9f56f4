"""The PPO controller of Auto Seg-Loss (SPEC A§4, B4), read top to bottom: the policy, sampling,
the clipped update. It knows nothing of Ray; `search/searcher.py` hands its samples out as trials.

Policy: a factorised truncated normal on the raw search space [0,1]^D (surrogates.curves turns raw
values into monotone control points). The mean mu = sigmoid(mu_x) is learned, sigma is fixed.
Every step draws `samples` vectors; the first is the mean itself, whose reward is the baseline:
advantage A_i = R_i - R_0, no normalisation. The update is `epochs` full-batch Adam steps on mu_x
of the per-coordinate clipped PPO objective; Adam's state persists across steps.
"""

import copy
import math
from dataclasses import dataclass

import torch

_SQRT2 = math.sqrt(2.0)


@dataclass
class PPOConfig:
    steps: int = 12  # policy updates (reference: sample_times)
    samples: int = 32  # samples per step, the first is the mean (reference: 8 GPUs x 4 models)
    sigma: float = 0.2  # fixed standard deviation of every coordinate
    lr: float = 0.2  # Adam learning rate on mu_x (reference: mu_lr)
    epochs: int = 60  # Adam steps per update (reference: update_per_sample)
    clip: float = 0.2  # PPO clip epsilon
    # a trust region: an update whose approximate KL divergence from the step's policy exceeds
    # this is shrunk back to it (ppo_update); None: no bound, the reference
    target_kl: float | None = 1.0


# --- the policy: a truncated normal on [0, 1] per coordinate ----------------------------------


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / _SQRT2))


def truncnorm_sample(mu: torch.Tensor, sigma: float, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of N(mu, sigma) truncated to [0, 1]; uniform ~ U(0,1), same shape."""
    low, high = _normal_cdf(-mu / sigma), _normal_cdf((1 - mu) / sigma)
    q = low + uniform * (high - low)
    x = mu + sigma * _SQRT2 * torch.erfinv((2 * q - 1).clamp(-1 + 1e-12, 1 - 1e-12))
    return x.clamp(0.0, 1.0)


def truncnorm_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-coordinate log density; differentiable in mu through the density and the normaliser."""
    z = (x - mu) / sigma
    mass = _normal_cdf((1 - mu) / sigma) - _normal_cdf(-mu / sigma)
    log_density = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - math.log(sigma) - torch.log(mass)
    inside = (x >= 0) & (x <= 1)
    return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))


# --- the update ---------------------------------------------------------------------------------


def ppo_update(
    mu_x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    samples: torch.Tensor,
    rewards: torch.Tensor,
    sigma: float,
    clip: float,
    epochs: int,
    target_kl: float | None = None,
) -> float:
    """One PPO update of mu_x from a step's (samples, rewards); samples[0] is the old mean.

    The ratio is taken per coordinate, r_id = exp(l_id(mu) - l_id(mu_old)), and the loss is
    -sum_d mean_i min(r_id A_i, clip(r_id, 1 - eps, 1 + eps) A_i) (A§4). Returns the last loss.

    Why target_kl: Adam normalises the gradient, so every epoch moves mu_x by about lr whatever
    the size of the advantages, and the per-coordinate clipping does not stop the mean from
    running away when every advantage is negative (the mean was the step's best): measured on
    shapes, such steps moved the mean up to 0.7 in raw units (3.5 sigma; approximate KL 16-26)
    and the next step's mean scored far below every earlier one, while steps with some positive
    advantages stayed near KL 0.4-1.4. A step whose approximate KL(old || new) exceeds target_kl
    is shrunk along its direction back to target_kl (a backtracking line search into the trust
    region, as TRPO's); stopping the epochs early instead would not do: Adam overshoots and comes
    back, so the KL along the way is higher than at the end of an ordinary step."""
    advantages = (rewards - rewards[0]).unsqueeze(1)  # (S, 1): the mean's reward is the baseline
    with torch.no_grad():
        old_log_prob = truncnorm_log_prob(samples, torch.sigmoid(mu_x), sigma)
        old_mu_x = mu_x.detach().clone()
    for _ in range(epochs):
        log_prob = truncnorm_log_prob(samples, torch.sigmoid(mu_x), sigma)
        ratio = torch.exp(log_prob - old_log_prob)
        clipped = ratio.clamp(1 - clip, 1 + clip)
        loss = -torch.minimum(ratio * advantages, clipped * advantages).mean(0).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if target_kl is not None:
        with torch.no_grad():
            _back_into_trust_region(mu_x, old_mu_x, samples, old_log_prob, sigma, target_kl)
    return loss.item()


def approximate_kl(samples: torch.Tensor, old_log_prob: torch.Tensor, log_prob: torch.Tensor):
    """KL(old || new) estimated on samples of the old policy: mean((R - 1) - log R), R the joint
    density ratio new / old (Schulman's k3 estimator: unbiased, never negative)."""
    log_ratio = (log_prob - old_log_prob).sum(1)
    return (torch.expm1(log_ratio) - log_ratio).mean()


def _back_into_trust_region(mu_x, old_mu_x, samples, old_log_prob, sigma, target_kl) -> None:
    """Shrink the step old_mu_x -> mu_x along its direction (bisection) until its approximate
    KL is at most target_kl; a step already inside is left as it is."""
    step = mu_x - old_mu_x

    def kl(fraction: float) -> float:
        mu = torch.sigmoid(old_mu_x + fraction * step)
        return approximate_kl(samples, old_log_prob, truncnorm_log_prob(samples, mu, sigma))

    if kl(1.0) <= target_kl:
        return
    inside, outside = 0.0, 1.0
    for _ in range(30):
        middle = (inside + outside) / 2
        inside, outside = (middle, outside) if kl(middle) <= target_kl else (inside, middle)
    mu_x.copy_(old_mu_x + inside * step)


# --- the controller: state between steps ----------------------------------------------------


class PPOController:
    """Holds mu_x, Adam's state and the sampling RNG; `propose` a step, then `update` with its
    rewards. `state_dict`/`load_state_dict` make an interrupted search continue identically."""

    def __init__(self, init_raw: list[float], cfg: PPOConfig, seed: int = 0):
        if cfg.samples < 2 or cfg.steps < 1 or cfg.sigma <= 0 or cfg.epochs < 1:
            raise ValueError(f"PPO needs samples >= 2, steps >= 1, sigma > 0, epochs >= 1: {cfg}")
        self.cfg = cfg
        mean = torch.tensor(init_raw, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        self.mu_x = torch.logit(mean).requires_grad_()
        self.optimizer = torch.optim.Adam([self.mu_x], lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def mean(self) -> list[float]:
        return torch.sigmoid(self.mu_x).tolist()

    def propose(self) -> list[list[float]]:
        """The samples of the next step: the mean, then samples - 1 draws from the policy."""
        mu = torch.sigmoid(self.mu_x.detach())
        uniform = torch.rand(
            self.cfg.samples - 1, mu.numel(), generator=self.generator, dtype=torch.float64
        )
        draws = truncnorm_sample(mu.expand_as(uniform), self.cfg.sigma, uniform)
        return [mu.tolist(), *draws.tolist()]

    def update(self, samples: list[list[float]], rewards: list[float]) -> float:
        return ppo_update(
            self.mu_x,
            self.optimizer,
            torch.tensor(samples, dtype=torch.float64),
            torch.tensor(rewards, dtype=torch.float64),
            self.cfg.sigma,
            self.cfg.clip,
            self.cfg.epochs,
            self.cfg.target_kl,
        )

    def state_dict(self) -> dict:
        return {
            "mu_x": self.mu_x.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # not the live tensors
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.mu_x.copy_(state["mu_x"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
