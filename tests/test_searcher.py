"""The search's configuration layers and the StepSearcher driven by hand, the way Ray Tune drives
it (suggest / on_trial_complete / save / restore), with toy rewards instead of proxy trainings."""

import csv
import json
import math
from dataclasses import replace

import pytest
import torch

from experiments.config import ConfigError
from search import config as configs
from search.controllers import (
    RandomController,
    build_controller,
    list_controllers,
    ppo,
    register_controller,
)
from search.ppo import PPOConfig
from search.searcher import StepSearcher, raw_space, trial_resources
from search.space import initial_raw, raw_of
from surrogates import SurrogateLoss

TINY = {
    "ppo.steps": "2", "ppo.samples": "4", "search.confirm_top_k": "2", "search.seed": "5",
    "search.rungs": "1", "search.confirm_identity": "true",  # one full-budget rung
}  # fmt: skip


def tiny_config(tmp_path, metric="miou", **overrides):
    return configs.resolve(metric, {**TINY, **overrides}, data_root=str(tmp_path))


def toy_result(raw, metric="miou"):
    """A reward that prefers larger first coordinates, like a metric in [0, 1]."""
    return {"status": "ok", "reason": "", metric: 0.2 + 0.5 * raw[0], "seconds": 0.1}


def tune_searcher(cfg, run_dir):
    """A StepSearcher given the Tuner's param_space, as Tune does before the first suggest."""
    searcher = StepSearcher(cfg, run_dir)
    assert searcher.set_search_properties(None, None, raw_space(searcher.dims))
    return searcher


def drive(searcher, results=None, limit=100):
    """Run the searcher to the end like Tune with two slots; returns the suggested configs.
    results(config) -> a trial's result; default: toy_result of the config's raw vector."""
    results = results or (lambda config: toy_result(raw_of(config)))
    suggested, running, n = [], [], 0
    while True:
        while len(running) < 2:
            n += 1
            config = searcher.suggest(f"t{n}")
            if config is None or config == "FINISHED":
                break
            suggested.append(config)
            running.append((f"t{n}", config))
        if not running:
            assert config == "FINISHED"
            return suggested
        trial_id, config = running.pop(0)
        searcher.on_trial_complete(trial_id, results(config))
        assert len(suggested) < limit


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_default_search_on_voc_rewards_on_train_images_the_proxy_never_sees(tmp_path):
    import fixtures_datasets as fx

    from search.run import check_builds
    from search.trial import build_datasets

    fx.make_voc(tmp_path, {"train": [f"2007_{n:06d}" for n in range(12)], "val": ["2008_000001"]})
    cfg = configs.resolve("miou", {"data": "voc"}, data_root=str(tmp_path))
    assert cfg.proxy.model_args["pretrained_backbone"] == "imagenet"  # the VOC proxy's default
    cfg.proxy.model_args["pretrained_backbone"] = "none"  # no download in the tests
    assert cfg.search.reward_split == "holdout"  # SPEC B4's default, also on VOC
    assert cfg.proxy.cat_max_ratio == 0.75 and cfg.proxy.crop_size == 128  # A§5
    check_builds(cfg)  # what `./launch.sh search miou` checks first: no error
    train_set, reward_set = build_datasets(cfg)
    assert len(train_set) == 10 and reward_set.ids == ["2007_000000", "2007_000010"]
    assert not set(train_set.ids) & set(reward_set.ids)


def test_the_reward_drops_background_as_the_dataset_evaluation_does(tmp_path):
    from search.trial import run_trial

    assert configs.resolve("bf1", {"data": "voc"}, str(tmp_path)).search.reward_drop_background
    assert not tiny_config(tmp_path, "bf1").search.reward_drop_background  # shapes
    tiny = {
        "proxy.fit.iterations": "8", "proxy.fit.batch_size": "4", "proxy.crop_size": "24",
        "data.params": "{size: 32, train: 24, holdout: 12, val: 4, test: 4}",
    }  # fmt: skip
    results = {}
    for drop in (False, True):
        cfg = tiny_config(tmp_path, "bf1", **tiny, **{"search.reward_drop_background": str(drop)})
        results[drop] = run_trial(cfg, initial_raw("bf1"), seed=0)
        assert results[drop]["status"] == "ok", results[drop]["reason"]
    speed = results[True]  # trials.csv's speed columns: steady it/s, data share, no GPU memory
    assert speed["it_per_s"] > 0 and 0 < speed["data_wait"] < 1 and math.isnan(speed["peak_gb"])
    ce = run_trial(cfg, initial_raw("bf1"), seed=0, loss="ce")  # a confirmation baseline
    assert ce["status"] == "ok" and ce["miou"] != results[True]["miou"]
    assert results[False]["miou"] == results[True]["miou"]  # the same model ...
    assert results[False]["bf1"] != results[True]["bf1"]  # ... scored with or without class 0
    assert results[False]["biou"] != results[True]["biou"]


