"""The Ray Tune `Searcher` that runs a step controller (ppo, random, cmaes, tpe) as a search, and
the run-folder files.

Phases: `steps` search steps (the controller proposes a step's samples, they are handed out as
trials, the policy updates when the last result of the step is in), then the confirmation round
(SPEC B4: the final mean, the top-k samples and the identity curve, each with new seeds), then
the export of `<metric>_bezier.yaml`. trials.csv and policy.csv are rewritten atomically after
every result; `save`/`restore` carry the whole state, so `Tuner.restore` resumes exactly.
"""

import csv
import io
import json
import math
import os
import pickle
import statistics
import time
from pathlib import Path

import yaml
from ray import tune
from ray.tune.search import Searcher

from search.config import Config
from search.controllers import build_controller
from surrogates import METRICS, identity_raw, raw_to_control
from surrogates.curves import DEFAULT_PIECES, METRIC_CURVES

METRIC_COLUMNS = (*METRICS, "mdice", "miou_image", "bf1_image")


class SearchFailed(RuntimeError):
    """Every trial of a step failed: updating the policy on failure rewards would be garbage.
    Tune only logs what a searcher raises, so the searcher stops (suggest returns FINISHED) and
    leaves the message in failed.json for the search command."""


def initial_raw(metric: str) -> list[float]:
    """The identity curve in raw coordinates, once per curve of the metric (A§3.5)."""
    return identity_raw(DEFAULT_PIECES[metric]) * METRIC_CURVES[metric]


def parse_faults(text: str) -> dict[tuple[int, int], str]:
    """ "1:2=raise,2:0=nan" -> {(1, 2): "raise", (2, 0): "nan"} (tests only)."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        where, _, kind = item.partition("=")
        step, _, sample = where.partition(":")
        if kind not in ("raise", "nan") or not step.isdigit() or not sample.isdigit():
            raise ValueError(f"bad search.faults entry '{item}'; expected STEP:SAMPLE=raise|nan")
        faults[(int(step), int(sample))] = kind
    return faults


def raw_space(dims: int) -> dict:
    """The search space as the Tuner's param_space: D raw coordinates in [0, 1] (SPEC B4)."""
    return {f"raw_{d}": tune.uniform(0.0, 1.0) for d in range(dims)}


