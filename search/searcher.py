"""The Ray adapter, the one file of the project that imports Ray: the Tune `Searcher` that runs
the search loop of search/steps.py, its save/restore, the trainable around the proxy trial,
starting or joining Ray, trial resources, and the Tuner itself.

Tune asks `suggest(trial_id)` for a trial's config whenever it has a free slot; the searcher
hands out the open round's jobs (None = wait: the round's results are not all in) and, in
`on_trial_complete`, records the result and advances the loop when the round is complete.
trials.csv and policy.csv are rewritten atomically after every result; `save`/`restore` carry
the whole state, so `Tuner.restore` resumes exactly.
"""

import math
import os
import pickle
import signal
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.search import Searcher

from experiments.config import to_yaml
from results.files import write_json, write_text
from search import steps
from search.config import Config, target
from search.controllers import build_controller
from search.space import initial_raw, raw_keys, raw_of
from search.trial import run_trial
from segnets.engine import usable_cpus

# Tune's own tables would interleave with our progress lines; verbose=0 silences the old reporter
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


class StepSearcher(Searcher):
    """Maps Tune's trial ids to the jobs of the search loop (search/steps.py)."""

    def __init__(self, cfg: Config, run_dir: str | Path):
        super().__init__(metric="reward", mode="max")
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        search = cfg.search
        init = initial_raw(target(search), search.ce_mix)
        self.dims = len(init)
        uniform = search.random_uniform
        self.controller = build_controller(search.controller, init, cfg.ppo, search.seed, uniform)
        self.state = steps.SearchState()
        self.running: dict[str, dict] = {}  # trial_id -> job
        self.started = time.time()

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        """Tune hands over the Tuner's param_space (`raw_space`); the controllers that take a
        space (cmaes, tpe) get its bounds. Accepted for every controller."""
        if hasattr(self.controller, "set_space"):
            self.controller.set_space({key: (d.lower, d.upper) for key, d in config.items()})
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self.state.phase in ("done", "failed"):
            return Searcher.FINISHED
        if self.state.step == 0:  # not in __init__: the space arrives with set_search_properties
            steps.propose_step(self.state, self.controller, self.cfg)
        if not self.state.queue:
            return None  # wait for the results of the open round
        job = self.state.queue.pop(0)
        self.running[trial_id] = job
        # the raw vector under the param_space's keys: Tune fills the trial config with them
        config = {key: value for key, value in job.items() if key != "raw"}
        if job["resume"]:  # a continued rung: the state its previous trial left
            config["resume"] = str(state_file(self.run_dir, job["resume"]))
        if job["iterations"] < self.cfg.proxy.fit.iterations:  # a rung the next one continues
            config["save_to"] = str(state_file(self.run_dir, trial_id))
        return config | dict(zip(raw_keys(self.dims), job["raw"], strict=True))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.running.pop(trial_id, None)
        if job is None:  # a result Tune re-delivers after a restore, already recorded
            return
        result = dict(result or {})
        if error or "status" not in result:  # the machine's doing, as an out-of-memory error
            reason = f"the trial's worker died {RETRIES + 1} times (or Tune failed it)"
            result.update(status="machine", reason=reason)
        state = self.state
        try:
            if steps.record_result(state, trial_id, job, result, self.cfg.search):
                step = state.step
                steps.advance(state, self.controller, self.cfg, self.run_dir, self.started)
                if state.step != step:  # the step closed: its rungs' states are spent
                    self.drop_states(step)
                    if step == 1:
                        print(steps.cost_estimate(state, self.cfg), flush=True)
        except steps.SearchFailed as failure:
            state.phase = "failed"
            write_json(self.run_dir / "failed.json", {"error": str(failure)})
        steps.write_run_files(state, self.run_dir, self.cfg.search)
        elapsed = time.time() - self.started
        print(steps.progress_line(state, self.cfg, len(self.running), elapsed), flush=True)

    def drop_states(self, step: int) -> None:
        for record in self.state.records:
            if (record["phase"], record["step"]) == ("search", step):
                state_file(self.run_dir, record["trial_id"]).unlink(missing_ok=True)

    def save(self, checkpoint_path: str) -> None:
        state = {
            "state": self.state,
            "running": self.running,
            "controller": self.controller.state_dict(),
            "elapsed": time.time() - self.started,
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.controller.load_state_dict(saved["controller"])
        self.started = time.time() - saved["elapsed"]
        # trials Tune still had running are re-run under their trial ids: the same jobs
        self.state, self.running = saved["state"], saved["running"]
        # drops rows written after the state Tune saved; those trials run again
        steps.write_run_files(self.state, self.run_dir, self.cfg.search)


def state_file(run_dir: Path, trial_id: str) -> Path:
    """The training state a successive-halving trial leaves for the next rung: written once,
    straight into the trial's own folder (run_search's storage_path/name/trial_dirname), where
    the run's files are; no copy through the temp directory or Tune's checkpoints. (A cluster
    needs the run folder on storage every node sees, as Tune's own storage_path does.)"""
    return run_dir / "tune" / f"trial_{trial_id}" / "rung_state.pth"


def raw_space(dims: int) -> dict:
    """The search space as the Tuner's param_space: D raw coordinates in [0, 1] (SPEC B4)."""
    return {key: tune.uniform(0.0, 1.0) for key in raw_keys(dims)}


def proxy_trial(config: dict, cfg: Config) -> None:
    """Ray Tune function trainable. `config` is what the searcher suggested: raw_0 ... raw_{D-1},
    seed, fault (and which phase, step and sample the trial belongs to), for a halving rung
    the state to resume from and the state to save."""
    # the CPUs Ray gave this trial, not the OMP_NUM_THREADS a user exported: threads, and on a
    # GPU the loader workers (segnets.engine.loader_workers)
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    if config.get("fault") == "kill":  # tests: the worker dies on the first attempt only
        attempted = Path(tempfile.gettempdir()) / f"sls-killed-{tune.get_context().get_trial_id()}"
        if not attempted.exists():
            attempted.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    loss, stop = config.get("loss", "surrogate"), config["iterations"]
    resume_from, save_to = config["resume"] or None, config.get("save_to") or None
    fidelity = config.get("fidelity", "proxy")
    args = (config["seed"], config.get("fault", ""), loss, stop, resume_from, save_to, fidelity)
    result = run_trial(cfg, raw_of(config), *args)
    result["node"] = ray.get_runtime_context().get_node_id()[:12]
    result["gpu_share"] = assigned.get("GPU", 0.0)  # for the GPU-hours of the estimate and summary
    result["reward"] = result.get(cfg.search.metric, math.nan)  # Tune's metric; NaN: failed
    tune.report(result)


# every trial process finds the loss kernels compiled in inductor's on-disk cache (search/run.py):
# inductor's pool of compile workers (one per core by default, in every trial) would only idle
TRIAL_ENV = {"env_vars": {"TORCHINDUCTOR_COMPILE_THREADS": "1"}}


def start_ray(cfg: Config, num_gpus: int) -> None:
    """Join the cluster at ray.address, or start a local Ray (one CPU per trial without GPUs:
    search.cpu_slots, set by search/run.py) with the dashboard."""
    if cfg.ray.address:
        ray.init(
            address=cfg.ray.address,
            runtime_env=TRIAL_ENV,
            logging_level="WARNING",
            log_to_driver=False,
        )
        print(f"[search] joined the Ray cluster at {cfg.ray.address}: {ray.cluster_resources()}")
        return
    context = ray.init(
        num_cpus=(cfg.search.cpu_slots if not num_gpus else 0) or usable_cpus(),
        num_gpus=num_gpus,
        runtime_env=TRIAL_ENV,
        include_dashboard=cfg.ray.dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=cfg.ray.dashboard_port,
        logging_level="WARNING",
        log_to_driver=False,
    )
    if cfg.ray.dashboard and context.dashboard_url:
        print(f"[search] Ray dashboard: http://{context.dashboard_url}")


def trial_resources(cfg: Config, num_gpus: int, available: dict) -> tuple[dict, int]:
    """(resources of one trial, how many trials run at once), from what Ray has
    (`ray.cluster_resources()`). On GPUs each trial gets an equal share of the cores, for its
    loader workers (segnets.engine.loader_workers) and its own threads."""
    gpus = num_gpus or int(available.get("GPU", 0))
    if gpus:
        per_gpu = cfg.search.models_per_gpu
        concurrent = gpus * per_gpu
        cpus = max(1, int(available.get("CPU", 1)) // concurrent)
        print(f"[search] {gpus} GPU(s), {per_gpu} proxy models per GPU, {cpus} CPU(s) each")
        return {"cpu": cpus, "gpu": 1 / per_gpu}, concurrent
    slots = max(1, int(available.get("CPU", 1)))
    print(f"[search] no GPU: trials run on CPU, one thread each, {slots} at a time")
    return {"cpu": 1}, slots


RETRIES = 2  # attempts after a trial's worker died, before it counts as failed


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def run_search(
    cfg: Config, num_gpus: int, run_dir: Path, resume: bool, before_trials=lambda: None
) -> None:
    """Start (or join) Ray and run the Tuner until the searcher says FINISHED or Ctrl-C;
    `before_trials()` returns when the trials may start (the kernels compiled meanwhile)."""
    start_ray(cfg, num_gpus)
    resources, concurrent = trial_resources(cfg, num_gpus, ray.cluster_resources())
    # a confirmation trial on the retrain's network (search.confirm_fidelity > 0) has a GPU alone
    shared_gpu = "gpu" in resources
    whole = {"cpu": resources["cpu"] * cfg.search.models_per_gpu, "gpu": 1} if shared_gpu else {}

    def resources_of(config: dict) -> tune.PlacementGroupFactory:
        wanted = whole if whole and config.get("fidelity") == "confirm" else resources
        return tune.PlacementGroupFactory([{key.upper(): n for key, n in wanted.items()}])

    if not cfg.search.rungs:  # auto: decided here, where the slots are known, and kept
        cfg.search.rungs = steps.halving_rungs(cfg, concurrent)
        write_text(run_dir / "config.yaml", to_yaml(cfg))  # what --resume reads
    halving = "on" if cfg.search.rungs > 1 else "off"
    print(
        f"[search] successive halving {halving} (search.rungs={cfg.search.rungs}): "
        f"{cfg.ppo.samples} samples per step, {concurrent} at once"
    )
    print(f"[search] training: {steps.planned_training(cfg)}", flush=True)
    trainable = tune.with_resources(tune.with_parameters(proxy_trial, cfg=cfg), resources_of)
    if resume:
        tuner = tune.Tuner.restore(str(run_dir / "tune"), trainable, resume_errored=True)
    else:
        searcher = StepSearcher(cfg, run_dir)
        tuner = tune.Tuner(
            trainable,
            param_space=raw_space(searcher.dims),  # given to the searcher by Tune
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=-1,
                # also lets Tune start that many trials at once (a custom searcher gets 1)
                max_concurrent_trials=concurrent,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(run_dir),
                verbose=0,
                # a dead worker (the OOM killer, a lost node) says nothing about the loss: Tune
                # runs the trial again; a trial's own failures are results, never retried
                failure_config=tune.FailureConfig(max_failures=RETRIES),
            ),
        )
    before_trials()
    tuner.fit()
