"""The folder dataset (data/folder.py, data/dataset_file.py) on generated trees in the real
formats: each layout and mask encoding decoded against the arrays written, the inference and
its printed line, dataset.yaml errors, unmatched files, the holdout, `data=FILE.yaml` through
the configs, and a tiny search and retrain end to end through ./launch.sh."""

import json
import os
import re
import subprocess
from pathlib import Path

import fixtures_own_data as fo
import numpy as np
import pytest
import torch

from data import build_dataset
from data.folder import read_folder
from data.masks import VOID
from experiments.config import (
    ConfigError,
    DataConfig,
    TrainSettings,
    build_train_set,
    dataset_choice,
)
from retrain.config import find_file
from retrain.config import resolve as retrain_resolve
from search.config import resolve as search_resolve

# isort: split
from torchvision import tv_tensors

REPO = Path(__file__).resolve().parent.parent


def assert_reads(dataset, written: dict, expected=lambda mask: mask) -> None:
    """Every item is its own image and `expected(mask)`, by stem, as the reader's types."""
    assert len(dataset) == len(written)
    for index, image_path in enumerate(dataset.images):
        pixels, mask = written[image_path.stem]
        assert dataset.labels[index].stem == image_path.stem
        image, target = dataset[index]
        assert type(image) is tv_tensors.Image and image.dtype == torch.uint8
        assert type(target) is tv_tensors.Mask and target.dtype == torch.int64
        assert np.array_equal(image.permute(1, 2, 0).numpy(), pixels)
        assert np.array_equal(target.numpy(), expected(mask))


# --- layouts and encodings ----------------------------------------------------------------------


def test_split_folders_with_index_masks_infer_the_classes_and_say_so(tmp_path, capsys):
    train = fo.write_pairs(
        tmp_path / "images" / "train", tmp_path / "masks" / "train", fo.index_masks("t", 3, 4)
    )
    val = fo.write_pairs(
        tmp_path / "images" / "val", tmp_path / "masks" / "val", fo.index_masks("v", 2, 4), seed=9
    )
    dataset = build_dataset("folder", tmp_path, "train")
    assert (dataset.num_classes, dataset.ignore_index, dataset.split) == (4, 255, "train")
    assert dataset.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert dataset.coding.encoding == "index" and dataset.unmatched == []
    assert_reads(dataset, train)
    assert_reads(build_dataset("folder", tmp_path, "val"), val)
    out = capsys.readouterr().out
    assert f"[folder] {tmp_path}: images/<split> + masks/<split>; train 3, val 2; " in out
    assert "4 classes inferred from the mask values 0, 1, 2, 3 (255 void) in all 5 masks" in out
    assert out.count("[folder]") == 1  # once per process


def test_split_first_layout_with_palette_masks_and_named_classes(tmp_path):
    """<split>/images + <split>/masks (the CamVid guides'); a palette PNG's indices are ids."""
    masks = fo.index_masks("x", 3, 3)
    written = fo.write_pairs(
        tmp_path / "train" / "img", tmp_path / "train" / "labels", masks, "palette"
    )
    fo.write_pairs(tmp_path / "val" / "img", tmp_path / "val" / "labels", masks, "palette")
    fo.write_spec(tmp_path, {"classes": ["sky", "road", "car"]})
    dataset = build_dataset("folder", tmp_path, "train")
    assert dataset.class_names == ("sky", "road", "car") and dataset.num_classes == 3
    assert_reads(dataset, written)


def test_rgb_masks_decode_through_the_class_colours(tmp_path):
    colours = {0: (0, 0, 0), 1: (128, 64, 128), 2: (220, 20, 60), VOID: (255, 255, 255)}
    ids = fo.stripes([0, 1, 2, VOID], marker=2)
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for class_id, colour in colours.items():
        rgb[ids == class_id] = colour
    written = fo.write_pairs(tmp_path / "images", tmp_path / "masks", {"a": rgb, "b": rgb}, "rgb")
    fo.write_spec(
        tmp_path,
        {
            "classes": [{"name": n, "colour": list(colours[i])} for i, n in enumerate("xyz")],
            "void_colours": [[255, 255, 255]],
            "splits": {"train": "train.txt", "val": "train.txt"},
        },
    )
    (tmp_path / "train.txt").write_text("a\nb\n")
    dataset = build_dataset("folder", tmp_path, "train")
    assert dataset.coding.encoding == "rgb"  # every class has a colour: rgb without saying so
    assert_reads(dataset, written, lambda mask: ids)

    rgb[0, 0] = (1, 2, 3)  # a colour no class has
    fo.save_mask(dataset.labels[0], rgb, "rgb")
    with pytest.raises(ValueError, match=r"mask .*a\.png holds raw value\(s\) \(1, 2, 3\)"):
        dataset[0]


