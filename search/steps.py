"""The search loop (SPEC B4) as plain functions over plain data, in the order a search runs:

    for step in 1 .. ppo.steps:
        propose_step        the controller proposes the step's samples (jobs)
        record_result       each trained proxy's result, as it comes in
        promote             successive halving (search.rungs > 1): the best 1/reduction of a
                            rung (and ties), and the policy mean, continue from checkpoints
        close_step          the step's rewards -> the controller's update, a policy.csv row
    open_confirmation       the final mean, the top-k samples, the baselines, new seeds each
    record_result           ... the confirmation trials
    pick_best -> export     the final mean, unless a candidate beats it beyond seed noise
                            -> <metric>_bezier.yaml, summary.json

`SearchState` is all a search remembers between two results. Nothing here knows Ray: the Ray
adapter (search/searcher.py) hands `state.queue` out as trials, calls `record_result` when one
ends and `advance` when a round is complete, and pickles the state for Tune's resume.
"""

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import scipy.stats
import yaml

from results.files import write_csv, write_json, write_text
from search.config import (
    Config,
    SearchConfig,
    baseline_args,
    confirm_iterations,
    reward_columns,
    target,
)
from search.space import ce_weight, curve_dims, initial_raw, raw_keys, to_theta
from search.trial import SPEED_COLUMNS
from surrogates import PRESETS, list_losses
from surrogates.curves import METRIC_CURVES, control_to_raw


class SearchFailed(RuntimeError):
    """Every trial of a step failed: updating the policy on failure rewards would be garbage.
    The search stops and leaves the message in failed.json for the search command."""


@dataclass
class SearchState:
    step: int = 0  # the open step, 1-based (0 before the first); confirmation: ppo.steps + 1
    rung: int = 0  # the open rung of the step (successive halving), the last in confirmation
    phase: str = "search"  # search -> confirm -> done (or failed)
    queue: list[dict] = field(default_factory=list)  # jobs of the open round not handed out
    round_size: int = 0  # jobs in the open round (a step, or the confirmation round)
    records: list[dict] = field(default_factory=list)  # one per finished trial
    policy_rows: list[dict] = field(default_factory=list)  # one per closed step


FAULTS = ("raise", "nan", "kill", "oom", "oom-always")
CROSS_ENTROPY = "cross-entropy"  # the confirmation round's CE candidate
# A metric spec has no published preset: its confirmation round holds the hand-made loss a user
# would reach for instead (spec name -> registered loss; skipped while the loss is not in
# surrogates.losses), as "<loss> loss" beside cross-entropy.
HANDMADE_BASELINES = {"dice": "dice", "dice_image": "dice", "fbeta": "dice", "tversky": "tversky"}


def parse_faults(text: str) -> dict[tuple[int, int], str]:
    """ "1:2=raise,2:0=nan" -> {(1, 2): "raise", (2, 0): "nan"} (tests only). kill: the trial's
    worker process is killed (SIGKILL) on its first attempt, as the OOM killer would; oom: an
    out-of-memory error on the first attempt (oom-always: on every one)."""
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


AUTO_RUNGS = 3  # search.rungs=0: the rungs when halving pays


def halving_rungs(cfg: Config, concurrent: int) -> int:
    """search.rungs, with 0 (auto) resolved for `concurrent` trials at once: halving only pays
    where a step's samples exceed the slots, so that the trials it prunes make room for the
    waiting ones (a 2-core laptop: 8 samples, 2 slots). Where every sample runs at once (8 GPUs
    x 4 models, 32 samples) it would only leave slots idle in the later rungs and rank the
    losses after a fraction of the budget: one rung, the full budget, as the reference."""
    search = cfg.search
    if search.rungs:
        return search.rungs
    enough = cfg.proxy.fit.iterations >= search.reduction ** (AUTO_RUNGS - 1)
    return AUTO_RUNGS if cfg.ppo.samples > concurrent and enough else 1


def rung_iterations(cfg: Config, rung: int) -> int:
    """Where a trial of `rung` stops: the full proxy budget at the last rung, 1/reduction of
    the next rung's below it. The learning-rate schedule is the full budget's at every rung."""
    search, budget = cfg.search, cfg.proxy.fit.iterations
    return max(1, round(budget / search.reduction ** (search.rungs - 1 - rung)))


