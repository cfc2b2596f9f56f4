"""Retrain: the shipped files, end to end through ./launch.sh retrain (a search export, a preset
with 2 gloo DDP processes and the CE comparison), resume after a kill, one-line errors."""

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_searcher import drive, tiny_config, tune_searcher

from experiments.config import ConfigError
from retrain.config import find_file, resolve
from retrain.train import evaluation_points, make_loss
from surrogates import METRICS, PRESETS

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "data.params={size: 32, train: 48, holdout: 12, val: 8, test: 4}",
    "retrain.crop_size=24",
    "retrain.model_args={width: 8}",
    "retrain.fit.iterations=30",
    "retrain.fit.batch_size=4",
    "retrain.fit.eval_every=10",
    "retrain.fit.checkpoint_every=10",
    "retrain.fit.log_every=10",
]


def retrain(args, results, data_root, **popen):
    """./launch.sh retrain FILE [NUM_GPUS] with the TINY settings, then the test's own words
    (which override them)."""
    if args and args[0] != "--resume":
        head = 2 if len(args) > 1 and args[1].isdigit() else 1
        args = [*args[:head], f"data.root={data_root}", *TINY, *args[head:]]
    command = [str(REPO / "launch.sh"), "retrain", *args, f"--results={results}"]
    if popen:
        return subprocess.Popen(command, text=True, **popen)
    return subprocess.run(command, text=True, capture_output=True, timeout=600)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("metric", METRICS)
def test_shipped_voc_files_are_the_published_vectors_with_the_reference_settings(metric, tmp_path):
    cfg = resolve(find_file(f"{metric}_bezier.yaml"), {"data": "voc"}, str(tmp_path))
    loss = make_loss(cfg, 21)
    assert loss.theta == PRESETS[f"asl-voc-{metric}"]  # exactly, SPEC A§7
    assert loss.tolerance == 5 and loss.drop_background == (metric == "biou")
    assert loss.group_size == 8  # the reference's 8 images per GPU, on any number of GPUs
    settings = cfg.retrain  # SPEC A§6
    assert settings.model == "deeplabv3plus"
    assert settings.model_args == {
        "backbone": "resnet101",
        "output_stride": 8,
        "aux": True,
        "pretrained_backbone": "imagenet",
    }
    fit = settings.fit
    assert (settings.crop_size, fit.batch_size, fit.iterations) == (512, 32, 10_000)
    assert settings.cat_max_ratio == 0.75
    assert (settings.fit.lr, settings.fit.head_lr_mult, settings.fit.aux_weight) == (0.02, 10, 0.4)
    assert settings.fit.optimizer == "sgd" and settings.drop_background
    assert settings.fit.sync_bn  # SyncBN across GPUs, as the reference retrain


def test_shapes_profile_and_ce_file(tmp_path):
    cfg = resolve(find_file("ce"), {}, str(tmp_path))  # data=auto: no VOC here -> shapes
    assert cfg.data.name == "shapes" and cfg.loss == {"name": "ce"}
    assert cfg.retrain.model == "lite" and cfg.retrain.tolerance == 2
    stated = resolve(find_file("miou_bezier"), {"loss.num_classes": "7"}, str(tmp_path))
    assert make_loss(stated, 7).num_classes == 7  # a file may state the class count


def test_the_loop_stops_at_every_evaluation_and_checkpoint_and_at_the_end():
    assert evaluation_points(0, 30, [10, 10]) == [10, 20, 30]
    assert evaluation_points(0, 2000, [500, 300]) == [
        300,
        500,
        600,
        900,
        1000,
        1200,
        1500,
        1800,
        2000,
    ]
    assert evaluation_points(1000, 2000, [500, 0]) == [1500, 2000]  # resumed at 1000
    assert evaluation_points(0, 25, [0, 0]) == [25]
    assert evaluation_points(30, 30, [10, 10]) == []  # a checkpoint of the finished run


def test_retrain_a_search_export(tmp_path):
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    drive(tune_searcher(tiny_config(tmp_path), search_dir))  # the real export, toy rewards
    exported = search_dir / "miou_bezier.yaml"
    done = retrain([str(exported)], tmp_path / "results", tmp_path / "data")
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (tmp_path / "results").iterdir()
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["10", "20", "30"]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["iteration"] == 30 and all(0 <= final[m] <= 1 for m in METRICS)
    searched = json.loads((search_dir / "summary.json").read_text())["theta"]
    assert final["loss"]["theta"] == pytest.approx(searched, abs=1e-7)
    # the checkpoint loads with weights_only and carries the resolved config it was trained with
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)
    assert (
        checkpoint["iteration"] == 30 and checkpoint["config"]["retrain"]["fit"]["iterations"] == 30
    )
    assert checkpoint["config"]["loss"]["theta"] == pytest.approx(searched, abs=1e-7)
    assert "[retrain] done in" in done.stdout