def trial_raw(config: dict) -> list[float]:
    """The raw vector of a trial config (its raw_0 ... raw_{D-1} entries)."""
    return [config[f"raw_{d}"] for d in range(sum(key.startswith("raw_") for key in config))]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StepSearcher(Searcher):
    def __init__(self, cfg: Config, run_dir: str | Path):
        super().__init__(metric="reward", mode="max")
        self.cfg = cfg
        self.run_dir = str(Path(run_dir).resolve())
        self.dims = len(initial_raw(cfg.search.metric))
        self.controller = build_controller(
            cfg.search.controller,
            initial_raw(cfg.search.metric),
            cfg.ppo,
            cfg.search.seed,
            uniform=cfg.search.random_uniform,
        )
        self.faults = parse_faults(cfg.search.faults)
        self.step = 0  # the step being run (1-based); 0 before the first
        self.phase = "search"  # search -> confirm -> done (or failed)
        self.queue: list[dict] = []  # jobs of the open step or round not handed out yet
        self.open_jobs = 0  # jobs of the open step or round without a result
        self.running: dict[str, dict] = {}  # trial_id -> job
        self.records: list[dict] = []  # one per finished trial
        self.policy_rows: list[dict] = []
        self.started = time.time()

    # --- Tune's interface ---------------------------------------------------------------------

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        """Tune hands over the Tuner's param_space (`raw_space`); the controllers that sample
        through Ray Tune (cmaes, tpe) take their space from it. Accepted for every controller."""
        if hasattr(self.controller, "set_space"):
            self.controller.set_space(config)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self.phase in ("done", "failed"):
            return Searcher.FINISHED
        if self.step == 0:
            self._open_step()  # not in __init__: the space arrives with set_search_properties
        if not self.queue:
            return None  # wait for the results of the open step
        job = self.queue.pop(0)
        self.running[trial_id] = job
        # the raw vector as the param_space's keys: Tune fills the trial config with them
        config = {key: value for key, value in job.items() if key != "raw"}
        return config | {f"raw_{d}": value for d, value in enumerate(job["raw"])}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.running.pop(trial_id, None)
        if job is None:  # a result Tune re-delivers after a restore, already recorded
            return
        result = dict(result or {})
        if error or "status" not in result:
            result.update(status="failed", reason="the trial process died or raised")
        self.records.append(_record(trial_id, job, result, self.cfg.search.metric))
        self.open_jobs -= 1
        try:
            if self.open_jobs == 0:
                self._close_step() if self.phase == "search" else self._finish()
        except SearchFailed as error:
            self.phase = "failed"
            write_atomic(Path(self.run_dir) / "failed.json", json.dumps({"error": str(error)}))
        self._write_files()
        self._print_progress()

    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k not in ("controller", "started")}
        state["controller"] = self.controller.state_dict()
        state["elapsed"] = time.time() - self.started
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.controller.load_state_dict(state.pop("controller"))
        self.started = time.time() - state.pop("elapsed")
        # trials Tune still had running are re-run under their trial ids: the same jobs
        self.__dict__.update(state)
        self._write_files()  # drops rows written after the state Tune saved; they re-run

    # --- steps --------------------------------------------------------------------------------

    def _open_step(self) -> None:
        self.step += 1
        seed = self.cfg.search.seed
        self.queue = [
            {
                "phase": "search",
                "step": self.step,
                "sample": i,
                "raw": raw,
                "seed": seed,
                "fault": self.faults.get((self.step, i), ""),
            }
            for i, raw in enumerate(self.controller.propose())
        ]
        self.open_jobs = len(self.queue)

    def _close_step(self) -> None:
        rows = sorted(
            (r for r in self.records if r["phase"] == "search" and r["step"] == self.step),
            key=lambda r: r["sample"],
        )
        ok = [r["reward"] for r in rows if r["status"] == "ok"]
        if not ok:
            reasons = sorted({r["reason"] for r in rows})
            raise SearchFailed(
                f"every trial of step {self.step} failed ({'; '.join(reasons)}); "
                "the policy was not updated"
            )
        fallback = self.cfg.search.failure_reward
        fallback = min(ok) if fallback is None else fallback
        for r in rows:
            r["reward_used"] = r["reward"] if r["status"] == "ok" else fallback
        rewards = [r["reward_used"] for r in rows]
        loss = self.controller.update([r["raw"] for r in rows], rewards)
        best = max(r["reward"] for r in self.records if r["status"] == "ok")
        row = {
            "step": self.step,
            "reward_mean": statistics.fmean(ok),
            "reward_std": statistics.pstdev(ok),
            "reward_min": min(ok),
            "reward_max": max(ok),
            "reward_of_mean": rows[0]["reward_used"],
            "best_so_far": best,
            "failed": len(rows) - len(ok),
            "ppo_loss": loss,
            "sigma": self.cfg.ppo.sigma,
        }
        mean = self.controller.mean
        row.update({f"mu_{d}": v for d, v in enumerate(mean)})
        theta = raw_to_control(mean, METRIC_CURVES[self.cfg.search.metric])
        row.update({f"theta_{d}": v for d, v in enumerate(theta)})  # the mean's control points
        self.policy_rows.append(row)
        if self.step < self.cfg.ppo.steps:
            self._open_step()
        else:
            self._open_confirmation()

    def _open_confirmation(self) -> None:
        """The final mean, the top-k distinct samples and the identity, each with new seeds."""
        searched = sorted(
            (r for r in self.records if r["phase"] == "search" and r["status"] == "ok"),
            key=lambda r: -r["reward"],
        )
        candidates = [("final mean", self.controller.mean)]
        identity = ("identity", initial_raw(self.cfg.search.metric))
        for r in searched:
            if len(candidates) > self.cfg.search.confirm_top_k:
                break
            if all(r["raw"] != raw for _, raw in [*candidates, identity]):
                candidates.append((f"step {r['step']} sample {r['sample']}", r["raw"]))
        if all(identity[1] != raw for _, raw in candidates):
            candidates.append(identity)
        self.phase = "confirm"
        self.queue = [
            {
                "phase": "confirm",
                "step": self.step + 1,
                "sample": index,
                "candidate": name,
                "raw": raw,
                "seed": self.cfg.search.seed + 1 + k,
                "fault": "",
            }
            for index, (name, raw) in enumerate(candidates)
            for k in range(self.cfg.search.confirm_seeds)
        ]
        self.open_jobs = len(self.queue)

    def _finish(self) -> None:
        """Pick the candidate with the best mean confirmed reward; export it."""
        metric = self.cfg.search.metric
        by_candidate: dict[str, list[dict]] = {}
        for r in self.records:
            if r["phase"] == "confirm":
                by_candidate.setdefault(r["candidate"], []).append(r)
        scores = {}
        for name, rows in by_candidate.items():
            rewards = [r["reward"] for r in rows if r["status"] == "ok"]
            if rewards:
                scores[name] = (statistics.fmean(rewards), rows[0]["raw"], len(rewards))
        if not scores:
            raise SearchFailed("every trial of the confirmation round failed; nothing to export")
        best = max(scores, key=lambda name: scores[name][0])
        reward, raw, seeds = scores[best]
        identity = initial_raw(metric)  # the final mean may be it, when no update moved it
        identity_reward = next((s[0] for s in scores.values() if s[1] == identity), math.nan)
        theta = raw_to_control(raw, METRIC_CURVES[metric])
        export = Path(self.run_dir) / f"{metric}_bezier.yaml"
        write_atomic(export, self._export_text(best, theta, raw, reward, identity_reward))
        summary = {
            "metric": metric,
            "best": best,
            "reward": reward,
            "seeds": seeds,
            "identity_reward": identity_reward,
            "final_mean_reward": scores.get("final mean", (math.nan,))[0],
            "theta": theta,
            "raw": raw,
            "candidates": {name: score[0] for name, score in scores.items()},
            "export": str(export),
            "trials": len(self.records),
            "failed": sum(r["status"] != "ok" for r in self.records),
            "seconds": time.time() - self.started,
        }
        write_atomic(Path(self.run_dir) / "summary.json", json.dumps(summary, indent=2))
        self.phase = "done"

    def _export_text(self, best, theta, raw, reward, identity_reward) -> str:
        cfg, search = self.cfg, self.cfg.search
        doc = {
            "loss": {
                "name": "surrogate",
                "metric": search.metric,
                "theta": [round(v, 8) for v in theta],
                "tolerance": search.tolerance,
                "drop_background": search.drop_background,
                "region_weight": search.region_weight,
            },
            "data": {"name": cfg.data.name, "params": dict(cfg.data.params)},
            "search": {
                "run": self.run_dir,
                "candidate": best,
                "reward": reward,
                "identity_reward": identity_reward,
                "raw": [round(v, 8) for v in raw],
            },
        }
        path = Path(self.run_dir) / f"{search.metric}_bezier.yaml"
        header = (
            f"# {search.metric} surrogate found by seg-loss-search ({search.controller}); "
            f"retrain: ./launch.sh retrain {path}\n"
        )

        return header + yaml.safe_dump(doc, sort_keys=False)

    # --- files and progress -------------------------------------------------------------------

    def _write_files(self) -> None:
        run = Path(self.run_dir)
        records = sorted(self.records, key=lambda r: (r["step"], r["sample"], r["seed"]))
        write_atomic(run / "trials.csv", _csv(records, self._trial_columns()))
        if self.policy_rows:
            write_atomic(run / "policy.csv", _csv(self.policy_rows, list(self.policy_rows[0])))

    def _trial_columns(self) -> list[str]:
        raw = [f"raw_{d}" for d in range(self.dims)]
        theta = [f"theta_{d}" for d in range(self.dims)]
        return [
            "trial_id", "phase", "step", "sample", "candidate", "seed", "status", "reward",
            "reward_used", *METRIC_COLUMNS, "seconds", "node", "reason", *raw, *theta,
        ]  # fmt: skip

    def total_trials(self) -> int:
        confirm = (self.cfg.search.confirm_top_k + 2) * self.cfg.search.confirm_seeds
        return self.cfg.ppo.steps * self.cfg.ppo.samples + confirm

    def _print_progress(self) -> None:
        done = len(self.records)
        failed = sum(r["status"] != "ok" for r in self.records)
        ok = [r["reward"] for r in self.records if r["status"] == "ok"]
        best = f"{100 * max(ok):.2f}" if ok else "-"
        elapsed = time.time() - self.started
        remaining = max(0, self.total_trials() - done)
        eta = elapsed / done * remaining if done else math.nan
        where = f"step {self.step}/{self.cfg.ppo.steps}" if self.phase == "search" else self.phase
        print(
            f"[search] {where} | trials {done}/{self.total_trials()} done, "
            f"{len(self.running)} running, {failed} failed | best {self.cfg.search.metric} "
            f"{best} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}",
            flush=True,
        )


def _record(trial_id: str, job: dict, result: dict, metric: str) -> dict:
    reward = result.get(metric, math.nan) if result.get("status") == "ok" else math.nan
    record = {
        "trial_id": trial_id,
        "phase": job["phase"],
        "step": job["step"],
        "sample": job["sample"],
        "candidate": job.get("candidate", ""),
        "seed": job["seed"],
        "status": result.get("status", "failed"),
        "reason": result.get("reason", ""),
        "reward": reward,
        "reward_used": reward,  # a failed search trial's gets failure_reward when its step closes
        "seconds": result.get("seconds", math.nan),
        "node": result.get("node", ""),
        "raw": list(job["raw"]),
        "theta": raw_to_control(job["raw"], METRIC_CURVES[metric]),
    }
    record.update({k: result.get(k, math.nan) for k in METRIC_COLUMNS})
    return record


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for key in ("raw", "theta"):  # vectors become one column per coordinate
            flat.update({f"{key}_{d}": v for d, v in enumerate(row.get(key, ()))})
        writer.writerow(flat)
    return out.getvalue()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