def propose_step(state: SearchState, controller, cfg: Config) -> None:
    state.step, state.rung = state.step + 1, 0
    faults = parse_faults(cfg.search.faults)
    state.queue = [
        {
            "phase": "search",
            "step": state.step,
            "sample": i,
            "raw": raw,
            "seed": cfg.search.seed,  # one training seed for every sample of the search
            "fault": faults.get((state.step, i), ""),
            "rung": 0,
            "start": 0,
            "iterations": rung_iterations(cfg, 0),
            "resume": "",  # the trial whose checkpoint a continued trial starts from
        }
        for i, raw in enumerate(controller.propose())
    ]
    state.round_size = len(state.queue)


def promote(state: SearchState, cfg: Config) -> None:
    """Successive halving: the best ceil(n / reduction) of the n samples the rung was planned
    for (rung_sizes) continue to the next rung from their checkpoints (same seed, same
    schedule: exactly the model a straight training would reach). Sample 0, the policy mean,
    always continues: it is the baseline each sample's advantage is measured against at the
    sample's last rung (close_step). Samples tied with the last one kept continue too: a rung
    that cannot rank them prunes none (early in training every model of a step can predict
    background alone, and score the same gAcc or FWIoU)."""
    rows = _round_records(state)
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["reward"])
    if not ok:
        raise SearchFailed(f"every trial of step {state.step} rung {state.rung} failed")
    cut = ok[min(rung_sizes(cfg)[state.rung + 1], len(ok)) - 1]["reward"]
    keep = [r for r in ok if r["reward"] >= cut or r["sample"] == 0]
    state.rung += 1
    state.queue = [
        {
            "phase": "search",
            "step": state.step,
            "sample": r["sample"],
            "raw": r["raw"],
            "seed": r["seed"],
            "fault": "",
            "rung": state.rung,
            "start": r["iterations"],
            "iterations": rung_iterations(cfg, state.rung),
            "resume": r["trial_id"],
        }
        for r in sorted(keep, key=lambda r: r["sample"])
    ]
    state.round_size = len(state.queue)


def record_result(
    state: SearchState, trial_id: str, job: dict, result: dict, search: SearchConfig
) -> bool:
    """Keep one trial's result; True when it completes the open round."""
    metric, curves = search.metric, target(search)
    ok = result.get("status") == "ok"
    reward = result.get(metric, math.nan) if ok else math.nan
    record = {
        "trial_id": trial_id,
        "phase": job["phase"],
        "step": job["step"],
        "sample": job["sample"],
        "rung": job["rung"],
        "candidate": job.get("candidate", ""),
        "seed": job["seed"],
        "iterations": job["iterations"],  # where its training stopped ...
        "trained": job["iterations"] - job["start"],  # ... and how many of them it trained ...
        "fidelity": job.get("fidelity", "proxy"),  # ... of which network (search.trial)
        "status": result.get("status", "failed"),
        "reason": result.get("reason", ""),
        "reward": reward,
        "seconds": result.get("seconds", math.nan),
        "gpu_share": result.get("gpu_share", 0.0),
        "node": result.get("node", ""),
        "raw": list(job["raw"]),
        "theta": to_theta(curves, job["raw"]),
        "ce_weight": ce_weight(search.ce_mix, curves, job["raw"]),
    }
    if job.get("loss", "surrogate") != "surrogate":  # a baseline: no curves, no raw or theta
        record["raw"], record["theta"], record["ce_weight"] = [], [], 1.0
    if job["phase"] == "confirm":
        record["reward_used"] = reward  # a search trial's is set when its step closes
    record.update({k: result.get(k, math.nan) for k in (*reward_columns(search), *SPEED_COLUMNS)})
    state.records.append(record)
    return len(_round_records(state)) == state.round_size


def _round_records(state: SearchState) -> list[dict]:
    open_round = (state.phase, state.step, state.rung)
    return [r for r in state.records if (r["phase"], r["step"], r["rung"]) == open_round]