def test_config_layers_and_errors(tmp_path):
    cfg = tiny_config(tmp_path, metric="bf1")
    assert cfg.data.name == "shapes" and cfg.proxy.model == "lite"  # the shapes profile
    assert cfg.proxy.model_args == {"width": 16}  # replaced, not merged with the R50 default
    assert cfg.search.region_weight == 0.5 and cfg.search.tolerance == 2  # metric + data files
    assert cfg.ppo.steps == 2 and cfg.ppo.epochs == 60 and cfg.ppo.lr == 0.2  # override, A§4
    assert configs.resolve("miou", {"data": "voc"}, str(tmp_path)).proxy.fit.iterations == 1000
    with pytest.raises(
        ConfigError, match="unknown config key 'ppo.step'; .*did you mean 'ppo.steps'"
    ):
        tiny_config(tmp_path, **{"ppo.step": "3"})
    with pytest.raises(ConfigError, match="bad value for ppo.steps: 'many'"):
        tiny_config(tmp_path, **{"ppo.steps": "many"})
    with pytest.raises(ConfigError, match="unknown dataset 'vocc'.*did you mean 'voc'"):
        configs.resolve("miou", {"data": "vocc"}, str(tmp_path))
    with pytest.raises(ConfigError, match="unknown controller 'pp0'"):
        tiny_config(tmp_path, **{"search.controller": "pp0"})
    # free-form model arguments are allowed here and checked by the model builder
    assert tiny_config(tmp_path, **{"proxy.model_args.width": "8"}).proxy.model_args["width"] == 8


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("proxy.model_args", "{width:32}", r"'width:32' has no value; write \{width: 32\}"),
        ("data.params", "{size: 32, train}", r"'train' has no value"),
        ("ppo.lr", "nan", "ppo.lr must be a finite number, got nan"),
        ("search.failure_reward", "-inf", "must be a finite number"),
        ("ppo.sigma", "0", r"ppo.sigma must be > 0, got 0"),
        ("ppo.samples", "1", "ppo.samples must be >= 2"),
        ("proxy.fit.iterations", "-5", "proxy.fit.iterations must be > 0, got -5"),
        ("proxy.fit.momentum", "1.5", r"proxy.fit.momentum must be in \[0, 1\]"),
        ("search.region_weight", "-0.5", r"search.region_weight must be in \[0, 1\]"),
        ("search.tolerance", "-1", "search.tolerance must be >= 0"),
        ("search.confirm_margin", "-1", "search.confirm_margin must be >= 0, got -1"),
        ("proxy.ratio_range", "[0, 2]", r"proxy.ratio_range must be > 0, got \[0.0, 2.0\]"),
    ],
)
def test_values_out_of_range_or_without_a_value_are_config_errors(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, **{key: value})


def test_an_explicit_null_in_a_mapping_is_still_allowed(tmp_path):
    cfg = tiny_config(tmp_path, **{"proxy.model_args": "{width: 8, pretrained_backbone: null}"})
    assert cfg.proxy.model_args == {"width": 8, "pretrained_backbone": None}


def test_a_search_runs_steps_then_confirms_and_exports(tmp_path):
    cfg = tiny_config(tmp_path)
    searcher = tune_searcher(cfg, tmp_path)
    suggested = drive(searcher)
    search = [c for c in suggested if c["phase"] == "search"]
    confirm = [c for c in suggested if c["phase"] == "confirm"]
    assert len(search) == 2 * 4
    assert raw_of(search[0]) == pytest.approx(initial_raw("miou"))  # step 1's mean: the identity
    assert all(c["seed"] == 5 for c in search)  # one training seed for every sample
    # final mean + top-2 distinct samples + identity + the published preset + cross-entropy,
    # the same two new seeds each
    names = sorted({c["candidate"] for c in confirm})
    assert len(confirm) == 2 * len(names) and {c["seed"] for c in confirm} == {6, 7}
    assert {"final mean", "identity", "preset asl-voc-miou", "cross-entropy"} <= set(names)
    assert len(names) == 6
    assert {c["loss"] for c in confirm if c["candidate"] == "cross-entropy"} == {"ce"}
    assert {c["loss"] for c in confirm if c["candidate"] != "cross-entropy"} == {"surrogate"}

    policy = read_csv(tmp_path / "policy.csv")
    trials = read_csv(tmp_path / "trials.csv")
    assert [row["step"] for row in policy] == ["1", "2"] and len(trials) == len(suggested)
    assert float(policy[1]["mu_0"]) > 0.25  # the toy reward prefers a larger first coordinate
    summary = json.loads((tmp_path / "summary.json").read_text())
    # noise-free toy: the best candidate is the one with the largest first coordinate
    best = max(confirm, key=lambda c: toy_result(raw_of(c))["miou"])
    assert summary["raw"] == pytest.approx(raw_of(best))
    assert summary["reward"] > summary["identity_reward"]
    loss = SurrogateLoss.from_file(tmp_path / "miou_bezier.yaml", num_classes=7)
    assert loss.theta == pytest.approx(summary["theta"], abs=1e-7)
    assert searcher.suggest("later") == "FINISHED"


def test_failed_trials_get_the_worst_reward_of_their_step(tmp_path):
    searcher = tune_searcher(tiny_config(tmp_path), tmp_path)

    def results(raw):
        if raw[0] == max(c["raw"][0] for c in searcher.running.values()):
            return {"status": "failed", "reason": "boom"}  # the most promising one fails
        return toy_result(raw)

    jobs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    assert searcher.suggest("t9") is None  # the step is handed out: wait for results
    raws = {k: raw_of(c) for k, c in jobs.items()}
    failed = max(raws, key=lambda k: raws[k][0])
    for trial_id in jobs:
        searcher.on_trial_complete(trial_id, results(raws[trial_id]))
    rows = {r["trial_id"]: r for r in read_csv(tmp_path / "trials.csv")}
    ok_rewards = [float(r["reward"]) for k, r in rows.items() if k != failed]
    assert rows[failed]["status"] == "failed" and rows[failed]["reason"] == "boom"
    assert float(rows[failed]["reward_used"]) == min(ok_rewards)
    assert read_csv(tmp_path / "policy.csv")[0]["failed"] == "1"


def test_cross_entropy_can_win_the_confirmation_round_and_is_then_exported(tmp_path):
    """When no searched loss beats CE on the new seeds, the export says so and retrains with
    CE (`name: ce`), rather than exporting a surrogate that is worse than the default."""
    import yaml

    from retrain.config import resolve as resolve_retrain

    searcher = tune_searcher(tiny_config(tmp_path), tmp_path)

    def ce_is_best(config):
        result = toy_result(raw_of(config))
        if config.get("loss") == "ce":
            result["miou"] = 0.99
        return result

    drive(searcher, results=ce_is_best)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"] == "cross-entropy" and summary["loss"] == "ce"
    assert summary["reward"] == summary["ce_reward"] == 0.99 and summary["theta"] == []
    exported = tmp_path / "miou_bezier.yaml"
    assert exported.read_text().startswith("# no searched miou loss beat cross-entropy")
    assert yaml.safe_load(exported.read_text())["loss"] == {"name": "ce"}
    assert resolve_retrain(exported, {"data.root": str(tmp_path)}).loss == {"name": "ce"}
    ce_rows = [r for r in read_csv(tmp_path / "trials.csv") if r["candidate"] == "cross-entropy"]
    assert len(ce_rows) == 2 and all(r["raw_0"] == "" and r["theta_0"] == "" for r in ce_rows)


