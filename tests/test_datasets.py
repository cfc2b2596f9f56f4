"""The VOC and Cityscapes readers on tiny trees written in the real formats (fixtures_datasets)."""

import os
import subprocess
from pathlib import Path

import fixtures_datasets as fx
import numpy as np
import PIL.Image
import pytest
import torch

from data.cityscapes import CLASS_NAMES as CITY_CLASSES
from data.cityscapes import LABEL_TO_TRAIN_ID, Cityscapes
from data.voc import CLASS_NAMES as VOC_CLASSES
from data.voc import VOCSegmentation

# isort: split
# (the data imports above load torchvision through data.torchvision_compat, which must come first)
from torchvision import tv_tensors
from torchvision.transforms import v2

LAUNCH = Path(__file__).resolve().parent.parent / "launch.sh"
TRAIN, VAL = ["2007_000032", "2007_000039"], ["2007_000033"]
AUG_ONLY = ["2008_000002", "2011_003276"]  # SBD ids with no SegmentationClass PNG


def voc_dir(root, *parts):
    return root.joinpath("VOCdevkit", "VOC2012", *parts)


def city_files(root, split):
    images = sorted((root / "leftImg8bit" / split).glob("*/*.png"))
    labels = sorted((root / "gtFine" / split).glob("*/*.png"))
    return images, labels


@pytest.fixture
def voc(tmp_path):
    return tmp_path, fx.make_voc(tmp_path, {"train": TRAIN, "val": VAL, "trainval": TRAIN + VAL})


@pytest.fixture
def voc_aug(tmp_path):
    written = fx.make_voc(tmp_path, {"train": TRAIN, "val": VAL}, aug_ids=TRAIN + AUG_ONLY)
    return tmp_path, written


@pytest.fixture
def city(tmp_path):
    written = fx.make_cityscapes(
        tmp_path, {"train": {"bochum": 1, "aachen": 2}, "val": {"frankfurt": 1}, "test": {"b": 1}}
    )
    return tmp_path, written


# ---------------------------------------------------------------------------------------------
# VOC: reading


