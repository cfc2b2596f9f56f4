"""The search loop (SPEC B4) as plain functions over plain data, in the order a search runs:

    for step in 1 .. ppo.steps:
        propose_step        the controller proposes the step's samples (jobs)
        record_result       each trained proxy's result, as it comes in
        close_step          the step's rewards -> the controller's update, a policy.csv row
    open_confirmation       the final mean, the top-k samples and the identity, new seeds each
    record_result           ... the confirmation trials
    pick_best -> export     the best confirmed candidate -> <metric>_bezier.yaml, summary.json

`SearchState` is all a search remembers between two results. Nothing here knows Ray: the Ray
adapter (search/searcher.py) hands `state.queue` out as trials, calls `record_result` when one
ends and `advance` when a round is complete, and pickles the state for Tune's resume.
"""

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from results.files import write_csv, write_json, write_text
from search.config import Config, SearchConfig
from search.space import ce_weight, curve_dims, initial_raw, raw_keys, to_theta
from search.trial import SPEED_COLUMNS
from surrogates import METRIC_COLUMNS, PRESETS
from surrogates.curves import METRIC_CURVES, control_to_raw


class SearchFailed(RuntimeError):
    """Every trial of a step failed: updating the policy on failure rewards would be garbage.
    The search stops and leaves the message in failed.json for the search command."""


@dataclass
class SearchState:
    step: int = 0  # the open step, 1-based (0 before the first); confirmation: ppo.steps + 1
    phase: str = "search"  # search -> confirm -> done (or failed)
    queue: list[dict] = field(default_factory=list)  # jobs of the open round not handed out
    round_size: int = 0  # jobs in the open round (a step, or the confirmation round)
    records: list[dict] = field(default_factory=list)  # one per finished trial
    policy_rows: list[dict] = field(default_factory=list)  # one per closed step


FAULTS = ("raise", "nan", "kill")
CROSS_ENTROPY = "cross-entropy"  # the confirmation round's CE candidate


def parse_faults(text: str) -> dict[tuple[int, int], str]:
    """ "1:2=raise,2:0=nan" -> {(1, 2): "raise", (2, 0): "nan"} (tests only). kill: the trial's
    worker process is killed (SIGKILL) on its first attempt, as the OOM killer would."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        where, _, kind = item.partition("=")
        step, _, sample = where.partition(":")
        if kind not in FAULTS or not step.isdigit() or not sample.isdigit():
            raise ValueError(
                f"bad search.faults entry '{item}'; expected STEP:SAMPLE={'|'.join(FAULTS)}"
            )
        faults[(int(step), int(sample))] = kind
    return faults


# --- a step -------------------------------------------------------------------------------------


def propose_step(state: SearchState, controller, cfg: Config) -> None:
    state.step += 1
    faults = parse_faults(cfg.search.faults)
    state.queue = [
        {
            "phase": "search",
            "step": state.step,
            "sample": i,
            "raw": raw,
            "seed": cfg.search.seed,  # one training seed for every sample of the search
            "fault": faults.get((state.step, i), ""),
        }
        for i, raw in enumerate(controller.propose())
    ]
    state.round_size = len(state.queue)


def record_result(
    state: SearchState, trial_id: str, job: dict, result: dict, search: SearchConfig
) -> bool:
    """Keep one trial's result; True when it completes the open round."""
    metric = search.metric
    ok = result.get("status") == "ok"
    reward = result.get(metric, math.nan) if ok else math.nan
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
        "seconds": result.get("seconds", math.nan),
        "node": result.get("node", ""),
        "raw": list(job["raw"]),
        "theta": to_theta(metric, job["raw"]),
        "ce_weight": ce_weight(search.ce_mix, metric, job["raw"]),
    }
    if job.get("loss") == "ce":  # no curves: the raw and theta columns stay empty
        record["raw"], record["theta"], record["ce_weight"] = [], [], 1.0
    if job["phase"] == "confirm":
        record["reward_used"] = reward  # a search trial's is set when its step closes
    record.update({k: result.get(k, math.nan) for k in (*METRIC_COLUMNS, *SPEED_COLUMNS)})
    state.records.append(record)
    return len(_round_records(state)) == state.round_size


def _round_records(state: SearchState) -> list[dict]:
    return [r for r in state.records if (r["phase"], r["step"]) == (state.phase, state.step)]