def test_a_candidate_replaces_the_final_mean_only_beyond_the_pooled_seed_noise():
    from search.steps import choose_export

    rewards = {
        "final mean": [0.50, 0.52],
        "step 4 sample 7": [0.50, 0.58],  # leads by 0.03, one lucky seed
        "preset": [0.40, 0.50],
        "cross-entropy": [0.30, 0.34],
    }
    # by hand: two seeds each, variance d^2 / 2 per candidate, pooled over 4 x 1 dof
    variance = (0.02**2 + 0.08**2 + 0.10**2 + 0.04**2) / 2 / 4
    noise = math.sqrt(variance)  # 0.048; the standard error of a difference: noise x sqrt(1)
    assert choose_export(rewards, 1.0) == ("final mean", pytest.approx(noise))
    assert choose_export(rewards, 0.5)[0] == "step 4 sample 7"  # 0.03 > 0.5 x 0.048
    assert choose_export(rewards, 0.0)[0] == "step 4 sample 7"  # 0: the best mean
    # two candidates beyond the noise: the better one
    clear = rewards | {"preset": [0.60, 0.64], "cross-entropy": [0.66, 0.70]}
    assert choose_export(clear, 1.0)[0] == "cross-entropy"
    # one seed each: no noise to pool, the best mean; no final mean (it failed): the best mean
    single = {name: values[:1] for name, values in rewards.items()}
    assert choose_export(single, 1.0) == ("final mean", 0.0)
    assert choose_export({k: v for k, v in rewards.items() if k != "final mean"}, 1.0)[0] == (
        "step 4 sample 7"
    )


def test_the_export_keeps_the_final_mean_when_a_sample_leads_by_one_lucky_seed(tmp_path, capsys):
    """A searched sample leads the confirmation round on one seed only: within the round's
    seed noise the final policy mean is exported, and the summary says who led."""
    from search.run import report

    def lucky(config):
        result = toy_result(raw_of(config))
        if config["phase"] == "confirm":
            name, seed = config["candidate"], config["seed"]
            result["miou"] = {"final mean": 0.5, "cross-entropy": 0.3}.get(name, 0.4)
            if name.startswith("step"):  # +0.25 on the second seed: mean 0.525
                result["miou"] = 0.4 + 0.25 * (seed == 7)
        return result

    drive(tune_searcher(tiny_config(tmp_path), tmp_path), results=lucky)
    summary = json.loads((tmp_path / "summary.json").read_text())
    noise = math.sqrt(2 * 0.25**2 / 2 / 6)  # two varying candidates of six, one dof each
    assert summary["best"] == "final mean" and summary["reward"] == 0.5
    assert summary["leader"].startswith("step") and summary["seed_noise"] == pytest.approx(noise)
    assert summary["candidates"][summary["leader"]] == pytest.approx(0.525)
    assert "# miou surrogate found" in (tmp_path / "miou_bezier.yaml").read_text()
    assert report(tmp_path) == 0
    assert (
        f"[search] {summary['leader']} led by 2.50, within the seed noise (10.21 per seed): "
        "the export is the final mean" in capsys.readouterr().out.splitlines()
    )


def test_a_searched_ce_weight_is_one_more_dimension_exported_with_the_loss(tmp_path):
    import yaml

    from search.trial import build_loss

    with pytest.raises(ConfigError, match="search.ce_mix must be off, searched or a number in"):
        tiny_config(tmp_path, **{"search.ce_mix": "1.5"})
    fixed = tiny_config(tmp_path, **{"search.ce_mix": "0.3"})
    assert build_loss(fixed, initial_raw("miou"), 3).ce_weight == 0.3
    assert build_loss(tiny_config(tmp_path), initial_raw("miou"), 3).ce_weight == 0.0

    cfg = tiny_config(tmp_path, **{"search.ce_mix": "searched"})
    searcher = tune_searcher(cfg, tmp_path)
    assert searcher.dims == len(initial_raw("miou")) + 1
    suggested = drive(searcher, results=lambda c: toy_result(raw_of(c)[-1:]))  # more CE: better
    first = raw_of(suggested[0])
    assert first[-1] == 0.25 and build_loss(cfg, first, 3).ce_weight == 0.25
    preset = [c for c in suggested if c.get("candidate", "").startswith("preset")]
    assert preset and all(raw_of(c)[-1] == 0.0 for c in preset)  # the published loss, no CE
    summary = json.loads((tmp_path / "summary.json").read_text())
    loss = yaml.safe_load((tmp_path / "miou_bezier.yaml").read_text())["loss"]
    assert loss["ce_weight"] == pytest.approx(summary["ce_weight"]) and summary["ce_weight"] > 0.25
    assert len(loss["theta"]) == 12
    rows = read_csv(tmp_path / "trials.csv")
    assert all(float(r["ce_weight"]) == float(r["raw_12"]) for r in rows if r["raw_12"])
    assert "theta_12" not in rows[0]


