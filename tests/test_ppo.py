"""The PPO controller: truncated normal against scipy, the mean-first step, the clipped update,
and save/restore."""

import math

import pytest
import torch
from scipy import stats

from search.ppo import PPOConfig, PPOController, ppo_update, truncnorm_log_prob, truncnorm_sample


@pytest.mark.parametrize("mu", [0.05, 0.3, 0.5, 0.97])
def test_truncnorm_sample_has_scipy_quantiles(mu):
    sigma = 0.2
    uniform = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    ours = truncnorm_sample(torch.full_like(uniform, mu), sigma, uniform)
    a, b = (0 - mu) / sigma, (1 - mu) / sigma
    expected = stats.truncnorm.ppf(uniform.numpy(), a, b, loc=mu, scale=sigma)
    assert torch.allclose(ours, torch.from_numpy(expected), atol=1e-9)
    assert ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("mu", [0.05, 0.3, 0.5, 0.97])
def test_truncnorm_log_prob_matches_scipy(mu):
    sigma = 0.2
    x = torch.linspace(0, 1, 41, dtype=torch.float64)
    ours = truncnorm_log_prob(x, torch.full_like(x, mu), sigma)
    a, b = (0 - mu) / sigma, (1 - mu) / sigma
    expected = stats.truncnorm.logpdf(x.numpy(), a, b, loc=mu, scale=sigma)
    assert torch.allclose(ours, torch.from_numpy(expected), atol=1e-9)
    outside = truncnorm_log_prob(torch.tensor([-0.1, 1.1]), torch.tensor([mu, mu]), sigma)
    assert torch.isinf(outside).all() and (outside < 0).all()


def test_samples_follow_the_policy_and_the_first_is_the_mean():
    init = [0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5]
    controller = PPOController(init, PPOConfig(samples=4000), seed=1)
    samples = torch.tensor(controller.propose(), dtype=torch.float64)
    assert samples.shape == (4000, 6)
    assert torch.allclose(samples[0], torch.tensor(init, dtype=torch.float64))
    # the draws are the truncated normal: Kolmogorov-Smirnov against scipy per coordinate
    for d, mu in enumerate(init):
        a, b = -mu / 0.2, (1 - mu) / 0.2
        test = stats.kstest(samples[1:, d].numpy(), stats.truncnorm(a, b, loc=mu, scale=0.2).cdf)
        assert test.pvalue > 1e-3, (d, test)


def test_update_moves_the_mean_toward_better_samples():
    # toy reward: closeness to a target point; the mean starts at the identity
    target = torch.tensor([0.8, 0.1, 0.6], dtype=torch.float64)
    controller = PPOController([0.5, 0.5, 0.5], PPOConfig(samples=16, epochs=20, lr=0.05), seed=0)
    start = torch.tensor(controller.mean).sub(target).norm()
    for _ in range(8):
        samples = controller.propose()
        rewards = [-float(torch.tensor(s).sub(target).norm()) for s in samples]
        controller.update(samples, rewards)
    assert torch.tensor(controller.mean).sub(target).norm() < 0.5 * start


def _ratio_after(clip: float) -> float:
    """One coordinate, the mean at 0.5 and one better sample at 0.7; plain SGD (no momentum
    overshoot) for many epochs: the probability ratio of the good sample after the update."""
    mu_x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    samples = torch.tensor([[0.5], [0.7]], dtype=torch.float64)
    old = truncnorm_log_prob(samples[1], torch.sigmoid(mu_x.detach()), 0.2)
    optimizer = torch.optim.SGD([mu_x], lr=0.05)
    ppo_update(mu_x, optimizer, samples, torch.tensor([0.0, 1.0]), 0.2, clip, epochs=400)
    new = truncnorm_log_prob(samples[1], torch.sigmoid(mu_x.detach()), 0.2)
    return math.exp(float(new - old))


def test_update_respects_the_clip():
    # the gradient vanishes once the good sample's ratio passes 1 + eps: it stops just past 1.2
    clipped = _ratio_after(0.2)
    assert 1.2 <= clipped < 1.25
    assert _ratio_after(1e9) > 1.5  # without the clip the same update goes much further


def test_target_kl_shrinks_a_runaway_step_and_leaves_a_small_one_alone():
    """The mean was the step's best: every advantage is negative, and 60 Adam epochs push the
    mean far from all samples. With target_kl the step ends on the trust region's edge, in the
    same direction; an ordinary step inside it is exactly the reference's."""
    from search.ppo import approximate_kl

    mean = [0.5] * 6
    generator = torch.Generator().manual_seed(1)
    draws = truncnorm_sample(
        torch.full((7, 6), 0.5, dtype=torch.float64), 0.2,
        torch.rand(7, 6, generator=generator, dtype=torch.float64),
    )  # fmt: skip
    samples = torch.cat([torch.tensor([mean], dtype=torch.float64), draws])
    worse = torch.tensor([0.0, -0.02, -0.05, -0.01, -0.03, -0.04, -0.02, -0.06])

    def update(target_kl, rewards):
        mu_x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([mu_x], lr=0.2)
        ppo_update(mu_x, optimizer, samples, rewards, 0.2, 0.2, 60, target_kl)
        old = truncnorm_log_prob(samples, torch.full((6,), 0.5, dtype=torch.float64), 0.2)
        new = truncnorm_log_prob(samples, torch.sigmoid(mu_x.detach()), 0.2)
        return mu_x.detach(), float(approximate_kl(samples, old, new))

    free, free_kl = update(None, worse)
    bounded, bounded_kl = update(1.0, worse)
    assert free_kl > 2 and bounded_kl == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(bounded / bounded.norm(), free / free.norm())  # same direction
    assert bounded.norm() < free.norm()
    better = torch.tensor([0.0, 0.002, -0.001, 0.001, 0.0, -0.002, 0.001, 0.0])
    small, small_kl = update(None, better)
    assert small_kl < 1.0 and torch.equal(update(1.0, better)[0], small)


def test_mean_sample_has_zero_advantage_and_equal_rewards_do_not_move_the_mean():
    controller = PPOController([0.3, 0.6], PPOConfig(samples=5), seed=0)
    samples = controller.propose()
    before = controller.mean
    controller.update(samples, [0.4] * 5)
    assert controller.mean == pytest.approx(before, abs=1e-12)


def test_save_then_restore_gives_identical_next_samples():
    cfg = PPOConfig(samples=6, epochs=5)
    first = PPOController([0.25, 0.5, 0.75], cfg, seed=3)
    samples = first.propose()
    first.update(samples, [0.1, 0.3, 0.2, 0.5, 0.0, 0.4])
    state = first.state_dict()
    second = PPOController([0.5, 0.5, 0.5], cfg, seed=99)
    second.load_state_dict(state)
    assert second.propose() == first.propose()
    more = first.propose(), second.propose()
    assert more[0] == more[1]
    # the Adam state came along too: the next updates agree
    rewards = [0.2, 0.1, 0.4, 0.3, 0.5, 0.0]
    first.update(more[0], rewards)
    second.update(more[1], rewards)
    assert first.mean == second.mean


def test_bad_controller_settings_are_rejected():
    with pytest.raises(ValueError, match="samples >= 2"):
        PPOController([0.5], PPOConfig(samples=1))