def test_two_process_ddp_retrain_with_the_ce_comparison(tmp_path):
    done = retrain(["macc_bezier.yaml", "2", "--baseline", "ce"], tmp_path, tmp_path / "data")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPU, DDP over 2 processes" in done.stdout
    runs = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.name != "data")
    assert runs == ["ce", "macc_bezier"]  # one run folder each, the baseline beside it
    (run_dir,) = tmp_path.glob("macc_bezier-*")
    table = (run_dir / "comparison.md").read_text()
    assert "| loss | miou | fwiou | biou | macc* | gacc | bf1 |" in table
    assert re.search(r"\| ce \|", table) and re.search(r"\| macc_bezier \|", table)
    assert json.loads((run_dir / "final.json").read_text())["processes"] == 2
    # each rank draws its own dropout masks, and the checkpoint carries each rank's RNG states
    rng = torch.load(run_dir / "checkpoints" / "latest.pth", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    # a second comparison reuses the finished baseline
    again = retrain(["macc_bezier.yaml", "2", "--baseline", "ce"], tmp_path, tmp_path / "data")
    assert again.returncode == 0 and "baseline: reusing" in again.stdout


def test_resume_after_a_kill_ends_with_the_same_metrics(tmp_path):
    reference = retrain(["miou_bezier.yaml"], tmp_path / "a", tmp_path / "data")
    assert reference.returncode == 0, reference.stderr
    child = retrain(
        ["miou_bezier.yaml"],
        tmp_path / "b",
        tmp_path / "data",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        runs = list((tmp_path / "b").glob("*/checkpoints/latest.pth"))
        if runs:
            break
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)  # a crash after the first checkpoint (iteration 10)
    child.wait()
    (run_dir,) = (tmp_path / "b").iterdir()
    assert not (run_dir / "final.json").exists()
    resumed = retrain(["--resume", str(run_dir)], tmp_path / "b", tmp_path / "data")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (ref_dir,) = (tmp_path / "a").iterdir()
    ours, theirs = read_csv(run_dir / "metrics.csv"), read_csv(ref_dir / "metrics.csv")
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in ours]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in theirs]
    again = retrain(["--resume", str(run_dir)], tmp_path / "b", tmp_path / "data")
    assert again.returncode == 2 and "has finished (final.json)" in again.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["nothing.yaml"], "retrain file 'nothing.yaml' not found"),
        (["{bad}"], "not found"),
        (["miou_bezier.yaml", "retrain.fit.iteratoins=5"], "did you mean 'retrain.fit.iterations'"),
        (["miou_bezier.yaml", "loss.theta=[0.5, 0.5]"], "theta"),
        (["miou_bezier.yaml", "0"], "NUM_GPUS must be a positive integer"),
        (["--resume", "/tmp"], "is not a retrain run folder"),
        (["miou_bezier.yaml", "retrain.prediction=argmax"], "unknown retrain.prediction"),
        (["miou_bezier.yaml", "loss.num_classes=21"], "num_classes=21 but shapes has 7 classes"),
        (["miou_bezier.yaml", "retrain.fit.iterations=-5"], "retrain.fit.iterations must be > 0"),
        (["miou_bezier.yaml", "retrain.model_args={width:32}"], r"write \{width: 32\}"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    done = retrain(args, tmp_path / "results", tmp_path / "data")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "results").exists()


def test_a_file_without_a_loss_section_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: shapes}\n")
    done = retrain([str(bad)], tmp_path / "results", tmp_path / "data")
    assert done.returncode == 2 and "expected a 'loss:' mapping" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("loss: {name: ce}\nretrain: 5\n", "'retrain' must be a mapping, got 5"),
        ("loss: {name: ce}\nsearch: [1, 2]\n", "'search' must be a mapping"),
        ("loss: {name: ce}\nname: [a]\n", "'name' must be a string"),
        ("loss: {name: surrogate, metric: miou, theta:identity}\n", "'theta:identity' has no"),
    ],
)
def test_a_file_with_a_section_of_the_wrong_type_is_rejected(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as error:  # the command prints it in one line, exit 2
        resolve(bad, {}, str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_out_of_range_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="retrain.fit.iterations must be > 0, got -5"):
        resolve(find_file("miou_bezier"), {"retrain.fit.iterations": "-5"}, str(tmp_path))
    with pytest.raises(ConfigError, match="retrain.fit.lr must be a finite number, got nan"):
        resolve(find_file("miou_bezier"), {"retrain.fit.lr": "nan"}, str(tmp_path))


def test_loss_groups_may_span_processes_and_the_batch_must_split(tmp_path):
    from retrain.run import check_builds

    tiny = {"data.params": "{size: 32, train: 8, holdout: 4, val: 4, test: 4}"}
    cfg = resolve(find_file("miou_bezier"), {**tiny, "retrain.loss_group_size": "8"}, str(tmp_path))
    # the VOC profile on the common 8-GPU machine: 4 images per process, groups of 8
    cfg.processes, cfg.retrain.fit.batch_size = 8, 32
    check_builds(cfg)
    cfg.retrain.fit.batch_size = 36
    with pytest.raises(ConfigError, match="batch_size=36 does not split over 8 processes"):
        check_builds(cfg)


def test_a_file_may_name_its_dataset_as_a_plain_word(tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text("loss: {name: ce}\ndata: shapes\n")
    cfg = resolve(short, {}, str(tmp_path))
    assert cfg.data.name == "shapes" and cfg.retrain.model == "lite"  # the shapes profile