def close_step(state: SearchState, controller, cfg: Config) -> None:
    """The controller's update from the step's rewards, one per sample, taken at the last rung
    the sample reached. A failed trial counts with search.failure_reward (default: the worst
    reward of its rung), a failed sample 0 (the baseline) with the mean of its rung's
    successful rewards, and a trial the machine failed (status "machine": out of memory twice,
    a worker that kept dying) with the baseline: no advantage, it says nothing of the loss.

    With successive halving the rewards of different rungs are not comparable (fewer
    iterations score lower), so each sample's advantage over the baseline is taken at its own
    last rung, against sample 0 trained with the same seed to the same iteration (which always
    continues): reward_used = R_i(rung) - R_0(rung) + R_0(last rung). PPO's advantages
    R_i - R_0 are then paired differences at equal fidelity; with one rung, the plain rewards."""
    rows = [r for r in state.records if (r["phase"], r["step"]) == ("search", state.step)]
    last = {r["sample"]: r for r in sorted(rows, key=lambda r: r["rung"])}
    samples = [last[i] for i in sorted(last)]
    baseline, fallback = {}, {}
    for rung in sorted({r["rung"] for r in rows}):
        at_rung = [r for r in rows if r["rung"] == rung]
        ok = [r["reward"] for r in at_rung if r["status"] == "ok"]
        if not ok:
            reasons = sorted({r["reason"] for r in at_rung})
            raise SearchFailed(
                f"every trial of step {state.step} failed ({'; '.join(reasons)}); "
                "the policy was not updated"
            )
        worst = min(ok) if cfg.search.failure_reward is None else cfg.search.failure_reward
        fallback[rung] = worst
        # sample 0 is the policy mean, PPO's baseline: scored with the worst reward it would
        # make every advantage >= 0 and pull the mean toward all the samples; the mean of the
        # successful rewards estimates it without that bias
        zero = [r for r in at_rung if r["sample"] == 0 and r["status"] == "ok"]
        baseline[rung] = zero[0]["reward"] if zero else statistics.fmean(ok)
    top = max(baseline)
    for r in samples:
        reward = r["reward"] if r["status"] == "ok" else fallback[r["rung"]]
        if r["status"] == "machine" or (r["sample"] == 0 and r["status"] != "ok"):
            reward = baseline[r["rung"]]
        r["reward_used"] = (
            reward if r["rung"] == top else reward - baseline[r["rung"]] + baseline[top]
        )
    loss = controller.update([r["raw"] for r in samples], [r["reward_used"] for r in samples])
    used = [r["reward_used"] for r in samples if r["status"] == "ok"]
    full = [r["reward"] for r in state.records if r["status"] == "ok" and _full_budget(r, cfg)]
    row = {
        "step": state.step,
        "reward_mean": statistics.fmean(used),
        "reward_std": statistics.pstdev(used),
        "reward_min": min(used),
        "reward_max": max(used),
        "reward_of_mean": samples[0]["reward_used"],
        "best_so_far": max(full),
        "failed": sum(r["status"] != "ok" for r in rows),
        "iterations": sum(r["trained"] for r in rows),
        "rung_tau": rung_tau(rows),
        "ppo_loss": loss,
        "sigma": cfg.ppo.sigma,
    }
    mean = controller.mean
    row.update({f"mu_{d}": v for d, v in enumerate(mean)})
    theta = to_theta(target(cfg.search), mean)  # the mean's control points
    row.update({f"theta_{d}": v for d, v in enumerate(theta)})
    state.policy_rows.append(row)


def rung_tau(rows: list[dict]) -> float:
    """Kendall's tau-b between the first-rung and the last-rung rewards of a step's samples
    that trained to the last rung: was pruning on the first rung's ranking safe? NaN with one
    rung or fewer than two such samples."""
    top = max(r["rung"] for r in rows)
    ok = {(r["sample"], r["rung"]): r["reward"] for r in rows if r["status"] == "ok"}
    reached = [i for (i, rung) in ok if rung == top and (i, 0) in ok]
    if top == 0 or len(reached) < 2:
        return math.nan
    first, final = [ok[i, 0] for i in reached], [ok[i, top] for i in reached]
    return float(scipy.stats.kendalltau(first, final).statistic)


