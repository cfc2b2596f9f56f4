"""The real-data path end to end: generated VOC-format (both SBD layouts) and Cityscapes-format
trees through the real profiles and the real commands, with tiny overrides only (a small
backbone without ImageNet weights, few iterations, small crops). They go through the real
readers, the rescale / cat_max_ratio crop / photometric transforms, the holdout split and
whole-image evaluation."""

import json
import os
import subprocess
from pathlib import Path

import fixtures_datasets as fx

from data import build_dataset

REPO = Path(__file__).resolve().parent.parent
# the reference's DeepLabV3+ with the aux head, at test size: R18, OS 16, narrow heads, random init
SMALL_NET = (
    "{backbone: resnet18, output_stride: 16, aux: true, aspp_channels: 16, "
    "low_level_channels: 8, aux_channels: 16, pretrained_backbone: none}"
)


def launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [str(REPO / "launch.sh"), *args], capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_a_search_on_a_voc_tree(tmp_path):
    ids = fx.make_voc_tree(tmp_path / "data", "mmseg")  # the two-process retrain has DeepLab's
    done = launch(
        "search", "miou", "data=voc", f"data.root={tmp_path / 'data'}",
        f"--results={tmp_path / 'results'}",
        "ppo.steps=1", "ppo.samples=2", "search.confirm_top_k=0", "search.confirm_seeds=1",
        f"proxy.model_args={SMALL_NET}", "proxy.crop_size=64", "proxy.scale=[256, 64]",
        "proxy.eval_scale=[256, 64]", "proxy.eval_crop=64", "proxy.eval_batch_size=4",
        "proxy.fit.iterations=3", "proxy.fit.batch_size=4", "ray.dashboard=false",
        "search.rungs=1",
    )  # fmt: skip
    assert "[voc] train split: 40 images (aug.txt): 24 with VOC labels" in done.stdout
    (run_dir,) = (tmp_path / "results").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed"] == 0 and 0 <= summary["reward"] <= 1
    assert (run_dir / "miou_bezier.yaml").is_file()
    # the reward images are every 10th of the VOC-labelled train ids (val's label style)
    holdout = build_dataset("voc", tmp_path / "data", "holdout")
    assert holdout.ids == ids["train"][::10]


def test_a_cityscapes_retrain_with_the_ce_baseline(tmp_path):
    fx.make_cityscapes_tree(tmp_path / "data" / "cityscapes")
    launch(
        "retrain", "miou_bezier.yaml", "data=cityscapes", f"data.root={tmp_path / 'data'}",
        f"--results={tmp_path / 'results'}", "--baseline", "ce",
        f"retrain.model_args={SMALL_NET}", "retrain.crop_size=64", "retrain.scale=[256, 128]",
        "retrain.eval_scale=[256, 128]", "retrain.fit.iterations=4", "retrain.fit.batch_size=8",
        "retrain.fit.eval_every=2", "retrain.fit.checkpoint_every=2",
    )  # fmt: skip
    (run_dir,) = (tmp_path / "results").glob("miou_bezier-cityscapes-*")
    compared = json.loads((run_dir / "comparison.json").read_text())
    assert compared["target"] == "miou" and set(compared["losses"]) == {"ce", "miou_bezier"}
    assert all(0 <= v <= 1 for losses in compared["losses"].values() for v in losses.values())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["iteration"] == 4 and final["data"] == "cityscapes"


def test_a_two_process_retrain_on_a_voc_tree(tmp_path):
    fx.make_voc_tree(tmp_path / "data", "deeplab")
    done = launch(
        "retrain", "biou_bezier.yaml", "2", "data=voc", f"data.root={tmp_path / 'data'}",
        f"--results={tmp_path / 'results'}",
        f"retrain.model_args={SMALL_NET}", "retrain.crop_size=64", "retrain.scale=[256, 64]",
        "retrain.eval_scale=[256, 64]", "retrain.fit.iterations=3", "retrain.fit.batch_size=16",
        "retrain.fit.eval_every=0", "retrain.fit.checkpoint_every=0",
    )  # fmt: skip
    assert "[voc] train split: 40 images (train_aug.txt)" in done.stdout
    (run_dir,) = (tmp_path / "results").iterdir()
    final = json.loads((run_dir / "final.json").read_text())
    assert final["processes"] == 2 and 0 <= final["biou"] <= 1 and final["iteration"] == 3