def test_a_failed_policy_mean_is_an_unbiased_baseline_not_the_worst_reward(tmp_path):
    """Sample 0 is the policy mean, PPO's baseline (A_i = R_i - R_0). Scored with the step's
    worst reward, every advantage would be >= 0 and the update would pull the mean toward every
    sample; it counts with the mean of the successful rewards instead."""
    searcher = tune_searcher(tiny_config(tmp_path), tmp_path)
    jobs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    assert jobs["t0"]["sample"] == 0
    for trial_id, config in jobs.items():
        dead = {"status": "failed", "reason": "the trial's worker died"}
        searcher.on_trial_complete(
            trial_id, dead if trial_id == "t0" else toy_result(raw_of(config))
        )
    rows = {r["trial_id"]: r for r in read_csv(tmp_path / "trials.csv")}
    ok = [float(rows[k]["reward"]) for k in ("t1", "t2", "t3")]
    baseline = float(rows["t0"]["reward_used"])
    assert baseline == pytest.approx(sum(ok) / 3)
    advantages = [reward - baseline for reward in ok]
    assert min(advantages) < 0 < max(advantages)
    assert float(read_csv(tmp_path / "policy.csv")[0]["reward_of_mean"]) == baseline


def test_a_step_where_every_trial_fails_stops_the_search(tmp_path):
    searcher = tune_searcher(tiny_config(tmp_path), tmp_path)
    ids = [f"t{i}" for i in range(4)]
    for trial_id in ids:
        searcher.suggest(trial_id)
    for trial_id in ids[:-1]:
        searcher.on_trial_complete(trial_id, {"status": "failed", "reason": "oom"})
    searcher.on_trial_complete(ids[-1], None, error=True)
    assert searcher.suggest("t5") == "FINISHED"  # Tune then ends the run
    error = json.loads((tmp_path / "failed.json").read_text())["error"]
    assert error.startswith("every trial of step 1 failed (oom; the trial's worker died 3 times")
    assert len(read_csv(tmp_path / "trials.csv")) == 4  # what happened is on disk
    assert not (tmp_path / "policy.csv").exists()


@pytest.mark.parametrize("controller", list_controllers())
def test_save_and_restore_mid_step_continue_identically(tmp_path, controller):
    cfg = tiny_config(tmp_path, **{"search.controller": controller})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    reference = drive(tune_searcher(cfg, tmp_path / "a"))

    interrupted = tune_searcher(cfg, tmp_path / "b")
    for i in range(6):  # step 1 done, two of step 2 handed out, one finished
        config = interrupted.suggest(f"t{i}")
        if i < 5:
            interrupted.on_trial_complete(f"t{i}", toy_result(raw_of(config)))
    interrupted.save(str(tmp_path / "state.pkl"))
    resumed = tune_searcher(cfg, tmp_path / "b")
    resumed.restore(str(tmp_path / "state.pkl"))
    assert list(resumed.running) == ["t5"]  # Tune re-runs it under its id
    resumed.on_trial_complete("t5", toy_result(resumed.running["t5"]["raw"]))
    rest = drive(resumed)
    assert [raw_of(c) for c in rest] == [raw_of(c) for c in reference[6:]]
    policy = read_csv(tmp_path / "b" / "policy.csv")
    assert policy == read_csv(tmp_path / "a" / "policy.csv")
    assert not math.isnan(float(policy[-1]["mu_0"]))


@pytest.mark.parametrize("controller", ["random", "cmaes", "tpe"])
def test_other_controllers_search_confirm_and_export(tmp_path, controller):
    cfg = tiny_config(tmp_path, **{"search.controller": controller})
    suggested = drive(tune_searcher(cfg, tmp_path))
    search = [c for c in suggested if c["phase"] == "search"]
    assert len(search) == 2 * 4 and raw_of(search[0]) == pytest.approx(initial_raw("miou"))
    assert all(0 <= v <= 1 for c in search for v in raw_of(c))
    assert len({tuple(raw_of(c)) for c in search}) >= 7  # only the identity repeats
    # the controller's choice (best sample so far) is confirmed along with the top-k
    best_search = max(search, key=lambda c: toy_result(raw_of(c))["miou"])
    confirmed = [raw_of(c) for c in suggested if c["phase"] == "confirm"]
    assert raw_of(best_search) in confirmed
    loss = SurrogateLoss.from_file(tmp_path / "miou_bezier.yaml", num_classes=7)
    assert loss.metric == "miou" and len(read_csv(tmp_path / "policy.csv")) == 2


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the identity lies outside [0, 0.25]
@pytest.mark.parametrize("controller", ["cmaes", "tpe"])
def test_optuna_controllers_sample_the_space_tune_hands_over(tmp_path, controller):
    from ray import tune

    searcher = StepSearcher(tiny_config(tmp_path, **{"search.controller": controller}), tmp_path)
    narrow = {key: tune.uniform(0.0, 0.25) for key in raw_space(searcher.dims)}
    assert searcher.set_search_properties(None, None, narrow)
    configs_ = [searcher.suggest(f"t{i}") for i in range(4)]
    assert "raw" not in configs_[0] and set(narrow) <= set(configs_[0])  # Tune fills these keys
    assert raw_of(configs_[0]) == pytest.approx(initial_raw("miou"))  # the identity first
    assert all(0 <= v <= 0.25 for c in configs_[1:] for v in raw_of(c))


def test_random_controller_samples_the_initial_policy_or_uniformly():
    from scipy import stats

    init = initial_raw("macc")
    cfg = PPOConfig(samples=2000)
    for uniform in (False, True):
        samples = RandomController(init, cfg, seed=0, uniform=uniform).propose()
        assert samples[0] == init  # the identity first, as in every controller's steps
        first = [sample[0] for sample in samples[1:]]
        mu = init[0]
        law = stats.uniform() if uniform else stats.truncnorm(-mu / 0.2, (1 - mu) / 0.2, mu, 0.2)
        assert stats.kstest(first, law.cdf).pvalue > 1e-3


def test_controllers_are_built_by_name():
    assert list_controllers() == ["cmaes", "ppo", "random", "tpe"]
    assert build_controller("ppo", initial_raw("miou"), PPOConfig(), 0).mean == pytest.approx(
        initial_raw("miou")
    )
    with pytest.raises(ValueError, match="unknown controller 'ppoo'.*did you mean 'ppo'"):
        build_controller("ppoo", initial_raw("miou"), PPOConfig(), 0)
    with pytest.raises(ValueError, match="already registered under the name 'ppo'"):
        register_controller(ppo)