def _full_budget(record: dict, cfg: Config) -> bool:
    """A proxy trained to the full budget (not a halving rung, not the confirmation's
    full-size network)."""
    proxy = record.get("fidelity", "proxy") == "proxy"
    return proxy and record["iterations"] == cfg.proxy.fit.iterations


# --- the confirmation round and the export ----------------------------------------------------


def open_confirmation(state: SearchState, controller, cfg: Config) -> None:
    """The final mean, the top-k distinct samples, (search.confirm_identity) the identity curve
    and (search.confirm_baselines) the metric's published preset, or a spec's hand-made loss
    (handmade_baselines), and cross-entropy, each with the same new seeds, trained on the proxy
    or (search.confirm_fidelity > 0) on the retrain's network and crops for a fraction of its
    iterations."""
    searched = sorted(
        (
            r
            for r in state.records
            if r["phase"] == "search" and r["status"] == "ok" and _full_budget(r, cfg)
        ),
        key=lambda r: -r["reward"],
    )
    candidates = [("final mean", controller.mean)]
    identity = ("identity", initial_raw(target(cfg.search), cfg.search.ce_mix))
    named = [identity] if cfg.search.confirm_identity else []  # confirmed under its own name
    for r in searched:
        if len(candidates) > cfg.search.confirm_top_k:
            break
        if all(r["raw"] != raw for _, raw in [*candidates, *named]):
            candidates.append((f"step {r['step']} sample {r['sample']}", r["raw"]))
    candidates += [c for c in named if all(c[1] != raw for _, raw in candidates)]
    losses = ["surrogate"] * len(candidates)
    if cfg.search.confirm_baselines:
        preset = f"asl-voc-{cfg.search.metric}"
        if preset in PRESETS:
            raw = control_to_raw(PRESETS[preset], METRIC_CURVES[cfg.search.metric])
            raw += [0.0] if cfg.search.ce_mix == "searched" else []  # as published: no CE
            candidates.append((f"preset {preset}", raw))
            losses.append("surrogate")
        for name, loss in handmade_baselines(cfg.search).items():
            candidates.append((name, identity[1]))  # raw unused
            losses.append(loss)
        candidates.append((CROSS_ENTROPY, identity[1]))  # raw unused
        losses.append("ce")
    state.phase, state.step, state.rung = "confirm", state.step + 1, cfg.search.rungs - 1
    fidelity = "confirm" if cfg.search.confirm_fidelity else "proxy"
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
            "rung": state.rung,
            "start": 0,
            "iterations": confirm_iterations(cfg),
            "fidelity": fidelity,
            "resume": "",
        }
        for index, ((name, raw), loss) in enumerate(zip(candidates, losses, strict=True))
        for k in range(cfg.search.confirm_seeds)
    ]
    state.round_size = len(state.queue)


def handmade_baselines(search: SearchConfig) -> dict[str, str]:
    """The hand-made loss candidates of a spec's confirmation round: {candidate: loss name}."""
    loss = HANDMADE_BASELINES.get(search.metric) if search.metric_spec else None
    return {f"{loss} loss": loss} if loss in list_losses() else {}


def advance(state: SearchState, controller, cfg: Config, run_dir: Path, started: float) -> None:
    """What follows a complete round: the next step, the confirmation round, or the export."""
    if state.phase == "search" and state.rung < cfg.search.rungs - 1:
        promote(state, cfg)
    elif state.phase == "search":
        close_step(state, controller, cfg)
        if state.step < cfg.ppo.steps:
            propose_step(state, controller, cfg)
        else:
            open_confirmation(state, controller, cfg)
    else:
        export(run_dir, pick_best(state, cfg) | {"seconds": time.time() - started}, cfg)
        state.phase = "done"