def test_colour_masks_without_a_dataset_file_are_refused_with_the_fix(tmp_path):
    rgb = np.zeros((fo.HEIGHT, fo.WIDTH, 3), dtype=np.uint8)
    rgb[:, :5] = (7, 8, 9)
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", {"a": rgb, "b": rgb}, "rgb")
    message = r"[ab]\.png is a colour image \(\(0, 0, 0\), \(7, 8, 9\), ...\): write mask_enc"
    with pytest.raises(ValueError, match=message):
        build_dataset("folder", tmp_path, "train")


def test_binary_masks_of_0_and_255_are_inferred_as_binary_and_said(tmp_path, capsys):
    masks = {f"m{k}": fo.stripes([0, 255, 0], marker=255 * (k % 2)) for k in range(5)}
    written = fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    dataset = build_dataset("folder", tmp_path, "train")
    assert dataset.coding.encoding == "binary" and dataset.num_classes == 2
    assert dataset.class_names == ("background", "foreground")
    assert_reads(dataset, part(written, dataset), _binary)
    out = capsys.readouterr().out
    assert "2 classes inferred from masks of only 0 and 255 (all 5 masks): read as binary" in out
    assert "write mask_encoding: binary in dataset.yaml" in out


def test_binary_masks_of_0_and_1_are_two_classes(tmp_path, capsys):
    masks = {f"m{k}": fo.stripes([0, 1], marker=k % 2) for k in range(5)}
    written = fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    dataset = build_dataset("folder", tmp_path, "val")
    assert dataset.coding.encoding == "index" and dataset.num_classes == 2
    assert_reads(dataset, part(written, dataset))
    assert "(binary 0/1)" in capsys.readouterr().out


def test_binary_encoding_said_in_the_file_reads_0_1_and_255(tmp_path):
    masks = {"a": fo.stripes([0, 255]), "b": fo.stripes([0, 1])}
    written = fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    fo.write_spec(tmp_path, {"mask_encoding": "binary", "split_ratio": 0.5})
    train = build_dataset("folder", tmp_path, "train")
    val = build_dataset("folder", tmp_path, "val")
    assert train.coding.encoding == "binary" and train.num_classes == 2
    assert sorted(p.stem for p in train.images + val.images) == ["a", "b"]
    for dataset in (train, val):
        assert_reads(dataset, part(written, dataset), _binary)


def test_reduce_zero_label_and_a_class_map_from_the_file(tmp_path):
    masks = {"a": fo.stripes([0, 1, 2, 3]), "b": fo.stripes([3, 1, 0])}
    written = fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    fo.write_spec(tmp_path, {"reduce_zero_label": True, "split_ratio": 0.5})
    dataset = read_folder(tmp_path, "train")
    assert dataset.num_classes == 3  # largest value 3, less the reduced zero
    stem = dataset.images[0].stem
    expected = np.where(written[stem][1] == 0, VOID, written[stem][1].astype(np.int64) - 1)
    assert np.array_equal(dataset[0][1].numpy(), expected)

    fo.write_spec(
        tmp_path, {"class_map": {1: 0, 2: 1, 3: 1, 0: 255}, "splits": {"train": "all.txt"}}
    )
    (tmp_path / "all.txt").write_text("a\nb\n")
    dataset = read_folder(tmp_path, "train")
    table = np.array([VOID, 0, 1, 1])
    assert dataset.num_classes == 2
    assert_reads(dataset, written, lambda mask: table[mask])


def _binary(mask):
    return (mask > 0).astype(np.int64)


def part(written: dict, dataset) -> dict:
    """What was written for the images a split holds."""
    return {path.stem: written[path.stem] for path in dataset.images}


# --- splits -------------------------------------------------------------------------------------


def test_one_folder_with_split_lists_in_their_order(tmp_path):
    masks = fo.index_masks("s", 6, 3)
    written = fo.write_pairs(
        tmp_path / "imgs", tmp_path / "annotations", masks, image_suffix=".jpg"
    )
    fo.write_spec(tmp_path, {"splits": {"train": "lists/train.txt", "val": "lists/val.txt"}})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("s003\ns000.jpg\nimgs/s001.jpg\n\n")
    (tmp_path / "lists" / "val.txt").write_text("s004\ns005\n")
    train, val = read_folder(tmp_path, "train"), read_folder(tmp_path, "val")
    assert [p.stem for p in train.images] == ["s003", "s000", "s001"]
    assert [p.stem for p in val.labels] == ["s004", "s005"]
    assert np.array_equal(train[1][1].numpy(), written["s000"][1])
    with pytest.raises(ValueError, match="has no test split"):
        read_folder(tmp_path, "test")
    (tmp_path / "lists" / "val.txt").write_text("s004\nnope\n")
    with pytest.raises(ValueError, match=r"val\.txt lists 1 stem\(s\) without both .* nope"):
        read_folder(tmp_path, "val")