def test_gpu_trials_share_the_cores_and_cpu_trials_get_one_each(tmp_path):
    cfg = configs.resolve("miou", {"data": "shapes"}, data_root=str(tmp_path))
    resources, concurrent = trial_resources(cfg, 0, {"CPU": 16.0, "GPU": 2.0})
    assert resources == {"cpu": 2, "gpu": 0.25} and concurrent == 8  # 16 cores / (2 x 4)
    resources, concurrent = trial_resources(cfg, 1, {"CPU": 96.0, "GPU": 8.0})  # NUM_GPUS 1
    assert resources == {"cpu": 24, "gpu": 0.25} and concurrent == 4
    resources, concurrent = trial_resources(cfg, 0, {"CPU": 2.0, "GPU": 1.0})
    assert resources["cpu"] == 1  # never fewer than one
    assert trial_resources(cfg, 0, {"CPU": 6.0}) == ({"cpu": 1}, 6)


# --- successive halving -----------------------------------------------------------------------


def halving_config(tmp_path, **overrides):
    settings = {"ppo.samples": "8", "search.rungs": "3", "search.reduction": "2"}
    return tiny_config(tmp_path, **(settings | overrides))


def rung_result(config, fail=()):
    """toy_result plus what more iterations bring: every sample gains the same 0.1 per budget."""
    if (config["step"], config["sample"], config["rung"]) in fail:
        return {"status": "failed", "reason": "boom"}
    result = toy_result(raw_of(config))
    result["miou"] += 0.1 * config["iterations"] / 300
    return result


def test_successive_halving_continues_the_best_and_the_mean_from_their_checkpoints(tmp_path):
    cfg = halving_config(tmp_path)
    searcher = tune_searcher(cfg, tmp_path)
    updates = []
    update = searcher.controller.update
    searcher.controller.update = lambda raws, rewards: (
        updates.append(rewards) or update(raws, rewards)
    )
    suggested = drive(searcher, results=rung_result, limit=200)
    step1 = [c for c in suggested if c["phase"] == "search" and c["step"] == 1]
    rungs = [[c for c in step1 if c["rung"] == k] for k in range(3)]
    assert [c["iterations"] for c in step1[:1] + rungs[1][:1] + rungs[2][:1]] == [75, 150, 300]
    assert len(rungs[0]) == 8 and all(c["resume"] == "" and c["start"] == 0 for c in rungs[0])
    by_first = sorted(rungs[0], key=lambda c: -raw_of(c)[0])  # toy reward ranks by raw[0]
    best4 = {c["sample"] for c in by_first[:4]}
    assert {c["sample"] for c in rungs[1]} == best4 | {0}  # and the mean, always
    best2 = sorted(rungs[1], key=lambda c: -raw_of(c)[0])[:2]
    assert {c["sample"] for c in rungs[2]} == {c["sample"] for c in best2} | {0}
    rows = [r for r in read_csv(tmp_path / "trials.csv") if r["phase"] == "search"]
    ids = {(r["step"], r["sample"], r["rung"]): r["trial_id"] for r in rows}
    for c in rungs[1] + rungs[2]:  # continued from the state of the sample's last trial
        previous = ids["1", str(c["sample"]), str(c["rung"] - 1)]
        expected = tmp_path / "tune" / f"trial_{previous}" / "rung_state.pth"
        assert c["resume"] == str(expected) and c["start"] == {1: 75, 2: 150}[c["rung"]]

    step_rows = [r for r in rows if r["step"] == "1"]
    trained = sum(c["iterations"] - c["start"] for c in step1)
    assert sum(int(r["trained"]) for r in step_rows) == trained
    assert trained == 8 * 75 + len(rungs[1]) * 75 + len(rungs[2]) * 150
    base = {k: rung_result(c)["miou"] for c in step1 if c["sample"] == 0 for k in [c["rung"]]}
    for r in step_rows:  # used: the reward's advantage at its rung over the mean's, shifted
        last = max(int(q["rung"]) for q in step_rows if q["sample"] == r["sample"])
        if int(r["rung"]) == last:
            expected = float(r["reward"]) - base[last] + base[2]
            assert float(r["reward_used"]) == pytest.approx(expected, abs=1e-12)
        else:
            assert r["reward_used"] == ""
    assert updates[0] == pytest.approx(
        [float(r["reward_used"]) for r in step_rows if r["reward_used"] != ""]
    )
    policy = read_csv(tmp_path / "policy.csv")
    assert int(policy[0]["iterations"]) == trained
    assert float(policy[0]["rung_tau"]) == 1.0  # the toy ranking never changes with budget
    summary = json.loads((tmp_path / "summary.json").read_text())
    confirm = [c for c in suggested if c["phase"] == "confirm"]
    assert all(c["iterations"] == 300 and c["start"] == 0 for c in confirm)
    assert summary["iterations"] == sum(
        int(r["trained"]) for r in read_csv(tmp_path / "trials.csv")
    )
    full = {
        tuple(raw_of(c)) for c in step1 + suggested if c["phase"] == "search" and c["rung"] == 2
    }
    top = [c for c in confirm if c["candidate"].startswith("step")]
    assert top and all(tuple(raw_of(c)) in full for c in top)  # only full-budget samples


def test_samples_tied_at_a_rung_all_continue(tmp_path):
    """Every sample scores the same on the first rung (every model still predicts background):
    nothing can be ranked, so all 8 continue; the second rung ranks them and halves again."""

    def flat_then_toy(config):
        result = rung_result(config)
        if config["rung"] == 0:
            result["miou"] = 0.25
        return result

    suggested = drive(tune_searcher(halving_config(tmp_path), tmp_path), results=flat_then_toy)
    step1 = [c for c in suggested if c["phase"] == "search" and c["step"] == 1]
    rungs = [[c for c in step1 if c["rung"] == k] for k in range(3)]
    assert len(rungs[0]) == 8 and {c["sample"] for c in rungs[1]} == set(range(8))
    best2 = sorted(rungs[1], key=lambda c: -raw_of(c)[0])[:2]
    assert {c["sample"] for c in rungs[2]} == {c["sample"] for c in best2} | {0}