def choose_export(rewards: dict[str, list[float]], margin: float) -> tuple[str, float]:
    """The final mean, unless another candidate's mean reward beats it by more than `margin`
    standard errors of the difference of the two means; then the best of those that do. The
    seed noise (returned with the choice) is the standard deviation of a candidate's rewards
    over its seeds, pooled over the round's candidates: one lucky seed of one candidate must
    not decide among losses that the retrain cannot tell apart (docs/quality.md)."""
    means = {name: statistics.fmean(values) for name, values in rewards.items()}
    spread = [(len(v) - 1, statistics.variance(v)) for v in rewards.values() if len(v) > 1]
    dof = sum(n for n, _ in spread)
    variance = sum(n * v for n, v in spread) / dof if dof else 0.0  # one seed each: no noise
    incumbent = "final mean" if "final mean" in means else max(means, key=means.__getitem__)

    def error(name: str) -> float:
        return math.sqrt(variance * (1 / len(rewards[name]) + 1 / len(rewards[incumbent])))

    beat = [name for name in means if means[name] - means[incumbent] > margin * error(name)]
    return max(beat or [incumbent], key=means.__getitem__), math.sqrt(variance)


def pick_best(state: SearchState, cfg: Config) -> dict:
    """The confirmed candidate to export (choose_export), as summary.json's fields."""
    metric, curves = cfg.search.metric, target(cfg.search)
    by_candidate: dict[str, list[dict]] = {}
    for r in state.records:
        if r["phase"] == "confirm":
            by_candidate.setdefault(r["candidate"], []).append(r)
    rewards = {
        name: [r["reward"] for r in rows if r["status"] == "ok"]
        for name, rows in by_candidate.items()
    }
    rewards = {name: values for name, values in rewards.items() if values}
    if not rewards:
        raise SearchFailed("every trial of the confirmation round failed; nothing to export")
    scores = {
        name: (statistics.fmean(values), by_candidate[name][0]["raw"], len(values))
        for name, values in rewards.items()
    }
    best, noise = choose_export(rewards, cfg.search.confirm_margin)
    reward, raw, seeds = scores[best]
    identity = initial_raw(curves, cfg.search.ce_mix)  # the final mean may be it
    handmade = handmade_baselines(cfg.search)
    baselines = {  # what the summary line compares the best with
        name: score[0]
        for name, score in scores.items()
        if name in ("identity", CROSS_ENTROPY, *handmade) or name.startswith("preset")
    }
    losses = {CROSS_ENTROPY: "ce", **handmade}
    return {
        "metric": metric,
        "best": best,
        "loss": losses.get(best, "surrogate"),  # what the export trains with
        "reward": reward,
        "seeds": seeds,
        "identity_reward": next((s[0] for s in scores.values() if s[1] == identity), math.nan),
        "final_mean_reward": scores.get("final mean", (math.nan,))[0],
        "ce_reward": scores.get(CROSS_ENTROPY, (math.nan,))[0],
        "theta": to_theta(curves, raw) if raw else [],
        "ce_weight": ce_weight(cfg.search.ce_mix, curves, raw) if raw else 1.0,
        "raw": raw,
        "candidates": {name: score[0] for name, score in scores.items()},
        "leader": max(scores, key=lambda name: scores[name][0]),  # the best mean reward
        "seed_noise": noise,
        "baselines": baselines,
        "trials": len(state.records),
        "iterations": trained_iterations(state.records, "proxy"),
        "confirm_iterations": trained_iterations(state.records, "confirm"),
        "trial_hours": trial_hours(state.records),
        "gpu_hours": trial_hours(state.records, gpu=True),
        "failed": sum(r["status"] != "ok" for r in state.records),
    }


def trained_iterations(records: list[dict], fidelity: str) -> int:
    """Training iterations the trials did on the proxy, or on the confirmation's network."""
    return sum(r["trained"] for r in records if r.get("fidelity", "proxy") == fidelity)


def trial_hours(records: list[dict], gpu: bool = False) -> float:
    """Hours the trials trained and evaluated, summed over trials (each on its own slot); with
    gpu=True weighted by each trial's share of a GPU: GPU-hours (0 on CPU)."""
    seconds = (r["seconds"] * (r.get("gpu_share", 0.0) if gpu else 1.0) for r in records)
    return sum(s for s in seconds if math.isfinite(s)) / 3600


