"""The data check (data/check.py, experiments/check_data.py, `./launch.sh check-data`): a test per
problem kind and per warning on small trees in the real formats (fixtures_datasets) that each
test damages, the cache, the command's exit codes, and search and retrain refusing a broken tree
before anything starts."""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import fixtures_datasets as fx
import numpy as np
import PIL.Image
import pytest

from data.check import check_dataset, check_splits, class_keys, format_report
from data.cityscapes import LABEL_TO_TRAIN_ID, MAX_LABEL_ID, Cityscapes
from data.masks import INVALID, VOID, MaskCoding, decode, read_mask
from data.voc import CLASS_NAMES as VOC_CLASSES
from data.voc import VOCSegmentation
from experiments.check_data import check_before_start, main, resolve
from experiments.config import ConfigError, DataConfig

REPO = Path(__file__).resolve().parent.parent
SMALL_NET = "{backbone: resnet18, output_stride: 16, pretrained_backbone: none}"
TRAIN = ["2007_000032", "2007_000039", "2007_000063"]
VAL = ["2007_000033", "2007_000042"]


def voc_dir(root: Path, *parts: str) -> Path:
    return root.joinpath("VOCdevkit", "VOC2012", *parts)


def mask_path(root: Path, image_id: str) -> Path:
    return voc_dir(root, "SegmentationClass", f"{image_id}.png")


@pytest.fixture
def voc(tmp_path) -> Path:
    """A clean VOC tree: 3 train and 2 val images of 32 x 16, labels 0, a class, 20 and 255."""
    fx.make_voc(tmp_path, {"train": TRAIN, "val": VAL})
    return tmp_path


def check(root: Path, **kwargs):
    return check_dataset("voc", root, use_cache=False, **kwargs)


def only_problem(result, *parts: str) -> str:
    """The result's single problem line, which must hold every part."""
    assert len(result.problems) == 1, result.problems
    line = result.problems[0]
    assert all(part in line for part in parts), line
    assert "\n" not in line
    return line


# --- a clean tree -----------------------------------------------------------------------------


def test_a_clean_voc_tree_passes_with_its_statistics(voc):
    result = check(voc)
    assert result.ok and result.problems == []
    assert [(r.split, r.images) for r in result.splits] == [("train", 3), ("val", 2)]
    labels = {i: np.array(PIL.Image.open(mask_path(voc, i))) for i in TRAIN}
    train = result.splits[0]
    for number, name in enumerate(VOC_CLASSES):
        assert train.class_pixels[name] == sum(int((m == number).sum()) for m in labels.values())
    assert train.void_pixels == sum(int((m == 255).sum()) for m in labels.values())
    assert train.invalid_pixels == 0
    assert set(train.raw_values) == {"0", "1", "3", "5", "20", "255"}  # make_voc: id order
    report = format_report(result)
    assert report.splitlines()[0].startswith("check-data: voc at ")
    assert "train: 3 images" in report and "background" in report and "void" in report


def test_the_counts_are_the_decoded_masks_on_a_realistic_tree(tmp_path):
    """make_voc_tree: JPEGs of 200-500 px, palette labels with void bands, SBD aug labels. The
    check decodes each split's distinct values only; its counts must be those of decoding every
    mask whole, and the pool of processes must give what one process gives."""
    fx.make_voc_tree(tmp_path, "deeplab", train=5, sbd=3, val=2)
    one = check(tmp_path, workers=1)
    two = check(tmp_path, workers=2)
    assert one.ok and two.ok
    dataset = VOCSegmentation(tmp_path, "train")
    expected = np.zeros(256, dtype=np.int64)
    for label in dataset.labels:
        ids = decode(read_mask(label), dataset.coding)
        expected += np.bincount(np.where(ids == VOID, 255, ids).ravel(), minlength=256)
    train = one.splits[0]
    assert list(train.class_pixels.values()) == expected[: len(VOC_CLASSES)].tolist()
    assert train.void_pixels == expected[255]
    for a, b in zip(one.splits, two.splits, strict=True):
        assert (a.class_pixels, a.raw_values, a.images) == (b.class_pixels, b.raw_values, b.images)


# --- the readers' codings ---------------------------------------------------------------------