def test_a_seeded_ratio_splits_one_folder_the_same_way_every_time(tmp_path, capsys):
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", fo.index_masks("r", 12, 3))
    fo.write_spec(tmp_path, {"split_ratio": 0.25, "split_seed": 3})
    train, val = read_folder(tmp_path, "train"), read_folder(tmp_path, "val")
    assert (len(train), len(val)) == (9, 3)
    names = [p.name for p in train.images + val.images]
    assert sorted(names) == [f"r{k:03d}.png" for k in range(12)]  # disjoint, complete
    assert [p.name for p in val.images] == sorted(p.name for p in val.images)  # stem order
    assert val.images == read_folder(tmp_path, "val").images  # deterministic
    fo.write_spec(tmp_path, {"split_ratio": 0.25, "split_seed": 4})
    assert read_folder(tmp_path, "val").images != val.images  # the seed decides
    assert "val 3 (a seeded 25 % of all, split_seed 3)" in capsys.readouterr().out


def test_without_val_the_default_share_is_said(tmp_path, capsys):
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", fo.index_masks("r", 10, 3))
    assert len(read_folder(tmp_path, "val")) == 2
    assert "val 2 (a seeded 20 % of all, split_seed 0: no val folder or list)" in (
        capsys.readouterr().out
    )


def test_the_holdout_is_carved_from_train_never_from_val(tmp_path):
    fo.write_pairs(
        tmp_path / "images" / "train", tmp_path / "masks" / "train", fo.index_masks("t", 20, 3)
    )
    fo.write_pairs(
        tmp_path / "images" / "val", tmp_path / "masks" / "val", fo.index_masks("v", 4, 3)
    )
    train = build_dataset("folder", tmp_path, "train").images
    holdout = build_dataset("folder", tmp_path, "holdout").images
    rest = build_dataset("folder", tmp_path, "train", without_holdout=True).images
    val = build_dataset("folder", tmp_path, "val").images
    assert holdout == [train[0], train[10]]  # every 10th, as VOC's
    assert sorted(holdout + rest) == sorted(train) and not set(holdout) & set(rest)
    assert len(val) == 4 and not set(val) & set(holdout + rest)
    twice = build_dataset("folder", tmp_path, "holdout", holdout_fraction=0.5).images
    assert twice == train[::2]


def test_the_holdout_of_a_ratio_split_comes_from_its_train_part(tmp_path):
    fo.write_pairs(
        tmp_path / "images" / "train", tmp_path / "masks" / "train", fo.index_masks("t", 30, 3)
    )
    val = set(build_dataset("folder", tmp_path, "val").images)
    holdout = build_dataset("folder", tmp_path, "holdout").images
    assert len(val) == 6 and len(holdout) == 3 and not val & set(holdout)