def loss_section(search: SearchConfig, raw: list[float]) -> dict:
    """The `loss:` mapping of a retrain file for the loss of a raw vector; a spec's metric is
    the spec itself, so that the file rebuilds the loss without this project's spec names."""
    curves = target(search)
    loss = {
        "name": "surrogate",
        "metric": copy.deepcopy(search.metric_spec) or search.metric,
        "theta": [round(v, 8) for v in to_theta(curves, raw)],
        "tolerance": search.tolerance,
        "drop_background": search.drop_background,
        "region_weight": search.region_weight,
    }
    weight = ce_weight(search.ce_mix, curves, raw)
    if weight > 0:
        loss["ce_weight"] = round(weight, 8)
    return loss


def export(run_dir: Path, summary: dict, cfg: Config) -> None:
    """<metric>_bezier.yaml (a retrain file: the loss and its dataset) and summary.json."""
    search = cfg.search
    path = Path(run_dir) / f"{search.metric}_bezier.yaml"
    # when no searched loss beat a baseline (cross-entropy, a hand-made loss): retrain with it,
    # and say so
    baseline = summary["loss"] != "surrogate"
    if baseline:
        loss = {"name": summary["loss"], **baseline_args(search, summary["loss"])}
    else:
        loss = loss_section(search, summary["raw"])
    data = {"name": cfg.data.name, "params": dict(cfg.data.params)}
    if cfg.data.name == "folder":  # a user's dataset has no default place to look for it
        data["root"] = cfg.data.root
    doc = {
        "loss": loss,
        "data": data,
        "search": {
            "run": str(run_dir),
            "candidate": summary["best"],
            "reward": summary["reward"],
            "identity_reward": summary["identity_reward"],
            "raw": [round(v, 8) for v in summary["raw"]],
        },
    }
    if search.metric_spec:  # what a retrain evaluates beside the six, whatever loss it trains
        doc["search"]["metric_spec"] = copy.deepcopy(search.metric_spec)  # no YAML aliases
    header = (
        f"# {search.metric} surrogate found by seg-loss-search ({search.controller}); "
        f"retrain: ./launch.sh retrain {path}\n"
    )
    if baseline:
        header = (
            f"# no searched {search.metric} loss beat {summary['best']} in the confirmation "
            f"round of {run_dir}: this file retrains with {summary['best']}\n"
        )
    write_text(path, header + yaml.safe_dump(doc, sort_keys=False))
    write_json(Path(run_dir) / "summary.json", {**summary, "export": str(path)})


# --- run files and progress ---------------------------------------------------------------------


def write_run_files(state: SearchState, run_dir: Path, search: SearchConfig) -> None:
    """trials.csv (a row per finished trial) and policy.csv (a row per closed step)."""
    curves = target(search)
    keys = raw_keys(len(initial_raw(curves, search.ce_mix)))
    columns = [
        "trial_id", "phase", "step", "sample", "rung", "iterations", "trained", "fidelity",
        "candidate", "seed", "status", "reward", "reward_used", *reward_columns(search),
        "seconds", "gpu_share", *SPEED_COLUMNS, "node", "reason", *keys,
        *[key.replace("raw_", "theta_") for key in keys[: curve_dims(curves)]],
        "ce_weight",
    ]  # fmt: skip
    records = sorted(state.records, key=lambda r: (r["step"], r["sample"], r["rung"], r["seed"]))
    rows = [r | _columns("raw", r["raw"]) | _columns("theta", r["theta"]) for r in records]
    write_csv(Path(run_dir) / "trials.csv", rows, columns)
    if state.policy_rows:
        write_csv(Path(run_dir) / "policy.csv", state.policy_rows, list(state.policy_rows[0]))


def _columns(prefix: str, vector: list[float]) -> dict:
    return {f"{prefix}_{d}": v for d, v in enumerate(vector)}