def test_voc_palette_is_the_standard_colour_map():
    palette = fx.voc_palette()
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # background, aeroplane, bicycle
    assert palette[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person
    assert palette[255 * 3 : 255 * 3 + 3] == [224, 224, 192]  # void


def test_voc_reads_jpeg_and_palette_label(voc):
    root, written = voc
    dataset = VOCSegmentation(root, "train", aug=False)
    assert dataset.ids == TRAIN and len(dataset) == 2 and not dataset.uses_aug
    assert (dataset.num_classes, dataset.ignore_index, len(VOC_CLASSES)) == (21, 255, 21)
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    with PIL.Image.open(voc_dir(root, "SegmentationClass", f"{TRAIN[1]}.png")) as png:
        assert png.mode == "P"  # the fixture really is a palette PNG

    image, target = dataset[1]
    assert type(image) is tv_tensors.Image and image.dtype == torch.uint8
    assert image.shape == (3, fx.VOC_HEIGHT, fx.VOC_WIDTH)
    assert type(target) is tv_tensors.Mask and target.dtype == torch.int64
    assert torch.equal(
        target.as_subclass(torch.Tensor), torch.from_numpy(written["plain"][TRAIN[1]]).long()
    )
    assert set(target.unique().tolist()) == {0, 3, 20, 255}
    # Channels first, in RGB order, not transposed: left red, right blue (JPEG is lossy).
    expected = torch.from_numpy(fx.voc_image()).permute(2, 0, 1).int()
    assert (image.int() - expected).abs().max() <= 6


@pytest.mark.parametrize(("split", "ids"), [("val", VAL), ("trainval", TRAIN + VAL)])
def test_voc_other_splits_read_their_list(voc, split, ids):
    root, written = voc
    dataset = VOCSegmentation(root, split)
    assert dataset.ids == ids and not dataset.uses_aug
    assert np.array_equal(dataset[len(ids) - 1][1].numpy(), written["plain"][ids[-1]])


@pytest.mark.parametrize("aug_list_format", ["ids", "paths"])
def test_voc_aug_is_detected_and_read(tmp_path, aug_list_format):
    splits = {"train": TRAIN, "val": VAL}
    written = fx.make_voc(tmp_path, splits, TRAIN + AUG_ONLY, aug_list_format)
    dataset = VOCSegmentation(tmp_path, "train")
    assert dataset.uses_aug and dataset.ids == TRAIN + AUG_ONLY
    with PIL.Image.open(voc_dir(tmp_path, "SegmentationClassAug", f"{AUG_ONLY[0]}.png")) as png:
        assert png.mode == "L"
    for index, image_id in enumerate(dataset.ids):
        target = dataset[index][1]
        assert target.dtype == torch.int64
        # VOC's own label for an id of train.txt (as mmseg), the SBD label for the others
        folder = "plain" if image_id in TRAIN else "aug"
        assert np.array_equal(target.numpy(), written[folder][image_id])
    assert dataset.voc_labelled == [True] * len(TRAIN) + [False] * len(AUG_ONLY)


def test_mmseg_aug_list_is_added_to_train_and_the_counts_are_printed(tmp_path, capsys):
    """mmseg's layout: train.txt (SegmentationClass) + aug.txt (SBD ids beyond train and val,
    SegmentationClassAug). Used alone, aug.txt would drop VOC's train images."""
    written = fx.make_voc(tmp_path, {"train": TRAIN, "val": VAL}, AUG_ONLY, aug_list_name="aug.txt")
    dataset = VOCSegmentation(tmp_path, "train")
    assert dataset.uses_aug and dataset.ids == TRAIN + AUG_ONLY
    for index, image_id in enumerate(dataset.ids):
        folder = "plain" if image_id in TRAIN else "aug"
        assert np.array_equal(dataset[index][1].numpy(), written[folder][image_id])
    out = capsys.readouterr().out
    total, own, sbd = len(TRAIN) + len(AUG_ONLY), len(TRAIN), len(AUG_ONLY)
    assert f"[voc] train split: {total} images (aug.txt): {own} with VOC labels" in out
    assert f"{sbd} with SBD labels" in out


@pytest.mark.parametrize("aug_list_name", ["train_aug.txt", "aug.txt"])
def test_an_aug_list_that_holds_a_val_id_is_refused(tmp_path, aug_list_name):
    fx.make_voc(
        tmp_path, {"train": TRAIN, "val": VAL}, AUG_ONLY + VAL[:1], aug_list_name=aug_list_name
    )
    with pytest.raises(ValueError, match=f"lists 1 id\\(s\\) of val.txt, e.g. {VAL[0]}"):
        VOCSegmentation(tmp_path, "train")


def test_the_voc_holdout_is_drawn_from_voc_labelled_images(tmp_path):
    """The reward's boundary metrics on labels in val's style: the holdout takes every 10th of
    the images with VOC's own labels, none of the SBD-labelled ones."""
    from data import build_dataset

    train = [f"2007_{n:06d}" for n in range(12)]
    sbd = [f"2008_{n:06d}" for n in range(30)]
    fx.make_voc(tmp_path, {"train": train, "val": VAL}, train + sbd)
    holdout = build_dataset("voc", tmp_path, "holdout")
    assert holdout.ids == [train[0], train[10]] and all(holdout.voc_labelled)
    rest = build_dataset("voc", tmp_path, "train", without_holdout=True)
    assert len(rest) == 40 and not set(rest.ids) & set(holdout.ids)


def test_voc_aug_false_and_val_ignore_the_aug_labels(voc_aug):
    root, written = voc_aug
    plain = VOCSegmentation(root, "train", aug=False)
    assert not plain.uses_aug and plain.ids == TRAIN
    assert np.array_equal(plain[0][1].numpy(), written["plain"][TRAIN[0]])
    val = VOCSegmentation(root, "val")
    assert not val.uses_aug and val.ids == VAL


def test_voc_aug_true_reads_aug(voc_aug):
    assert VOCSegmentation(voc_aug[0], "train", aug=True).uses_aug


def test_voc_transform_is_applied(voc):
    root, written = voc
    dataset = VOCSegmentation(root, "val", transform=v2.RandomHorizontalFlip(p=1.0))
    image, target = dataset[0]
    assert type(image) is tv_tensors.Image and type(target) is tv_tensors.Mask
    assert np.array_equal(target.numpy(), written["plain"][VAL[0]][:, ::-1])
    assert image[0, 0, 0] < 60 < image[0, 0, -1]  # the red half moved right


# ---------------------------------------------------------------------------------------------
# VOC: errors


def test_voc_missing_root_shows_layout_and_source(tmp_path):
    with pytest.raises(ValueError, match="not found") as error:
        VOCSegmentation(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "\n    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg" in message
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/" in message
    assert "SegmentationClassAug" in message


@pytest.mark.parametrize(
    "folder", ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation", ""]
)
def test_voc_missing_folder_is_named(voc, folder):
    root = voc[0]
    missing = voc_dir(root, *folder.split("/")) if folder else root / "VOCdevkit"
    renamed = missing.rename(missing.with_name(missing.name + "_moved"))
    assert not missing.exists() and renamed.exists()
    with pytest.raises(ValueError, match="host.robots.ox.ac.uk") as error:
        VOCSegmentation(root, "val")
    assert str(missing if folder else voc_dir(root, "JPEGImages")) in str(error.value)


def test_voc_unknown_split_lists_valid_ones(voc):
    with pytest.raises(ValueError, match="'test'.*train, val, trainval"):
        VOCSegmentation(voc[0], "test")


def test_voc_missing_split_list_is_named(voc):
    list_file = voc_dir(voc[0], "ImageSets", "Segmentation", "trainval.txt")
    list_file.unlink()
    with pytest.raises(ValueError, match="split list not found") as error:
        VOCSegmentation(voc[0], "trainval")
    assert str(list_file) in str(error.value)


def test_voc_empty_split_list_is_named(voc):
    list_file = voc_dir(voc[0], "ImageSets", "Segmentation", "val.txt")
    list_file.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty") as error:
        VOCSegmentation(voc[0], "val")
    assert str(list_file) in str(error.value)


@pytest.mark.parametrize(
    ("folder", "suffix"), [("JPEGImages", "jpg"), ("SegmentationClass", "png")]
)
def test_voc_listed_id_without_file_fails_at_construction(voc, folder, suffix):
    missing = voc_dir(voc[0], folder, f"{TRAIN[1]}.{suffix}")
    missing.unlink()
    with pytest.raises(ValueError, match=r"1 of 2 ids listed in .*train\.txt") as error:
        VOCSegmentation(voc[0], "train")
    assert str(missing) in str(error.value)


def test_voc_aug_id_without_label_fails_at_construction(voc_aug):
    missing = voc_dir(voc_aug[0], "SegmentationClassAug", f"{AUG_ONLY[1]}.png")
    missing.unlink()
    with pytest.raises(ValueError, match="train_aug.txt") as error:
        VOCSegmentation(voc_aug[0], "train")
    assert str(missing) in str(error.value)


def test_voc_aug_true_without_aug_layout(voc):
    with pytest.raises(ValueError, match="SegmentationClassAug") as error:
        VOCSegmentation(voc[0], "train", aug=True)
    assert "aug=False" in str(error.value)


def test_voc_aug_true_with_val_split(voc_aug):
    with pytest.raises(ValueError, match="split 'train' only.*'val'"):
        VOCSegmentation(voc_aug[0], "val", aug=True)


@pytest.mark.parametrize(
    "removed", ["SegmentationClassAug", "ImageSets/Segmentation/train_aug.txt"]
)
def test_voc_half_installed_aug_is_an_error_not_a_fallback(voc_aug, removed):
    path = voc_dir(voc_aug[0], *removed.split("/"))
    path.rename(path.with_name(path.name + ".moved"))
    with pytest.raises(ValueError, match="SBD aug layout incomplete") as error:
        VOCSegmentation(voc_aug[0], "train")
    assert str(path) in str(error.value)
    assert VOCSegmentation(voc_aug[0], "train", aug=False).ids == TRAIN  # the offered way out


def test_voc_size_mismatch_names_both_files(voc):
    root = voc[0]
    label_path = voc_dir(root, "SegmentationClass", f"{VAL[0]}.png")
    fx.save_palette_png(label_path, np.zeros((fx.VOC_HEIGHT, fx.VOC_WIDTH + 1), np.uint8))
    dataset = VOCSegmentation(root, "val")
    with pytest.raises(ValueError, match="32x16 .*33x16") as error:
        dataset[0]
    assert str(voc_dir(root, "JPEGImages", f"{VAL[0]}.jpg")) in str(error.value)
    assert str(label_path) in str(error.value)


@pytest.mark.parametrize("bad", [21, 100, 254])
def test_voc_label_value_outside_classes_and_void(voc, bad):
    root = voc[0]
    label = fx.voc_label(3)
    label[5, 5] = bad
    label_path = voc_dir(root, "SegmentationClass", f"{VAL[0]}.png")
    fx.save_palette_png(label_path, label)
    with pytest.raises(ValueError, match=rf"values \[{bad}\]") as error:
        VOCSegmentation(root, "val")[0]
    assert str(label_path) in str(error.value)


def test_voc_colour_label_is_rejected(voc):
    label_path = voc_dir(voc[0], "SegmentationClass", f"{VAL[0]}.png")
    PIL.Image.fromarray(np.zeros((fx.VOC_HEIGHT, fx.VOC_WIDTH, 3), np.uint8)).save(label_path)
    with pytest.raises(ValueError, match="mode 'RGB'") as error:
        VOCSegmentation(voc[0], "val")[0]
    assert str(label_path) in str(error.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_voc_corrupt_image_is_named(voc, damage):
    image_path = voc_dir(voc[0], "JPEGImages", f"{VAL[0]}.jpg")
    data = image_path.read_bytes()
    image_path.write_bytes(b"not a jpeg" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image") as error:
        VOCSegmentation(voc[0], "val")[0]
    assert str(image_path) in str(error.value)
    assert isinstance(error.value.__cause__, OSError)  # PIL's own error is kept as the cause


# ---------------------------------------------------------------------------------------------
# Cityscapes: reading


def test_cityscapes_train_id_table():
    assert len(CITY_CLASSES) == 19 and (CITY_CLASSES[0], CITY_CLASSES[18]) == ("road", "bicycle")
    assert sorted(LABEL_TO_TRAIN_ID.values()) == list(range(19))
    # A few entries of cityscapesScripts labels.py, with their names.
    for label_id, name in [(7, "road"), (11, "building"), (19, "traffic light"), (26, "car")]:
        assert CITY_CLASSES[LABEL_TO_TRAIN_ID[label_id]] == name
    for void_id in (0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30):  # unlabeled ... trailer
        assert void_id not in LABEL_TO_TRAIN_ID


def test_cityscapes_reads_and_maps_to_train_ids(city):
    root, written = city
    dataset = Cityscapes(root, "train")
    assert len(dataset) == 3 and (dataset.num_classes, dataset.ignore_index) == (19, 255)
    image, target = dataset[0]
    assert type(image) is tv_tensors.Image and image.dtype == torch.uint8
    assert type(target) is tv_tensors.Mask and target.dtype == torch.int64
    assert image.shape == (3, fx.CITY_HEIGHT, fx.CITY_WIDTH)
    assert target.shape == (fx.CITY_HEIGHT, fx.CITY_WIDTH)
    # PNG is lossless: the image comes back exactly, channels first.
    assert np.array_equal(image.permute(1, 2, 0).numpy(), written["train"][0][0])
    rows = target[:-1, -1].tolist()  # the last column is free of the per-image marker
    assert rows == list(fx.CITY_TRAIN_ID_ROWS[:-1])
    assert target[-1, -1] == 18 and target[-1, 0] == 8  # bicycle; marker 21 = vegetation


def test_cityscapes_files_are_sorted_and_paired(city):
    root, written = city
    dataset = Cityscapes(root, "train")
    images, labels = city_files(root, "train")
    assert dataset.images == images and dataset.labels == labels
    assert [p.parent.name for p in images] == ["aachen", "aachen", "bochum"]
    for index, (image, label_ids) in enumerate(written["train"]):
        got_image, target = dataset[index]
        assert np.array_equal(got_image.permute(1, 2, 0).numpy(), image)
        assert label_ids[-1, 0] == 21 + index
        assert target[-1, 0] == LABEL_TO_TRAIN_ID[21 + index]


@pytest.mark.parametrize("split", ["val", "test"])
def test_cityscapes_other_splits(city, split):
    dataset = Cityscapes(city[0], split)
    assert len(dataset) == 1 and dataset.images == city_files(city[0], split)[0]
    assert dataset[0][1].shape == (fx.CITY_HEIGHT, fx.CITY_WIDTH)


def test_cityscapes_transform_is_applied(city):
    root, written = city
    dataset = Cityscapes(root, "val", transform=v2.RandomVerticalFlip(p=1.0))
    image, target = dataset[0]
    assert type(image) is tv_tensors.Image and type(target) is tv_tensors.Mask
    assert np.array_equal(image.permute(1, 2, 0).numpy(), written["val"][0][0][::-1])
    assert target[:, -1].tolist() == list(fx.CITY_TRAIN_ID_ROWS[::-1])


# ---------------------------------------------------------------------------------------------
# Cityscapes: errors


def test_cityscapes_missing_root_shows_layout_and_source(tmp_path):
    with pytest.raises(ValueError, match="not found") as error:
        Cityscapes(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "\n    <root>/gtFine/{train,val,test}/<city>/" in message
    assert "https://www.cityscapes-dataset.com/" in message
    assert "leftImg8bit_trainvaltest.zip" in message and "gtFine_trainvaltest.zip" in message


@pytest.mark.parametrize("folder", ["leftImg8bit/val", "gtFine/val"])
def test_cityscapes_missing_folder_is_named(city, folder):
    missing = city[0].joinpath(*folder.split("/"))
    missing.rename(missing.with_name("val_moved"))
    with pytest.raises(ValueError, match="cityscapes-dataset.com") as error:
        Cityscapes(city[0], "val")
    assert str(missing) in str(error.value)


def test_cityscapes_unknown_split_lists_valid_ones(city):
    with pytest.raises(ValueError, match="'train_extra'.*train, val, test"):
        Cityscapes(city[0], "train_extra")


def test_cityscapes_split_without_images(city):
    root = city[0]
    for image in city_files(root, "val")[0]:
        image.unlink()
    with pytest.raises(ValueError, match="no images") as error:
        Cityscapes(root, "val")
    assert str(root / "leftImg8bit" / "val") in str(error.value)


def test_cityscapes_image_without_label_fails_at_construction(city):
    missing = city_files(city[0], "train")[1][2]
    missing.unlink()
    with pytest.raises(ValueError, match="1 of 3 images") as error:
        Cityscapes(city[0], "train")
    assert str(missing) in str(error.value)


def test_cityscapes_size_mismatch_names_both_files(city):
    root = city[0]
    images, labels = city_files(root, "val")
    fx.save_gray_png(labels[0], np.full((fx.CITY_HEIGHT - 1, fx.CITY_WIDTH), 7, np.uint8))
    with pytest.raises(ValueError, match="12x8 .*12x7") as error:
        Cityscapes(root, "val")[0]
    assert str(images[0]) in str(error.value) and str(labels[0]) in str(error.value)


@pytest.mark.parametrize("bad", [34, 255])
def test_cityscapes_label_id_above_33(city, bad):
    root = city[0]
    label_path = city_files(root, "val")[1][0]
    label = fx.city_label(33)
    label[2, 3] = bad
    fx.save_gray_png(label_path, label)
    with pytest.raises(ValueError, match=f"labelId {bad}") as error:
        Cityscapes(root, "val")[0]
    assert str(label_path) in str(error.value)


def test_cityscapes_corrupt_image_is_named(city):
    image_path = city_files(city[0], "val")[0][0]
    image_path.write_bytes(image_path.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read image") as error:
        Cityscapes(city[0], "val")[0]
    assert str(image_path) in str(error.value)
    assert isinstance(error.value.__cause__, OSError)


# ---------------------------------------------------------------------------------------------
# The search's holdout split (every 10th train image) and the train split without it


def test_voc_and_cityscapes_hold_out_every_tenth_train_image(tmp_path):
    from data import build_dataset

    train_ids = [f"2007_{n:06d}" for n in range(12)]
    fx.make_voc(tmp_path, {"train": train_ids, "val": VAL})
    fx.make_cityscapes(tmp_path / "cityscapes", {"train": {"aachen": 7, "bochum": 5}})
    for name in ("voc", "cityscapes"):
        train = build_dataset(name, tmp_path, "train")
        holdout = build_dataset(name, tmp_path, "holdout")
        rest = build_dataset(name, tmp_path, "train", without_holdout=True)
        assert holdout.images == [train.images[0], train.images[10]], name
        assert sorted(holdout.images + rest.images) == sorted(train.images) and len(rest) == 10
        assert [p.name[:6] for p in holdout.labels] == [p.name[:6] for p in holdout.images]
        assert len(holdout) == 2 and holdout[1][1].shape == train[10][1].shape
    assert build_dataset("voc", tmp_path, "holdout").ids == [train_ids[0], train_ids[10]]
    assert len(build_dataset("voc", tmp_path, "val", without_holdout=True)) == 1  # train only


def test_a_train_split_too_small_to_hold_out_from_is_named(tmp_path):
    from data import build_dataset

    fx.make_voc(tmp_path, {"train": TRAIN[:1]})
    with pytest.raises(ValueError, match="has 1 image.*use search.reward_split=val"):
        build_dataset("voc", tmp_path, "train", without_holdout=True)  # its one image is held out


def test_the_holdout_fraction_key_sets_the_share_held_out(tmp_path):
    """data.params.holdout_fraction: a fraction of the train list, evenly spread from the first
    image (0.25 of 12: images 0, 4, 8), held out of the proxy's training set."""
    from data import build_dataset

    fx.make_voc(tmp_path, {"train": [f"2007_{n:06d}" for n in range(12)], "val": VAL})
    fx.make_cityscapes(tmp_path / "cityscapes", {"train": {"aachen": 7, "bochum": 5}})
    for name in ("voc", "cityscapes"):
        train = build_dataset(name, tmp_path, "train", holdout_fraction=0.25)
        holdout = build_dataset(name, tmp_path, "holdout", holdout_fraction=0.25)
        rest = build_dataset(name, tmp_path, "train", without_holdout=True, holdout_fraction=0.25)
        assert holdout.images == [train.images[i] for i in (0, 4, 8)], name
        assert sorted(holdout.images + rest.images) == sorted(train.images) and len(rest) == 9
        half = build_dataset(name, tmp_path, "holdout", holdout_fraction=0.5)
        assert half.images == train.images[::2], name


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5, float("nan"), True, "0.2", None])
def test_a_bad_holdout_fraction_is_refused_naming_it(tmp_path, value):
    from data import build_dataset

    fx.make_voc(tmp_path, {"train": TRAIN, "val": VAL})
    for split in ("train", "val", "holdout"):  # checked whichever split is read
        with pytest.raises(ValueError, match=r"holdout_fraction must be a number in \(0, 1\)"):
            build_dataset("voc", tmp_path, split, holdout_fraction=value)


@pytest.mark.parametrize("command", [["search", "miou"], ["retrain", "miou_bezier.yaml"]])
def test_a_bad_holdout_fraction_is_one_line_and_exit_2(tmp_path, command):
    """Through the real commands: exit 2 and one line naming the key and the value, before a
    run folder, a cache or Ray exists (the commands' preflight)."""
    fx.make_voc(tmp_path, {"train": [f"2007_{n:06d}" for n in range(12)], "val": VAL})
    words = ["data=voc", f"data.root={tmp_path}", "data.params.holdout_fraction=1.5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [LAUNCH, *command, *words], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "data.params.holdout_fraction must be a number in (0, 1), got 1.5" in done.stderr
    assert not (tmp_path / "cache").exists()