def test_a_trial_that_fails_at_a_rung_stops_there_and_counts_with_that_rungs_worst(tmp_path):
    cfg = halving_config(tmp_path)
    searcher = tune_searcher(cfg, tmp_path)
    first = [searcher.suggest(f"a{i}") for i in range(8)]
    assert searcher.suggest("a9") is None
    for i, config in enumerate(first):
        searcher.on_trial_complete(f"a{i}", rung_result(config))
    second = [searcher.suggest(f"b{i}") for i in range(5)]
    failing = next(c for c in second if c["sample"] != 0)
    fail = {(1, failing["sample"], 1)}
    for i, config in enumerate(second):
        searcher.on_trial_complete(f"b{i}", rung_result(config, fail))
    third = []
    while (config := searcher.suggest(f"c{len(third)}")) is not None:
        third.append(config)
    assert failing["sample"] not in {c["sample"] for c in third} and len(third) == 3
    for i, config in enumerate(third):
        searcher.on_trial_complete(f"c{i}", rung_result(config))
    rows = read_csv(tmp_path / "trials.csv")
    failed = next(r for r in rows if r["status"] == "failed")
    assert (failed["sample"], failed["rung"]) == (str(failing["sample"]), "1")
    rung1_ok = [float(r["reward"]) for r in rows if r["rung"] == "1" and r["status"] == "ok"]
    mean = {int(r["rung"]): float(r["reward"]) for r in rows if r["sample"] == "0"}
    expected = min(rung1_ok) - mean[1] + mean[2]
    assert float(failed["reward_used"]) == pytest.approx(expected, abs=1e-12)
    assert read_csv(tmp_path / "policy.csv")[0]["failed"] == "1"


def test_rung_tau_is_kendalls_tau_of_the_first_and_last_rung_rewards():
    from search.steps import rung_tau

    def row(sample, rung, reward, status="ok"):
        return {"sample": sample, "rung": rung, "reward": reward, "status": status}

    rows = [row(0, 0, 0.1), row(1, 0, 0.2), row(2, 0, 0.3), row(3, 0, 0.9), row(4, 0, 0.0)]
    rows += [row(0, 1, 0.15), row(1, 1, 0.35), row(2, 1, 0.25), row(3, 1, 0.1, "failed")]
    # samples 0, 1, 2 reached the last rung: pairs (0,1) and (0,2) concordant, (1,2) discordant
    assert rung_tau(rows) == pytest.approx((2 - 1) / 3)
    assert math.isnan(rung_tau(rows[:5]))  # one rung: nothing was pruned
    assert math.isnan(rung_tau(rows[:6]))  # one sample at the last rung


def test_halving_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="search.reduction must be >= 2"):
        halving_config(tmp_path, **{"search.reduction": "1"})
    with pytest.raises(ConfigError, match="leaves the first rung less than 1"):
        halving_config(tmp_path, **{"search.rungs": "12"})


def test_a_continued_rung_ends_with_the_model_of_a_straight_training(tmp_path):
    """Train to iteration 4 of 8 and save, go on from the checkpoint: the very metrics of
    training all 8 iterations at once (the schedule is the full budget's at every rung)."""
    from search.trial import run_trial

    tiny = {
        "proxy.fit.iterations": "8", "proxy.fit.batch_size": "4", "proxy.crop_size": "24",
        "data.params": "{size: 32, train: 24, holdout: 12, val: 4, test: 4}",
    }  # fmt: skip
    cfg = tiny_config(tmp_path, **tiny)
    raw, checkpoint = initial_raw("miou"), tmp_path / "rung.pth"
    straight = run_trial(cfg, raw, seed=3)
    half = run_trial(cfg, raw, seed=3, stop=4, save_to=checkpoint)
    continued = run_trial(cfg, raw, seed=3, stop=8, resume_from=checkpoint)
    assert straight["status"] == half["status"] == continued["status"] == "ok"
    for key in ("miou", "macc", "gacc", "bf1"):
        assert continued[key] == straight[key]
    assert half["miou"] != straight["miou"]


def test_without_the_identity_candidate_the_identity_can_still_win_as_a_sample(tmp_path):
    cfg = tiny_config(tmp_path, **{"search.confirm_identity": "false", "search.confirm_top_k": "1"})

    def identity_is_best(config):
        result = toy_result(raw_of(config))
        if config["phase"] == "search" and (config["step"], config["sample"]) == (1, 0):
            result["miou"] = 0.99
        return result

    suggested = drive(tune_searcher(cfg, tmp_path), results=identity_is_best)
    names = {c["candidate"] for c in suggested if c["phase"] == "confirm"}
    assert names == {"final mean", "step 1 sample 0", "preset asl-voc-miou", "cross-entropy"}


def test_the_warm_up_compiles_the_shape_and_layout_the_engine_trains_with(tmp_path, monkeypatch):
    """Graphs counted by dynamo: after the warm-up, the loss on a training batch in the
    engine's layout compiles nothing more, another layout would (so the count sees it). On CUDA
    the engine trains NHWC, which the CPU stands in for here."""
    from torch._dynamo.utils import counters

    from search.trial import build_loss, warm_up_kernels
    from segnets.engine import memory_format
    from surrogates import fused

    monkeypatch.setattr(fused, "_enabled", True)  # the suite runs eager (conftest.py)
    cfg = tiny_config(tmp_path)
    assert memory_format(cfg.proxy.fit, torch.device("cuda")) == torch.channels_last
    assert memory_format(cfg.proxy.fit, torch.device("cpu")) == torch.contiguous_format
    loss = build_loss(cfg, initial_raw("miou"), 7)
    torch._dynamo.reset()
    counters.clear()
    warm_up_kernels(cfg, loss, "cpu", torch.channels_last)
    batch, crop = cfg.proxy.fit.batch_size, cfg.proxy.crop_size

    def graphs_after(layout) -> int:
        before = counters["stats"]["unique_graphs"]
        logits = torch.randn(batch, 7, crop, crop).contiguous(memory_format=layout)
        loss(logits.requires_grad_(True), torch.randint(0, 7, (batch, crop, crop))).backward()
        return counters["stats"]["unique_graphs"] - before

    assert graphs_after(torch.channels_last) == 0
    assert graphs_after(torch.contiguous_format) > 0
    assert fused._enabled, "compilation failed on this machine"