def close_step(state: SearchState, controller, cfg: Config) -> None:
    """The controller's update from the step's rewards; a failed trial counts with
    search.failure_reward (default: the step's worst reward), a failed sample 0 (the baseline)
    with the mean of the successful rewards."""
    rows = sorted(_round_records(state), key=lambda r: r["sample"])
    ok = [r["reward"] for r in rows if r["status"] == "ok"]
    if not ok:
        reasons = sorted({r["reason"] for r in rows})
        raise SearchFailed(
            f"every trial of step {state.step} failed ({'; '.join(reasons)}); "
            "the policy was not updated"
        )
    fallback = min(ok) if cfg.search.failure_reward is None else cfg.search.failure_reward
    for r in rows:
        r["reward_used"] = r["reward"] if r["status"] == "ok" else fallback
    if rows[0]["status"] != "ok":
        # sample 0 is the policy mean, PPO's baseline: scored with the worst reward it would make
        # every advantage >= 0 and pull the mean toward all the samples; the mean of the
        # successful rewards estimates it without that bias
        rows[0]["reward_used"] = statistics.fmean(ok)
    loss = controller.update([r["raw"] for r in rows], [r["reward_used"] for r in rows])
    row = {
        "step": state.step,
        "reward_mean": statistics.fmean(ok),
        "reward_std": statistics.pstdev(ok),
        "reward_min": min(ok),
        "reward_max": max(ok),
        "reward_of_mean": rows[0]["reward_used"],
        "best_so_far": max(r["reward"] for r in state.records if r["status"] == "ok"),
        "failed": len(rows) - len(ok),
        "ppo_loss": loss,
        "sigma": cfg.ppo.sigma,
    }
    mean = controller.mean
    row.update({f"mu_{d}": v for d, v in enumerate(mean)})
    theta = to_theta(cfg.search.metric, mean)  # the mean's control points
    row.update({f"theta_{d}": v for d, v in enumerate(theta)})
    state.policy_rows.append(row)


# --- the confirmation round and the export ----------------------------------------------------


def open_confirmation(state: SearchState, controller, cfg: Config) -> None:
    """The final mean, the top-k distinct samples, the identity and (search.confirm_baselines)
    the metric's published preset and cross-entropy, each with the same new seeds."""
    searched = sorted(
        (r for r in state.records if r["phase"] == "search" and r["status"] == "ok"),
        key=lambda r: -r["reward"],
    )
    candidates = [("final mean", controller.mean)]
    identity = ("identity", initial_raw(cfg.search.metric, cfg.search.ce_mix))
    for r in searched:
        if len(candidates) > cfg.search.confirm_top_k:
            break
        if all(r["raw"] != raw for _, raw in [*candidates, identity]):
            candidates.append((f"step {r['step']} sample {r['sample']}", r["raw"]))
    if all(identity[1] != raw for _, raw in candidates):
        candidates.append(identity)
    losses = ["surrogate"] * len(candidates)
    if cfg.search.confirm_baselines:
        preset = f"asl-voc-{cfg.search.metric}"
        if preset in PRESETS:
            raw = control_to_raw(PRESETS[preset], METRIC_CURVES[cfg.search.metric])
            raw += [0.0] if cfg.search.ce_mix == "searched" else []  # as published: no CE
            candidates.append((f"preset {preset}", raw))
            losses.append("surrogate")
        candidates.append((CROSS_ENTROPY, identity[1]))  # raw unused
        losses.append("ce")
    state.phase, state.step = "confirm", state.step + 1
    state.queue = [
        {
            "phase": "confirm",
            "step": state.step,
            "sample": index,
            "candidate": name,
            "raw": raw,
            "seed": cfg.search.seed + 1 + k,
            "fault": "",
            "loss": loss,
        }
        for index, ((name, raw), loss) in enumerate(zip(candidates, losses, strict=True))
        for k in range(cfg.search.confirm_seeds)
    ]
    state.round_size = len(state.queue)


def advance(state: SearchState, controller, cfg: Config, run_dir: Path, started: float) -> None:
    """What follows a complete round: the next step, the confirmation round, or the export."""
    if state.phase == "search":
        close_step(state, controller, cfg)
        if state.step < cfg.ppo.steps:
            propose_step(state, controller, cfg)
        else:
            open_confirmation(state, controller, cfg)
    else:
        export(run_dir, pick_best(state, cfg) | {"seconds": time.time() - started}, cfg)
        state.phase = "done"


