"""The controllers by name (`build_controller`, `list_controllers`): PPO (search/ppo.py) and three
others over the same raw space [0,1]^D, all with the step interface that the search loop
(search/steps.py) drives: `propose()` a step's samples, `update(samples, rewards)`, `mean` (the
controller's current best guess, retrained in the confirmation round), `state_dict()`.

ppo     the Auto Seg-Loss policy-gradient controller (SPEC A§4, B4): the default.
random  samples from the initial PPO policy (identity-centred truncated normal) or uniformly;
        learns nothing: the baseline every controller must beat.
cmaes   Optuna's CmaEsSampler }  asked for a step's samples at once (Optuna's ask/tell
tpe     Optuna's TPESampler   }  interface) and told their rewards when the step is complete.
The first sample of every controller's first step is the identity curve, as in PPO.
"""

import pickle
from collections.abc import Callable

import torch

from search.ppo import PPOConfig, PPOController, truncnorm_sample
from search.space import raw_keys
from surrogates.checks import unknown_name

_CONTROLLERS: dict[str, Callable] = {}  # name -> builder(init_raw, cfg, seed, uniform)


class RandomController:
    def __init__(self, init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool = False):
        self.init_raw, self.cfg, self.uniform = list(init_raw), cfg, uniform
        self.generator = torch.Generator().manual_seed(seed)
        self.best: tuple[float, list[float]] = (-float("inf"), list(init_raw))

    @property
    def mean(self) -> list[float]:
        return self.best[1]  # the best sample so far

    def propose(self) -> list[list[float]]:
        shape = (self.cfg.samples - 1, len(self.init_raw))
        uniform = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        if not self.uniform:
            mu = torch.tensor(self.init_raw, dtype=torch.float64).expand(shape)
            uniform = truncnorm_sample(mu, self.cfg.sigma, uniform)
        return [list(self.init_raw), *uniform.tolist()]

    def update(self, samples: list[list[float]], rewards: list[float]) -> float:
        self.best = best_sample(self.best, samples, rewards)
        return 0.0

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.best = state["best"]


class OptunaController:
    """CMA-ES or TPE through Optuna's ask/tell interface, asked for whole steps."""

    def __init__(self, sampler: str, init_raw: list[float], cfg: PPOConfig, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler == "cmaes":  # starts at the centre of [0,1]^D (x0 is deprecated in Optuna 4.9)
            self.sampler = optuna.samplers.CmaEsSampler(seed=seed)
        else:
            self.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.samples)
        self.init_raw, self.cfg, self.step = list(init_raw), cfg, 0
        self.study = None  # made when the space arrives (set_space)
        self.space: dict = {}  # raw_d -> optuna distribution
        self.trials: list = []  # the open step's Optuna trials
        self.best: tuple[float, list[float]] = (-float("inf"), list(init_raw))

    def set_space(self, bounds: dict[str, tuple[float, float]]) -> None:
        """The raw space as {raw_d: (low, high)} (the Tuner's param_space); the identity is
        the first trial. Ignored once a study exists: a restored search keeps its own."""
        import optuna

        if self.study is not None:
            return
        self.space = {key: optuna.distributions.FloatDistribution(*bounds[key]) for key in bounds}
        self.study = optuna.create_study(
            sampler=self.sampler, pruner=optuna.pruners.NopPruner(), direction="maximize"
        )
        keys = raw_keys(len(self.init_raw))
        self.study.enqueue_trial(dict(zip(keys, self.init_raw, strict=True)))

    @property
    def mean(self) -> list[float]:
        return self.best[1]

    def propose(self) -> list[list[float]]:
        self.step += 1
        ask = self.study.ask
        self.trials = [ask(fixed_distributions=self.space) for _ in range(self.cfg.samples)]
        keys = raw_keys(len(self.init_raw))
        return [[trial.params[key] for key in keys] for trial in self.trials]

    def update(self, samples: list[list[float]], rewards: list[float]) -> float:
        for trial, reward in zip(self.trials, rewards, strict=True):
            self.study.tell(trial, reward)
        self.best = best_sample(self.best, samples, rewards)
        return 0.0

    def state_dict(self) -> dict:
        # one pickle, so that the restored open trials still belong to the restored study
        optuna_state = pickle.dumps((self.study, self.space, self.trials))
        return {"optuna": optuna_state, "step": self.step, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.study, self.space, self.trials = pickle.loads(state["optuna"])
        self.step, self.best = state["step"], state["best"]


def best_sample(best: tuple, samples: list[list[float]], rewards: list[float]) -> tuple:
    """(reward, sample) of the best so far after a step; ties keep the earlier one."""
    pairs = zip(rewards, samples, strict=True)
    return max(best, *pairs, key=lambda pair: pair[0])


def register_controller(fn: Callable) -> Callable:
    if fn.__name__ in _CONTROLLERS:
        raise ValueError(f"a controller is already registered under the name '{fn.__name__}'")
    _CONTROLLERS[fn.__name__] = fn
    return fn


def list_controllers() -> list[str]:
    return sorted(_CONTROLLERS)


def build_controller(
    name: str, init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool = False
):
    """The controller `name`, starting from `init_raw` (the identity curve); `uniform` is the
    random controller's option (search.random_uniform)."""
    if name not in _CONTROLLERS:
        raise unknown_name("controller", name, list_controllers())
    return _CONTROLLERS[name](init_raw, cfg, seed, uniform)


@register_controller
def ppo(init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool) -> PPOController:
    return PPOController(init_raw, cfg, seed)


@register_controller
def random(init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool) -> RandomController:
    return RandomController(init_raw, cfg, seed, uniform=uniform)


@register_controller
def cmaes(init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool) -> OptunaController:
    return OptunaController("cmaes", init_raw, cfg, seed)


@register_controller
def tpe(init_raw: list[float], cfg: PPOConfig, seed: int, uniform: bool) -> OptunaController:
    return OptunaController("tpe", init_raw, cfg, seed)