def test_halving_is_on_by_default_only_where_samples_wait_for_slots(tmp_path):
    from search.steps import halving_rungs

    cfg = tiny_config(tmp_path, **{"search.rungs": "0", "proxy.fit.iterations": "300"})
    cfg.ppo.samples = 8
    assert halving_rungs(cfg, concurrent=2) == 3  # a 2-core laptop: 8 samples, 2 at a time
    assert halving_rungs(cfg, concurrent=8) == 1
    cfg.ppo.samples = 32
    assert halving_rungs(cfg, concurrent=32) == 1  # 8 GPUs x 4 models: all at once
    assert halving_rungs(cfg, concurrent=16) == 3
    cfg.proxy.fit.iterations = 8  # too short for 3 rungs of a reduction of 3
    assert halving_rungs(cfg, concurrent=2) == 1
    cfg.search.rungs = 2  # set explicitly: kept
    assert halving_rungs(cfg, concurrent=32) == 2


@pytest.mark.parametrize("fault,status", [("oom", "ok"), ("oom-always", "machine")])
def test_out_of_memory_runs_again_once_and_is_the_machines_fault(tmp_path, fault, status):
    from search.trial import run_trial

    tiny = {
        "proxy.fit.iterations": "4", "proxy.fit.batch_size": "4", "proxy.crop_size": "24",
        "data.params": "{size: 32, train: 24, holdout: 12, val: 4, test: 4}",
    }  # fmt: skip
    result = run_trial(tiny_config(tmp_path, **tiny), initial_raw("miou"), seed=3, fault=fault)
    assert result["status"] == status, result["reason"]
    if status == "machine":
        assert "out of memory on 2 attempts" in result["reason"]
    else:  # where the (second attempt's) seconds went, for trials.csv
        parts = [result[k] for k in ("setup_s", "train_s", "state_s", "eval_s")]
        assert all(v >= 0 for v in parts) and result["train_s"] > 0
        assert sum(parts) <= result["seconds"]


def test_a_trial_the_machine_failed_leaves_the_policy_update_neutral(tmp_path):
    """Out of memory twice (or a worker that kept dying) says nothing of the loss: the sample
    counts with the baseline, an advantage of 0, not with the step's worst reward."""
    searcher = tune_searcher(tiny_config(tmp_path), tmp_path)
    jobs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    for trial_id, config in jobs.items():
        result = toy_result(raw_of(config))
        if trial_id == "t2":
            result = {"status": "machine", "reason": "out of memory on 2 attempts"}
        searcher.on_trial_complete(trial_id, result)
    rows = {r["trial_id"]: r for r in read_csv(tmp_path / "trials.csv")}
    assert rows["t2"]["status"] == "machine"
    assert float(rows["t2"]["reward_used"]) == float(rows["t0"]["reward_used"])


AFFINITY_SCRIPT = """
import os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # as taskset -c, Slurm or a cpuset
from search.run import parse_args, plan
from segnets.engine import usable_cpus
cfg, gpus, _ = plan(parse_args(["miou", "8", "data=shapes", "data.root=" + sys.argv[1]]))
print("usable", usable_cpus(), "slots", cfg.search.cpu_slots, "gpus", gpus)
"""