def pick_best(state: SearchState, cfg: Config) -> dict:
    """The candidate with the best mean confirmed reward, as summary.json's fields."""
    metric = cfg.search.metric
    by_candidate: dict[str, list[dict]] = {}
    for r in state.records:
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
    identity = initial_raw(
        metric, cfg.search.ce_mix
    )  # the final mean may be it, when no update moved it
    return {
        "metric": metric,
        "best": best,
        "loss": "ce" if best == CROSS_ENTROPY else "surrogate",  # what the export trains with
        "reward": reward,
        "seeds": seeds,
        "identity_reward": next((s[0] for s in scores.values() if s[1] == identity), math.nan),
        "final_mean_reward": scores.get("final mean", (math.nan,))[0],
        "ce_reward": scores.get(CROSS_ENTROPY, (math.nan,))[0],
        "theta": to_theta(metric, raw) if raw else [],
        "ce_weight": ce_weight(cfg.search.ce_mix, metric, raw) if raw else 1.0,
        "raw": raw,
        "candidates": {name: score[0] for name, score in scores.items()},
        "trials": len(state.records),
        "failed": sum(r["status"] != "ok" for r in state.records),
    }


def export(run_dir: Path, summary: dict, cfg: Config) -> None:
    """<metric>_bezier.yaml (a retrain file: the loss and its dataset) and summary.json."""
    search = cfg.search
    path = Path(run_dir) / f"{search.metric}_bezier.yaml"
    loss = {
        "name": "surrogate",
        "metric": search.metric,
        "theta": [round(v, 8) for v in summary["theta"]],
        "tolerance": search.tolerance,
        "drop_background": search.drop_background,
        "region_weight": search.region_weight,
    }
    if summary["ce_weight"] > 0:
        loss["ce_weight"] = round(summary["ce_weight"], 8)
    if summary["loss"] == "ce":  # no searched loss beat it: retrain with CE, and say so
        loss = {"name": "ce"}
    doc = {
        "loss": loss,
        "data": {"name": cfg.data.name, "params": dict(cfg.data.params)},
        "search": {
            "run": str(run_dir),
            "candidate": summary["best"],
            "reward": summary["reward"],
            "identity_reward": summary["identity_reward"],
            "raw": [round(v, 8) for v in summary["raw"]],
        },
    }
    header = (
        f"# {search.metric} surrogate found by seg-loss-search ({search.controller}); "
        f"retrain: ./launch.sh retrain {path}\n"
    )
    if summary["loss"] == "ce":
        header = (
            f"# no searched {search.metric} loss beat cross-entropy in the confirmation round "
            f"of {run_dir}: this file retrains with cross-entropy\n"
        )
    write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
    write_json(Path(run_dir) / "summary.json", {**summary, "export": str(path)})


# --- run files and progress ---------------------------------------------------------------------


def write_run_files(state: SearchState, run_dir: Path, search: SearchConfig) -> None:
    """trials.csv (a row per finished trial) and policy.csv (a row per closed step)."""
    keys = raw_keys(len(initial_raw(search.metric, search.ce_mix)))
    columns = [
        "trial_id", "phase", "step", "sample", "candidate", "seed", "status", "reward",
        "reward_used", *METRIC_COLUMNS, "seconds", *SPEED_COLUMNS, "node", "reason", *keys,
        *[key.replace("raw_", "theta_") for key in keys[: curve_dims(search.metric)]],
        "ce_weight",
    ]  # fmt: skip
    records = sorted(state.records, key=lambda r: (r["step"], r["sample"], r["seed"]))
    rows = [r | _columns("raw", r["raw"]) | _columns("theta", r["theta"]) for r in records]
    write_csv(Path(run_dir) / "trials.csv", rows, columns)
    if state.policy_rows:
        write_csv(Path(run_dir) / "policy.csv", state.policy_rows, list(state.policy_rows[0]))


def _columns(prefix: str, vector: list[float]) -> dict:
    return {f"{prefix}_{d}": v for d, v in enumerate(vector)}


def progress_line(state: SearchState, cfg: Config, running: int, elapsed: float) -> str:
    done = len(state.records)
    failed = sum(r["status"] != "ok" for r in state.records)
    ok = [r["reward"] for r in state.records if r["status"] == "ok"]
    best = f"{100 * max(ok):.2f}" if ok else "-"
    search_trials = cfg.ppo.steps * cfg.ppo.samples
    # before the confirmation round opens its size is at most final mean + top-k + identity
    candidates = cfg.search.confirm_top_k + 2
    total = search_trials + (
        state.round_size if state.phase != "search" else candidates * cfg.search.confirm_seeds
    )
    eta = elapsed / done * max(0, total - done) if done else math.nan
    where = f"step {state.step}/{cfg.ppo.steps}" if state.phase == "search" else state.phase
    return (
        f"[search] {where} | trials {done}/{total} done, {running} running, {failed} failed | "
        f"best {cfg.search.metric} {best} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
    )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