def test_unmatched_files_are_left_out_and_listed(tmp_path, capsys):
    written = fo.write_pairs(
        tmp_path / "images" / "train", tmp_path / "masks" / "train", fo.index_masks("t", 3, 3)
    )
    fo.write_pairs(
        tmp_path / "images" / "val", tmp_path / "masks" / "val", fo.index_masks("v", 1, 3)
    )
    fo.save_image(tmp_path / "images" / "train" / "lonely.jpg", fo.image(5))
    fo.save_mask(tmp_path / "masks" / "train" / "orphan.png", fo.stripes([0, 1]))
    (tmp_path / "masks" / "train" / "notes.txt").write_text("not a mask")
    dataset = build_dataset("folder", tmp_path, "train")
    assert [p.relative_to(tmp_path).as_posix() for p in dataset.unmatched] == [
        "images/train/lonely.jpg",
        "masks/train/orphan.png",
    ]
    assert sorted(p.stem for p in dataset.images) == sorted(written)
    assert build_dataset("folder", tmp_path, "val").unmatched == []
    assert "2 unmatched file(s) left out" in capsys.readouterr().out


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"clases": ["a"]}, r"unknown key 'clases'; valid: .*; did you mean 'classes'\?"),
        ({"num_classes": "two"}, r"num_classes must be an integer, got 'two'"),
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"void": 300}, r"void must be an integer in 0\.\.255 or null, got 300"),
        ({"mask_encoding": "rgb"}, r"mask_encoding: rgb needs a colour for every class"),
        ({"mask_encoding": "png"}, r"mask_encoding: unknown encoding 'png'; valid: binary, "),
        ({"classes": [{"name": "a", "color": [1, 2]}]}, r"classes must be colours as \[r, g, b\]"),
        ({"classes": [{"name": "a", "colour": [1, 1, 1]}, "b"]}, r"classes: 1 of 2 classes have"),
        ({"classes": [{"name": "a", "colur": [1, 1, 1]}]}, r"did you mean 'colour'"),
        ({"classes": ["a", "a"]}, r"classes: the name 'a' is given twice"),
        ({"classes": ["a", "b"], "num_classes": 3}, r"num_classes: 3, but classes names 2"),
        ({"num_classes": 2, "class_map": {5: 2}}, r"class_map: raw 5 -> 2, but there are 2"),
        ({"class_map": {"5": 1}}, r"class_map must be an integer, got '5'"),
        ({"reduce_zero_label": "yes"}, r"reduce_zero_label must be true or false"),
        ({"mask_encoding": "binary", "void": 0}, r"void: applies to index masks, not binary"),
        ({"void_colours": [[1, 1, 1]]}, r"void_colours: applies to mask_encoding: rgb only"),
        ({"images": "images/{split}"}, r"images and masks go together"),
        ({"images": "{part}/x", "masks": "m"}, r"images: '\{part\}/x' may hold \{split\} only"),
        ({"splits": {"trian": "a.txt"}}, r"splits: unknown split 'trian'.*did you mean 'train'"),
        ({"splits": {"train": "a.txt"}, "split_ratio": 0.2}, r"split_ratio: give splits"),
        ({"split_ratio": 1.5}, r"split_ratio must be a number in \(0, 1\), got 1\.5"),
        (["a"], r"expected a mapping of keys"),
    ],
)
def test_dataset_file_errors_name_the_file_and_the_key(tmp_path, spec, message):
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", fo.index_masks("e", 4, 2))
    path = fo.write_spec(tmp_path, spec)
    with pytest.raises(ValueError) as error:
        build_dataset("folder", tmp_path, "train")
    first_line = str(error.value).splitlines()[0]
    assert first_line.startswith(f"{path}: ")
    assert re.search(message, first_line), first_line


