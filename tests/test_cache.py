"""The proxy's image cache (data/cache.py): built once, shared, keyed by what it holds, and
the same crops as decoding the files, up to the resampling of an already shrunk image; the
reward split's cache, the same items as decoding it."""

import os
import subprocess
import sys

import fixtures_datasets as fx
import pytest
import torch

from data import build_dataset
from data.cache import CachedImages, cached_dataset
from experiments.config import DataConfig, TrainSettings, build_train_set
from search.config import resolve
from search.trial import build_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def voc_settings(**changes) -> TrainSettings:
    """The VOC proxy's augmentation: fit 512 x 128 times 0.5-2, 128 px crops."""
    base = dict(crop_size=128, scale=[512, 128], cat_max_ratio=0.75, cache_images=True)
    return TrainSettings(**(base | changes))


def test_the_cache_is_built_once_keyed_and_rebuilt_when_its_parameters_change(tmp_path, capsys):
    fx.make_voc_tree(tmp_path, "deeplab", train=12, sbd=6, val=3)
    data = DataConfig(name="voc", root=str(tmp_path))
    dataset = build_train_set(data, voc_settings(), without_holdout=True)
    folders = sorted((tmp_path / "cache").iterdir())
    assert [f.name.startswith("vocsegmentation-") for f in folders] == [True]
    assert "[cache] decoding 16 images" in capsys.readouterr().out  # 18 less 2 held out
    assert len(dataset) == 16 and dataset.num_classes == 21
    pixels = folders[0] / "pixels.u8"
    written = pixels.stat().st_mtime_ns

    again = build_train_set(data, voc_settings(), without_holdout=True)  # another trial
    assert "[cache]" not in capsys.readouterr().out and pixels.stat().st_mtime_ns == written
    assert torch.equal(torch.from_numpy(again.index), torch.from_numpy(dataset.index))

    build_train_set(data, voc_settings(), without_holdout=False)  # other images: another key
    build_train_set(data, voc_settings(scale=[256, 64]), without_holdout=True)  # another size
    assert len(list((tmp_path / "cache").iterdir())) == 3
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary folder left behind


def test_cached_images_are_shrunk_to_what_the_rescale_can_ask_for(tmp_path):
    fx.make_voc_tree(tmp_path, "deeplab", train=6, sbd=2, val=2)
    source = build_dataset("voc", tmp_path, "train")
    cached = cached_dataset(source, (1024, 256), tmp_path / "cache", transform=None)
    for i in range(len(source)):
        (image, target), (small, small_target) = source[i], cached[i]
        h, w = image.shape[-2:]
        factor = min(1024 / max(h, w), 256 / min(h, w))
        if factor < 1:  # shrunk to fit (1024, 256), keeping the aspect ratio
            assert small.shape[-2:] == (round(h * factor), round(w * factor))
        else:
            assert torch.equal(small, image) and torch.equal(small_target, target)
        assert small.dtype == torch.uint8 and small_target.dtype == torch.int64
        assert set(small_target.unique().tolist()) <= set(target.unique().tolist())


def test_concurrent_builders_end_with_one_cache(tmp_path):
    """Two processes (two trials starting at once) build the same cache: one folder results,
    and both read the same index."""
    fx.make_voc_tree(tmp_path, "deeplab", train=8, sbd=4, val=2)
    script = (
        "import sys; from experiments.config import DataConfig, TrainSettings, build_train_set;"
        f"d = build_train_set(DataConfig(name='voc', root={str(tmp_path)!r}),"
        " TrainSettings(crop_size=64, scale=[256, 64], cache_images=True));"
        "print(len(d), int(d.index[:, 0].sum()))"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    runs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0].strip().splitlines()[-1] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs[0] == outputs[1]
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.parametrize(
    ("name", "eval_scale"),
    [("voc", None), ("cityscapes", "[128, 64]"), ("cityscapes", None)],
)
def test_the_cached_reward_set_gives_the_decoded_samples(tmp_path, name, eval_scale):
    """The search's reward split from the image cache (proxy.cache_images) is the one decoded
    from the files, value for value: cached at the size the evaluation resizes to (VOC: fit
    512 x 128, then a 128 px centre crop; the Cityscapes tree's 256 x 128 images shrunk to
    128 x 64 as 2048 x 1024 ones are to 512 x 256, or kept and enlarged by the transform)."""
    if name == "voc":
        fx.make_voc_tree(tmp_path, "deeplab", train=30, sbd=4, val=3)
    else:
        fx.make_cityscapes_tree(tmp_path / "cityscapes", train=30, val=2)
    words = {"data": name, "data.root": str(tmp_path)}
    if eval_scale:
        words["proxy.eval_scale"] = eval_scale
    cached = build_datasets(resolve("miou", words | {"proxy.cache_images": "true"}))[1]
    decoded = build_datasets(resolve("miou", words | {"proxy.cache_images": "false"}))[1]
    assert isinstance(cached, CachedImages) and not isinstance(decoded, CachedImages)
    assert len(cached) == len(decoded) == 3  # images 0, 10, 20 of the train list
    for (image, target), (want_image, want_target) in zip(cached, decoded, strict=True):
        assert image.dtype == torch.float32 and target.dtype == torch.int64
        assert torch.equal(image, want_image) and torch.equal(target, want_target)
    stored = [tuple(int(v) for v in row[1:]) for row in cached.index]  # (h, w) in the cache
    sources = [tuple(i.shape[-2:]) for i, _ in build_dataset(name, tmp_path, "holdout")]
    shrunk = [s < source for s, source in zip(stored, sources, strict=True)]
    assert all(shrunk) if name == "voc" or eval_scale else not any(shrunk)
