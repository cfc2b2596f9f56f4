"""Controllers other than PPO over the same raw space [0,1]^D, with the same step interface that
`StepSearcher` drives: `propose()` a step's samples, `update(samples, rewards)`, `mean` (the
controller's current best guess, retrained in the confirmation round), `state_dict()`.

random  samples from the initial PPO policy (identity-centred truncated normal) or uniformly;
        learns nothing: the baseline every controller must beat.
cmaes   Optuna's CmaEsSampler }  through Ray Tune's OptunaSearch, asked for a step's samples at
tpe     Optuna's TPESampler   }  once and told their rewards when the step is complete.
The first sample of every controller's first step is the identity curve, as in PPO.
"""

import tempfile
from pathlib import Path

import torch

from search.ppo import PPOConfig, PPOController, truncnorm_sample

CONTROLLERS = ("ppo", "random", "cmaes", "tpe")


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
    """CMA-ES or TPE through Ray Tune's OptunaSearch, asked for whole steps."""

    def __init__(self, sampler: str, init_raw: list[float], cfg: PPOConfig, seed: int):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if sampler == "cmaes":  # starts at the centre of [0,1]^D (x0 is deprecated in Optuna 4.9)
            optuna_sampler = optuna.samplers.CmaEsSampler(seed=seed)
        else:
            optuna_sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.samples)
        self.dims, self.cfg, self.step = len(init_raw), cfg, 0
        self.searcher = OptunaSearch(  # its space comes later: the Tuner's param_space
            metric="reward",
            mode="max",
            sampler=optuna_sampler,
            points_to_evaluate=[{f"raw_{d}": v for d, v in enumerate(init_raw)}],
        )
        self.best: tuple[float, list[float]] = (-float("inf"), list(init_raw))

    def set_space(self, space: dict) -> None:
        """The Tuner's param_space, converted by OptunaSearch (a restored one keeps its own)."""
        self.searcher.set_search_properties(None, None, space)

    @property
    def mean(self) -> list[float]:
        return self.best[1]

    def _ids(self) -> list[str]:
        return [f"step{self.step}-{i}" for i in range(self.cfg.samples)]

    def propose(self) -> list[list[float]]:
        self.step += 1
        configs = [self.searcher.suggest(trial_id) for trial_id in self._ids()]
        return [[config[f"raw_{d}"] for d in range(self.dims)] for config in configs]

    def update(self, samples: list[list[float]], rewards: list[float]) -> float:
        for trial_id, reward in zip(self._ids(), rewards, strict=True):
            self.searcher.on_trial_complete(trial_id, {"reward": reward})
        self.best = best_sample(self.best, samples, rewards)
        return 0.0

    def state_dict(self) -> dict:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "optuna.pkl"
            self.searcher.save(str(path))
            return {"searcher": path.read_bytes(), "step": self.step, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "optuna.pkl"
            path.write_bytes(state["searcher"])
            self.searcher.restore(str(path))
        self.step, self.best = state["step"], state["best"]


def best_sample(best: tuple, samples: list[list[float]], rewards: list[float]) -> tuple:
    """(reward, sample) of the best so far after a step; ties keep the earlier one."""
    pairs = zip(rewards, samples, strict=True)
    return max(best, *pairs, key=lambda pair: pair[0])


def build_controller(name: str, init_raw: list[float], cfg: PPOConfig, seed: int, **options):
    if name == "ppo":
        return PPOController(init_raw, cfg, seed)
    if name == "random":
        return RandomController(init_raw, cfg, seed, uniform=options.get("uniform", False))
    if name in ("cmaes", "tpe"):
        return OptunaController(name, init_raw, cfg, seed)
    raise ValueError(f"unknown controller '{name}'; valid: {', '.join(CONTROLLERS)}")