def test_invalid_values_and_sizes_name_the_files(tmp_path):
    masks = {"a": fo.stripes([0, 1, 7, 9]), "b": fo.stripes([0, 1])}
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    fo.write_spec(tmp_path, {"num_classes": 2, "splits": {"train": "t.txt"}})
    (tmp_path / "t.txt").write_text("a\nb\n")
    dataset = read_folder(tmp_path, "train")
    with pytest.raises(ValueError, match=r"mask .*a\.png holds raw value\(s\) 7, 9 that its "):
        dataset[0]
    fo.save_image(dataset.images[1], np.zeros((5, 7, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"image .*b\.png is 7x5 \(WxH\) but its mask .*b\.png"):
        dataset[1]


def test_an_inferred_class_count_says_how_to_pin_it_when_a_value_exceeds_it(tmp_path):
    """A value the inference did not see (here: a mask changed after it) names the fix."""
    masks = {"a": fo.stripes([0, 1]), "b": fo.stripes([1, 0]), "c": fo.stripes([0])}
    fo.write_pairs(tmp_path / "images", tmp_path / "masks", masks)
    dataset = read_folder(tmp_path, "train")
    fo.save_mask(dataset.labels[0], fo.stripes([0, 5]))
    message = r"holds raw value\(s\) 5 .* 2 classes were inferred from all 3 masks: write num_"
    with pytest.raises(ValueError, match=message):
        dataset[0]


def test_missing_or_ambiguous_trees_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no folders of images and masks found in"):
        build_dataset("folder", tmp_path, "train")
    (tmp_path / "images").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"holds both images/ and img/"):
        build_dataset("folder", tmp_path, "train")
    with pytest.raises(ValueError, match="folder dataset not found"):
        build_dataset("folder", tmp_path / "nowhere", "train")


# --- data=path/to/dataset.yaml and the configs ----------------------------------------------------


@pytest.fixture
def described(tmp_path):
    """Images under tmp/photos, described by tmp/specs/mine.yaml (root: ../photos)."""
    photos = tmp_path / "photos"
    fo.write_pairs(
        photos / "images" / "train", photos / "masks" / "train", fo.index_masks("t", 12, 3)
    )
    fo.write_pairs(photos / "images" / "val", photos / "masks" / "val", fo.index_masks("v", 3, 3))
    spec = fo.write_spec(
        tmp_path / "specs", {"root": "../photos", "classes": ["a", "b", "c"]}, "mine.yaml"
    )
    return photos, spec


def test_data_is_a_dataset_file(described, tmp_path):
    photos, spec = described
    assert dataset_choice(str(spec), None, None) == ("folder", str(spec.resolve()))
    dataset = build_dataset("folder", spec, "train")
    assert dataset.class_names == ("a", "b", "c") and dataset.images[0].is_relative_to(photos)
    cfg = search_resolve("miou", {"data": str(spec)})
    assert (cfg.data.name, cfg.data.root) == ("folder", str(spec.resolve()))
    assert cfg.search.reward_drop_background is False  # experiments/data/folder.yaml
    retrain = retrain_resolve(find_file("ce.yaml"), {"data": str(spec)})
    assert (retrain.data.name, retrain.data.root) == ("folder", str(spec.resolve()))

    # a search's export names the folder's place; data=FILE.yaml on the command line wins
    export = tmp_path / "export.yaml"
    export.write_text(f"loss: {{name: ce}}\ndata: {{name: folder, params: {{}}, root: {photos}}}\n")
    assert retrain_resolve(export, {}).data.root == str(photos)
    assert retrain_resolve(export, {"data": str(spec)}).data.root == str(spec.resolve())
    with pytest.raises(ConfigError, match="no such dataset file"):
        dataset_choice(str(tmp_path / "missing.yaml"), None, None)
    with pytest.raises(ConfigError, match="drop data.root"):
        dataset_choice(str(spec), str(photos), None)


def test_the_image_cache_of_a_dataset_file_goes_beside_it(described):
    photos, spec = described
    data = DataConfig(name="folder", root=str(spec))
    settings = TrainSettings(crop_size=8, scale=[24, 16], cache_images=True, photometric=False)
    train = build_train_set(data, settings, without_holdout=True)
    assert len(train) == 10 and (spec.parent / "cache").is_dir()  # 12 less the holdout's 2
    image, target = train[0][:2]  # batch-wise augmentation adds the sample's draws
    assert image.shape[-2:] == target.shape[-2:] == (8, 8)


# --- end to end -----------------------------------------------------------------------------------


def launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [str(REPO / "launch.sh"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_a_search_and_a_retrain_on_a_folder_dataset(described, tmp_path):
    """The tiny search exports a retrain file that names the folder; the CE retrain reads it."""
    photos, spec = described
    results = tmp_path / "results"
    done = launch(
        "search", "miou", f"data={spec}", f"--results={results / 'search'}",
        "ppo.steps=1", "ppo.samples=2", "search.confirm_top_k=0", "search.confirm_seeds=1",
        "search.confirm_baselines=false", "search.rungs=1", "search.tolerance=1",
        "proxy.model=lite", "proxy.model_args={width: 8}", "proxy.crop_size=16",
        "proxy.scale=null", "proxy.eval_scale=null", "proxy.eval_crop=null",
        "proxy.photometric=false", "proxy.fit.iterations=3", "proxy.fit.batch_size=4",
        "proxy.fit.optimizer=adamw", "proxy.cache_images=false", "ray.dashboard=false",
    )  # fmt: skip
    assert f"[folder] {photos}: images/<split> + masks/<split>; train 12, val 3" in done.stdout
    (run_dir,) = (results / "search").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["failed"] == 0
    export = run_dir / "miou_bezier.yaml"
    assert f"root: {spec.resolve()}" in export.read_text()
    assert retrain_resolve(export, {}).data.root == str(spec.resolve())  # where to retrain

    launch(
        "retrain", "experiments/retrain/ce.yaml", f"data={spec}", "--baseline", "ce",
        f"--results={results / 'retrain'}",
        "retrain.model=lite", "retrain.model_args={width: 8}", "retrain.crop_size=16",
        "retrain.scale=null", "retrain.eval_scale=null", "retrain.photometric=false",
        "retrain.fit.iterations=4", "retrain.fit.batch_size=4", "retrain.fit.optimizer=adamw",
        "retrain.fit.eval_every=2", "retrain.fit.checkpoint_every=2", "retrain.tolerance=1",
    )  # fmt: skip
    (retrain_dir,) = (results / "retrain").iterdir()
    final = json.loads((retrain_dir / "final.json").read_text())
    assert final["data"] == "folder" and final["iteration"] == 4