def test_cpu_counts_follow_the_affinity_not_the_host(tmp_path):
    """A process limited to one core sees one usable core (not os.cpu_count()'s host), and
    NUM_GPUS=8 on a CPU-only machine runs as many trials as there are usable cores, saying so."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", AFFINITY_SCRIPT, str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 CPU slots asked, 1 usable cores: 1 trials at once" in done.stdout
    assert done.stdout.strip().endswith("usable 1 slots 1 gpus 0")


def test_loader_workers_take_the_process_threads_up_to_a_cap():
    from segnets.engine import MAX_LOADER_WORKERS, FitConfig, loader_workers

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert loader_workers(FitConfig(), torch.device("cuda")) == 2  # one for the trainer
        torch.set_num_threads(100)  # a one-GPU retrain on a big host
        assert loader_workers(FitConfig(), torch.device("cuda")) == MAX_LOADER_WORKERS
        assert loader_workers(FitConfig(), torch.device("cpu")) == 0
        assert loader_workers(FitConfig(workers=12), torch.device("cuda")) == 12
    finally:
        torch.set_num_threads(threads)


CONFIRM = {"search.confirm_fidelity": "0.2", "search.confirm_top_k": "1"}


def confirm_aware(config):
    """On the proxy the larger raw[0] wins; at the confirmation's fidelity the ranking turns
    over (the smaller raw[0] wins), and cross-entropy stays below both."""
    result = toy_result(raw_of(config))
    if config.get("fidelity") == "confirm":
        result["miou"] = 0.1 if config.get("loss") == "ce" else 0.9 - 0.5 * raw_of(config)[0]
    return result


def test_the_confirmation_fidelity_comes_from_the_profiles_retrain_and_is_checked(tmp_path):
    from search.config import confirm_iterations

    cfg = tiny_config(tmp_path, **{"data": "shapes", **CONFIRM})
    assert (cfg.confirm.model, cfg.confirm.model_args) == ("lite", {"width": 32})  # retrain's
    assert cfg.confirm.crop_size == 64 and confirm_iterations(cfg) == 300  # 0.2 x 1500
    cfg.search.confirm_fidelity = 0
    assert confirm_iterations(cfg) == cfg.proxy.fit.iterations
    with pytest.raises(ConfigError, match="search.confirm_fidelity must be in \\[0, 1\\], got 1.5"):
        tiny_config(tmp_path, **{"search.confirm_fidelity": "1.5"})


def test_the_export_follows_the_reward_at_the_confirmation_fidelity(tmp_path):
    cfg = tiny_config(tmp_path, **CONFIRM)
    suggested = drive(tune_searcher(cfg, tmp_path), results=confirm_aware)
    confirm = [c for c in suggested if c["phase"] == "confirm"]
    assert confirm and all(c["fidelity"] == "confirm" and c["iterations"] == 300 for c in confirm)
    assert all(c.get("fidelity", "proxy") == "proxy" for c in suggested if c["phase"] == "search")
    summary = json.loads((tmp_path / "summary.json").read_text())
    scores = summary["candidates"]
    assert summary["reward"] == max(scores.values()) and summary["best"] != "cross-entropy"
    # the proxy's favourite (largest raw[0] among the candidates) is not what was exported
    raw0 = {c["candidate"]: raw_of(c)[0] for c in confirm if c.get("loss") != "ce"}
    assert summary["best"] == min(raw0, key=raw0.get) != max(raw0, key=raw0.get)
    assert summary["confirm_iterations"] == 300 * len(confirm)
    rows = read_csv(tmp_path / "trials.csv")
    assert {r["fidelity"] for r in rows if r["phase"] == "confirm"} == {"confirm"}


def test_a_search_resumed_in_the_confirmation_round_ends_the_same(tmp_path):
    cfg = tiny_config(tmp_path, **CONFIRM)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    reference = drive(tune_searcher(cfg, tmp_path / "a"), results=confirm_aware)
    first_confirm = next(i for i, c in enumerate(reference) if c["phase"] == "confirm")
    interrupted = tune_searcher(cfg, tmp_path / "b")
    for i in range(first_confirm + 2):  # the steps, then two confirmation trials handed out
        config = interrupted.suggest(f"t{i}")
        if i < first_confirm + 1:
            interrupted.on_trial_complete(f"t{i}", confirm_aware(config))
    interrupted.save(str(tmp_path / "state.pkl"))
    resumed = tune_searcher(cfg, tmp_path / "b")
    resumed.restore(str(tmp_path / "state.pkl"))
    (trial_id,) = resumed.running
    job = resumed.running[trial_id]
    resumed.on_trial_complete(trial_id, confirm_aware(job | {"raw_0": job["raw"][0]}))
    drive(resumed, results=confirm_aware)
    ours = json.loads((tmp_path / "b" / "summary.json").read_text())
    theirs = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (ours["best"], ours["reward"], ours["raw"]) == (
        theirs["best"],
        theirs["reward"],
        theirs["raw"],
    )


def test_a_confirmation_trial_trains_the_confirmation_settings(tmp_path):
    """At fidelity "confirm" a trial is exactly a proxy trial whose proxy were the confirmation
    settings (its network, crops, schedule over f x its iterations) scored on whole images."""
    from dataclasses import asdict

    from search.config import ProxyConfig
    from search.trial import run_trial

    tiny = {
        "proxy.fit.iterations": "4", "proxy.fit.batch_size": "4", "proxy.crop_size": "24",
        "data.params": "{size: 32, train: 24, holdout: 12, val: 4, test: 4}",
        "confirm.model_args": "{width: 4}", "confirm.crop_size": "16",
        "confirm.fit.iterations": "10", "confirm.fit.batch_size": "2",
        "search.confirm_fidelity": "0.5",
    }  # fmt: skip
    cfg = tiny_config(tmp_path, **tiny)
    raw = initial_raw("miou")
    confirmed = run_trial(cfg, raw, seed=3, fidelity="confirm")
    as_proxy = tiny_config(tmp_path, **tiny)
    settings = asdict(cfg.confirm) | {"eval_crop": None}
    settings["fit"] = replace(cfg.confirm.fit, iterations=5)
    as_proxy.proxy = ProxyConfig(**settings)
    plain = run_trial(as_proxy, raw, seed=3)
    assert confirmed["status"] == plain["status"] == "ok"
    assert all(confirmed[k] == plain[k] for k in ("miou", "macc", "bf1"))
    assert confirmed["miou"] != run_trial(cfg, raw, seed=3)["miou"]  # not the proxy's


def test_the_cost_is_estimated_after_step_1_and_summed_in_the_summary(tmp_path, capsys):
    """Step 1's seconds per proxy iteration x the planned iterations (steps and, at fidelity 0,
    the confirmation round), with half a GPU per trial also in GPU-hours."""
    from search.steps import planned_iterations

    cfg = tiny_config(tmp_path)
    cfg.proxy.fit.iterations = 100

    def half_gpu(config):  # 0.2 s per trained iteration
        trained = config["iterations"]
        return toy_result(raw_of(config)) | {"seconds": 0.2 * trained, "gpu_share": 0.5}

    suggested = drive(tune_searcher(cfg, tmp_path), results=half_gpu)
    proxy, confirm_trials = planned_iterations(cfg)
    assert (proxy, confirm_trials) == (2 * 4 * 100, 6 * 2)  # one rung; 6 candidates x 2 seeds
    hours = (proxy + confirm_trials * 100) * 0.2 / 3600
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[search] step 1:"))
    assert line == (
        f"[search] step 1: 200 ms per proxy iteration, so the steps take about {hours:.2f} "
        f"trial-hours with the confirmation ({hours / 2:.2f} GPU-hours)"
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(suggested) == 8 + 12 and summary["trial_hours"] == pytest.approx(hours)
    assert summary["gpu_hours"] == pytest.approx(hours / 2)
    assert {row["gpu_share"] for row in read_csv(tmp_path / "trials.csv")} == {"0.5"}