def progress_line(state: SearchState, cfg: Config, running: int, elapsed: float) -> str:
    done = len(state.records)
    failed = sum(r["status"] != "ok" for r in state.records)
    ok = [r["reward"] for r in state.records if r["status"] == "ok" and _full_budget(r, cfg)]
    best = f"{100 * max(ok):.2f}" if ok else "-"
    # closed steps as they ran; the others their rungs' planned sizes plus the policy mean
    closed = len(state.policy_rows)
    search_trials = sum(r["phase"] == "search" and r["step"] <= closed for r in state.records)
    search_trials += (cfg.ppo.steps - closed) * (sum(rung_sizes(cfg)) + cfg.search.rungs - 1)
    # before the confirmation round opens its size is at most final mean + top-k (+ identity,
    # preset and cross-entropy)
    search = cfg.search
    candidates = 1 + search.confirm_top_k + search.confirm_identity + 2 * search.confirm_baselines
    total = search_trials + (
        state.round_size if state.phase != "search" else candidates * cfg.search.confirm_seeds
    )
    eta = elapsed / done * max(0, total - done) if done else math.nan
    where = f"step {state.step}/{cfg.ppo.steps}" if state.phase == "search" else state.phase
    if state.phase == "search" and cfg.search.rungs > 1:
        where += f" rung {state.rung + 1}/{cfg.search.rungs}"
    return (
        f"[search] {where} | trials {done}/{total} done, {running} running, {failed} failed | "
        f"best {cfg.search.metric} {best} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
    )


def planned_iterations(cfg: Config) -> tuple[int, int]:
    """Proxy iterations of the steps (with halving, the planned rung sizes and the policy mean;
    ties may add a few) and the confirmation round's trials."""
    search, step, done = cfg.search, 0, 0
    for rung, size in enumerate(rung_sizes(cfg)):
        stop = rung_iterations(cfg, rung)
        step += (size + (rung > 0)) * (stop - done)  # + the policy mean, which always continues
        done = stop
    candidates = 1 + search.confirm_top_k + search.confirm_identity + 2 * search.confirm_baselines
    return cfg.ppo.steps * step, candidates * search.confirm_seeds


def planned_training(cfg: Config) -> str:
    """The training a search plans, for its first lines; the confirmation round may train
    another network (search.confirm_fidelity)."""
    proxy, trials = planned_iterations(cfg)
    network = "the proxy"
    if cfg.search.confirm_fidelity:
        confirm = cfg.confirm
        network = f"{confirm.model} {confirm.model_args}, {confirm.crop_size} px crops"
    return (
        f"about {proxy:,} proxy iterations in {cfg.ppo.steps} steps, then a confirmation of "
        f"up to {trials} trials x {confirm_iterations(cfg):,} iterations on {network}"
    )


def cost_estimate(state: SearchState, cfg: Config) -> str:
    """After step 1: the whole search's training time at step 1's measured seconds per proxy
    iteration (evaluations included), in trial-hours and, when trials hold GPUs, GPU-hours."""
    rows = [r for r in state.records if r["phase"] == "search" and r["step"] == 1]
    rows = [r for r in rows if r["status"] == "ok" and math.isfinite(r["seconds"])]
    rate = sum(r["seconds"] for r in rows) / max(1, sum(r["trained"] for r in rows))
    share = max((r.get("gpu_share", 0.0) for r in rows), default=0.0)
    proxy, trials = planned_iterations(cfg)
    line = f"[search] step 1: {1000 * rate:.0f} ms per proxy iteration, so the steps take about"
    hours = proxy * rate / 3600
    if cfg.search.confirm_fidelity:
        what = "trial-hours, and the confirmation's network is timed when it runs"
    else:
        hours += trials * confirm_iterations(cfg) * rate / 3600
        what = "trial-hours with the confirmation"
    gpu = f" ({hours * share:.2f} GPU-hours)" if share else ""
    return f"{line} {hours:.2f} {what}{gpu}"


def rung_sizes(cfg: Config) -> list[int]:
    """Trials per rung of a step: samples, then ceil(n / reduction) of the rung before, each
    rung after the first with one more when the policy mean is not among them."""
    sizes = [cfg.ppo.samples]
    for _ in range(cfg.search.rungs - 1):
        sizes.append(math.ceil(sizes[-1] / cfg.search.reduction))
    return sizes


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