def test_the_voc_coding_decodes_as_the_reader_does(voc):
    dataset = VOCSegmentation(voc, "train")
    assert dataset.split == "train" and dataset.unmatched == []
    for index, label in enumerate(dataset.labels):
        assert decode(read_mask(label), dataset.coding).tolist() == dataset[index][1].tolist()
    raw = np.array([[0, 20, 255, 21, 254]], dtype=np.uint8)
    assert decode(raw, dataset.coding).tolist() == [[0, 20, VOID, INVALID, INVALID]]


def test_the_cityscapes_coding_decodes_as_the_reader_does(tmp_path):
    fx.make_cityscapes(tmp_path, {"train": {"aachen": 2}, "val": {"bochum": 1}})
    size = fx.CITY_HEIGHT * fx.CITY_WIDTH
    every_id = (np.arange(size) % (MAX_LABEL_ID + 1)).reshape(fx.CITY_HEIGHT, fx.CITY_WIDTH)
    label = sorted((tmp_path / "gtFine" / "train").glob("*/*.png"))[0]
    fx.save_gray_png(label, every_id)  # every labelId 0..33
    dataset = Cityscapes(tmp_path, "train")
    assert dataset.split == "train" and dataset.unmatched == []
    for index, path in enumerate(dataset.labels):
        assert decode(read_mask(path), dataset.coding).tolist() == dataset[index][1].tolist()
    decoded = decode(every_id, dataset.coding).ravel()[: MAX_LABEL_ID + 1].tolist()
    assert decoded == [LABEL_TO_TRAIN_ID.get(i, VOID) for i in range(MAX_LABEL_ID + 1)]
    above = np.array([[MAX_LABEL_ID + 1, 255]], dtype=np.uint8)  # the reader refuses these
    assert decode(above, dataset.coding).tolist() == [[INVALID, INVALID]]


def test_cityscapes_values_above_33_are_a_problem(tmp_path):
    root = tmp_path / "cityscapes"
    fx.make_cityscapes(root, {"train": {"aachen": 2}, "val": {"bochum": 1}})
    assert check_dataset("cityscapes", tmp_path, use_cache=False).ok
    label = sorted((root / "gtFine" / "val").glob("*/*.png"))[0]
    bad = fx.city_label(3)
    bad[0, :2] = 40
    fx.save_gray_png(label, bad)
    result = check_dataset("cityscapes", tmp_path, use_cache=False)
    only_problem(result, "val: 1 mask with values neither classes nor void: 40 (2 px)", "bochum")


# --- problems ---------------------------------------------------------------------------------


def test_a_missing_mask_is_a_problem(voc):
    mask_path(voc, TRAIN[1]).unlink()
    only_problem(check(voc), "train: cannot build the split", "have no file")


def test_a_mask_of_another_size_is_a_problem(voc):
    fx.save_palette_png(mask_path(voc, VAL[0]), np.zeros((fx.VOC_HEIGHT, 7), np.uint8))
    only_problem(
        check(voc), "val: 1 mask not the size of the image", "7x16 vs 32x16", f"{VAL[0]}.png"
    )


@pytest.mark.parametrize("value", [21, 100, 254])
def test_values_neither_classes_nor_void_are_a_problem_with_their_pixels(voc, value):
    for image_id in TRAIN[:2]:
        label = fx.voc_label(3)
        label[2, :5] = value
        fx.save_palette_png(mask_path(voc, image_id), label)
    only_problem(
        check(voc),
        f"train: 2 masks with values neither classes nor void: {value} (10 px)",
        f"{TRAIN[0]}.png, ",
    )


def test_a_jpeg_mask_is_a_problem(voc):
    label = PIL.Image.fromarray(fx.voc_label(3))
    label.save(mask_path(voc, TRAIN[0]), format="JPEG", quality=95)  # .png name, JPEG inside
    result = check(voc)
    assert not result.ok
    jpeg = [p for p in result.problems if "stored as JPEG" in p]
    assert len(jpeg) == 1 and f"{TRAIN[0]}.png" in jpeg[0] and jpeg[0].startswith("train: 1 mask")


def test_a_colour_mask_in_an_index_dataset_cannot_be_decoded(voc):
    colour = np.zeros((fx.VOC_HEIGHT, fx.VOC_WIDTH, 3), np.uint8)
    colour[:, :4] = (128, 0, 0)
    PIL.Image.fromarray(colour).save(mask_path(voc, VAL[1]))
    only_problem(
        check(voc), "val: 1 mask cannot be decoded", "got shape (16, 32, 3)", "mask_encoding: rgb"
    )


def test_an_unreadable_mask_is_a_problem(voc):
    mask_path(voc, TRAIN[2]).write_bytes(b"not a png")
    only_problem(check(voc), "train: 1 unreadable file", f"{TRAIN[2]}.png")


def test_an_empty_split_list_is_a_problem(voc):
    voc_dir(voc, "ImageSets", "Segmentation", "val.txt").write_text("")
    only_problem(check(voc), "val: cannot build the split", "empty")


def test_an_image_in_train_and_val_is_a_problem(voc):
    voc_dir(voc, "ImageSets", "Segmentation", "val.txt").write_text(f"{VAL[0]}\n{TRAIN[1]}\n")
    only_problem(check(voc), "train and val share 1 image", f"{TRAIN[1]}.jpg")


def test_a_copy_in_two_folders_is_an_overlap_another_photo_of_that_name_is_not(tmp_path):
    train = folder_split(tmp_path / "train", "train", {"a": [0, 1], "b": [1]})
    val = folder_split(tmp_path / "val", "val", {"b": [0], "c": [1]})
    result = check_splits({"train": train, "val": val}, "folder", tmp_path, use_cache=False)
    only_problem(result, "train and val share 1 image", "val/images/b.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(tmp_path / "val" / "images" / "b.jpg")  # another photo
    result = check_splits({"train": train, "val": val}, "folder", tmp_path, use_cache=False)
    assert result.ok, result.problems


def test_each_problem_line_names_three_files_and_counts_the_rest(voc):
    ids = [f"2010_{n:06d}" for n in range(5)]
    for image_id in ids:
        PIL.Image.fromarray(fx.voc_image()).save(voc_dir(voc, "JPEGImages", f"{image_id}.jpg"))
        fx.save_palette_png(mask_path(voc, image_id), np.full((16, 32), 99, np.uint8))
    voc_dir(voc, "ImageSets", "Segmentation", "train.txt").write_text("\n".join(TRAIN + ids))
    line = only_problem(check(voc), "train: 5 masks with values neither", "99 (2,560 px)")
    assert line.endswith(f"{ids[2]}.png and 2 more")


# --- any dataset-like object: a folder reader's split, colour masks ------------------------------


@dataclass
class FolderSplit:
    """What check_splits needs of a dataset, as the folder readers provide it."""

    images: list[Path]
    labels: list[Path]
    coding: MaskCoding
    class_names: tuple[str, ...]
    split: str
    unmatched: list[Path] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


RGB = MaskCoding(
    num_classes=3,
    encoding="rgb",
    colours=((0, 0, 0), (255, 0, 0), (0, 255, 0)),
    void_colours=((255, 255, 255),),
)


def folder_split(
    folder: Path, split: str, masks: dict[str, list], coding: MaskCoding = RGB
) -> FolderSplit:
    """A split of images/<stem>.jpg and masks/<stem>.png, 6 x 4: each mask of the colours (rgb)
    or values (index) given, one per row band."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for stem, fills in masks.items():
        image, label = folder / "images" / f"{stem}.jpg", folder / "masks" / f"{stem}.png"
        PIL.Image.new("RGB", (6, 4)).save(image)
        if coding.encoding == "rgb":
            array = np.zeros((4, 6, 3), np.uint8)
            for row, fill in enumerate(fills):
                array[row:] = coding.colours[fill] if isinstance(fill, int) else fill
        else:
            array = np.zeros((4, 6), np.uint8)
            for row, fill in enumerate(fills):
                array[row:] = fill
        PIL.Image.fromarray(array).save(label)
        images.append(image)
        labels.append(label)
    names = tuple(f"class_{i}" for i in range(coding.num_classes))
    return FolderSplit(images, labels, coding, names, split)


def test_rgb_masks_are_counted_by_colour(tmp_path):
    train = folder_split(tmp_path / "train", "train", {"a": [0, 1], "b": [2, (255, 255, 255)]})
    val = folder_split(tmp_path / "val", "val", {"c": [1]})
    result = check_splits({"train": train, "val": val}, "folder", tmp_path, use_cache=False)
    assert result.ok and result.warnings == []
    report = result.splits[0]
    assert report.class_pixels == {"class_0": 6, "class_1": 18, "class_2": 6}
    assert report.void_pixels == 18
    assert set(report.raw_values) == {"(0, 0, 0)", "(255, 0, 0)", "(0, 255, 0)", "(255, 255, 255)"}
    assert "rgb masks: 3 class colours, 1 void colours" in format_report(result)


def test_a_colour_not_in_the_table_is_a_problem_with_its_pixels(tmp_path):
    train = folder_split(tmp_path, "train", {"a": [0, 1, (7, 8, 9)], "b": [2]})
    result = check_splits({"train": train}, "folder", tmp_path, use_cache=False)
    only_problem(
        result, "train: 1 mask with colours not in the class table: (7, 8, 9) (12 px)", "a.png"
    )


def test_an_rgb_coding_without_colours_cannot_decode(tmp_path):
    train = folder_split(tmp_path, "train", {"a": [0, 1]})
    train.coding = MaskCoding(num_classes=3, encoding="rgb")
    result = check_splits({"train": train}, "folder", tmp_path, use_cache=False)
    only_problem(result, "train: 1 mask cannot be decoded", "needs the class colours", "a.png")


def test_unmatched_files_are_a_problem(tmp_path):
    train = folder_split(tmp_path, "train", {"a": [0, 1]})
    train.unmatched = [tmp_path / "images" / "lonely.jpg", tmp_path / "masks" / "stray.png"]
    result = check_splits({"train": train}, "folder", tmp_path, use_cache=False)
    only_problem(result, "train: 2 files without a partner", "images/lonely.jpg, masks/stray.png")


def test_an_empty_split_is_a_problem(tmp_path):
    train = folder_split(tmp_path / "train", "train", {"a": [0, 1, 2]})
    empty = FolderSplit([], [], RGB, train.class_names, "val")
    result = check_splits({"train": train, "val": empty}, "folder", tmp_path, use_cache=False)
    only_problem(result, "val: no images (an empty split)")


def test_repeated_or_missing_class_names_get_a_key_of_their_own():
    coding = MaskCoding(num_classes=4)
    assert class_keys(("sky", "tree", "sky"), coding) == ["sky (0)", "tree", "sky (2)", "class_3"]


# --- warnings ---------------------------------------------------------------------------------


def test_masks_of_only_0_and_255_in_an_index_dataset_are_a_warning(tmp_path):
    coding = MaskCoding(num_classes=2)
    train = folder_split(tmp_path / "train", "train", {"a": [0, 255], "b": [255]}, coding)
    val = folder_split(tmp_path / "val", "val", {"c": [0, 255]}, coding)
    result = check_splits({"train": train, "val": val}, "folder", tmp_path, use_cache=False)
    assert result.ok
    assert any("set mask_encoding: binary" in w for w in result.warnings), result.warnings
    assert "warning: the masks hold only 0 and 255" in format_report(result)


def test_classes_absent_from_train_are_a_warning(voc):
    result = check(voc)
    assert result.ok
    absent = [w for w in result.warnings if "absent from train" in w]
    assert len(absent) == 1 and absent[0].startswith("16 of 21 classes absent from train: ")
    assert "aeroplane" not in absent[0] and "bicycle" in absent[0]


# --- the cache --------------------------------------------------------------------------------


def test_a_rerun_answers_from_the_cache_until_a_file_changes(voc):
    first = check_dataset("voc", voc)
    assert not any(r.cached for r in first.splits)
    cached = sorted((voc / "cache" / "check-data").glob("*.json"))
    assert [p.name.split("-")[:2] for p in cached] == [["voc", "train"], ["voc", "val"]]
    again = check_dataset("voc", voc)
    assert all(r.cached for r in again.splits)
    assert [r.class_pixels for r in again.splits] == [r.class_pixels for r in first.splits]
    assert "cached: files unchanged since the last check" in format_report(again)
    path = mask_path(voc, VAL[0])
    label = fx.voc_label(3)
    label[0, :3] = 77
    fx.save_palette_png(path, label)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime for sure
    changed = check_dataset("voc", voc)
    assert [r.cached for r in changed.splits] == [True, False]
    only_problem(changed, "val: 1 mask with values neither classes nor void: 77 (3 px)")
    assert not check_dataset("voc", voc).ok  # a cached failing scan still fails


def test_the_cache_falls_back_to_the_user_cache_folder(voc, tmp_path_factory, monkeypatch):
    user = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(user))
    (voc / "cache").write_text("a file where the cache folder would go")  # not writable there
    check_dataset("voc", voc)
    assert len(list((user / "seg-loss-search" / "check-data").glob("voc-*.json"))) == 2
    assert all(r.cached for r in check_dataset("voc", voc).splits)


# --- the command ------------------------------------------------------------------------------


def test_generated_shapes_has_nothing_to_check(tmp_path, capsys):
    assert check_dataset("shapes", tmp_path).in_memory
    assert main(["data=shapes", f"data.root={tmp_path}"]) == 0
    assert "shapes is generated in memory" in capsys.readouterr().out


def test_the_command_reports_a_clean_tree_and_exits_0(voc, capsys):
    assert main(["data=voc", f"data.root={voc}"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    assert out.strip().splitlines()[-1] == "check-data: no problem (1 warning(s))"


@pytest.mark.parametrize(
    "words,message",
    [
        (["data=vox"], "unknown dataset 'vox'"),
        (["voc"], "expected key=value, got 'voc'"),
        (["data=voc", "ppo.steps=2"], "unknown config key 'ppo.steps'"),
        (["data.name=voc"], "choose the dataset with data=voc, not data.name"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(words, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(words)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1


def test_data_params_reach_the_reader(voc):
    assert resolve(["data=voc", f"data.root={voc}", "data.params.aug=false"]).params == {
        "aug": False
    }
    result = check_dataset("voc", voc, {"aug": False}, use_cache=False)
    assert result.ok


def test_launch_check_data_on_a_broken_tree_prints_each_problem_and_exits_2(voc):
    fx.save_palette_png(mask_path(voc, TRAIN[0]), np.full((16, 32), 50, np.uint8))
    voc_dir(voc, "ImageSets", "Segmentation", "val.txt").write_text(f"{VAL[0]}\n{TRAIN[1]}\n")
    done = subprocess.run(
        [REPO / "launch.sh", "check-data", "data=voc", f"data.root={voc}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "50 (512 px)" in lines[0] and "train and val share 1 image" in lines[1]
    assert "train: 3 images" in done.stdout


# --- search and retrain check before they start -----------------------------------------------


def test_search_and_retrain_refuse_a_broken_tree_before_anything_starts(voc, tmp_path, capsys):
    from retrain import run as retrain_run
    from search import run as search_run

    fx.save_palette_png(mask_path(voc, VAL[1]), np.full((16, 32), 30, np.uint8))
    results = tmp_path / "results"
    words = ["data=voc", f"data.root={voc}", "--results", str(results)]
    search = ["miou", *words, f"proxy.model_args={SMALL_NET}"]
    retrain = ["miou_bezier", *words, f"retrain.model_args={SMALL_NET}"]
    for stage, argv in ((search_run, search), (retrain_run, retrain)):
        with pytest.raises(SystemExit) as exit_:
            stage.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert err.startswith("error: the data check found 1 problem in voc at ")
        assert err.splitlines()[1] == (
            f"  val: 1 mask with values neither classes nor void: 30 (512 px): "
            f"VOCdevkit/VOC2012/SegmentationClass/{VAL[1]}.png"
        )
    assert not results.exists()  # no run folder, no Ray


def test_the_check_before_start_prints_a_line_and_the_warnings(voc, capsys):
    data = DataConfig(name="voc", root=str(voc))
    check_before_start(data, ("train", "val"), "search")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[search] data check: train 3, val 2 images, no problem"
    assert out[1].startswith("[search] data warning: 16 of 21 classes absent from train")
    check_before_start(data, ("train", "val"), "search")
    assert capsys.readouterr().out.startswith("[search] data check: train 3, val 2 images, no ")
    check_before_start(DataConfig(name="shapes", root=str(voc)), ("train", "val"), "search")
    assert capsys.readouterr().out == ""  # silent for shapes
    with pytest.raises(ConfigError, match="test: cannot build the split"):
        check_before_start(data, ("train", "test"), "retrain")
