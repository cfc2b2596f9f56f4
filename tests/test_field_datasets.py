"""ADE20K, CamVid and COCO-Stuff (data/ade20k.py, camvid.py, cocostuff.py) on tiny trees in
their real layouts and formats, decoded against the raw masks written; their holdout; their
profiles through both stages' config resolution."""

import fixtures_own_data as fo
import numpy as np
import pytest

from data import build_dataset, list_datasets
from data.ade20k import CLASS_NAMES as ADE_CLASSES
from data.camvid import CLASS_NAMES as CAMVID_CLASSES
from data.cocostuff import CLASS_NAMES as COCO_CLASSES
from data.cocostuff import UNUSED_IDS, USED_IDS
from data.masks import VOID
from retrain.config import find_file
from retrain.config import resolve as retrain_resolve
from search.config import resolve as search_resolve


def decoded(dataset, index: int) -> np.ndarray:
    return dataset[index][1].numpy()


def test_the_field_datasets_are_registered():
    assert {"ade20k", "camvid", "cocostuff", "folder"} <= set(list_datasets())


# --- ADE20K -------------------------------------------------------------------------------------


def test_ade20k_reduces_the_zero_label(tmp_path):
    written = fo.make_ade20k(tmp_path)
    train = build_dataset("ade20k", tmp_path, "train")
    assert (train.num_classes, len(ADE_CLASSES), train.class_names) == (150, 150, ADE_CLASSES)
    assert ADE_CLASSES[:3] == ("wall", "building", "sky") and ADE_CLASSES[-1] == "flag"
    assert ADE_CLASSES[7] == "bed" and train.unmatched == []
    assert [p.parent.name for p in train.images] == ["training"] * 4
    for index, path in enumerate(train.images):
        raw = written["train"][path.stem][1]
        assert np.array_equal(decoded(train, index), np.where(raw == 0, VOID, raw - 1))
    assert set(np.unique(decoded(train, 0))) == {VOID, 0, 1, 3, 149}  # 150 -> 149, marker 4 -> 3
    val = build_dataset("ade20k", tmp_path, "val")
    assert [p.name for p in val.images] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    assert val.labels[0].parent.name == "validation"


def test_ade20k_refuses_raw_values_above_150_and_unknown_splits(tmp_path):
    fo.make_ade20k(tmp_path)
    train = build_dataset("ade20k", tmp_path, "train")
    fo.save_mask(train.labels[1], fo.stripes([0, 151]))
    with pytest.raises(ValueError, match=r"ADE_train_00000002\.png holds raw value\(s\) 151 .*"):
        train[1]
    with pytest.raises(ValueError, match="unknown ade20k split 'test'; valid splits: train, val"):
        build_dataset("ade20k", tmp_path, "test")
    with pytest.raises(ValueError, match=r"ADE20K folder not found: .*\nExpected ADE20K"):
        build_dataset("ade20k", tmp_path / "elsewhere", "train")


def test_ade20k_holdout_comes_from_training(tmp_path):
    fo.make_ade20k(tmp_path, train=12, val=2)
    train = build_dataset("ade20k", tmp_path, "train").images
    holdout = build_dataset("ade20k", tmp_path, "holdout").images
    rest = build_dataset("ade20k", tmp_path, "train", without_holdout=True).images
    assert holdout == [train[0], train[10]] and sorted(holdout + rest) == train
    assert all(p.parent.name == "training" for p in holdout)


# --- CamVid -------------------------------------------------------------------------------------


def test_camvid_segnet_layout_makes_unlabelled_void(tmp_path):
    written = fo.make_camvid_segnet(tmp_path)
    assert CAMVID_CLASSES[0] == "Sky" and CAMVID_CLASSES[-1] == "Bicyclist"
    for split in ("train", "val", "test"):
        dataset = build_dataset("camvid", tmp_path, split)
        assert dataset.num_classes == 11 and dataset.class_names == CAMVID_CLASSES
        assert len(dataset) == len(written[split]) and dataset.unmatched == []
        assert dataset.labels[0].parent.name == f"{split}annot"
        for index, path in enumerate(dataset.images):
            raw = written[split][path.stem][1]
            assert np.array_equal(decoded(dataset, index), np.where(raw == 11, VOID, raw))
    assert set(np.unique(decoded(dataset, 1))) == {0, 1, 3, 10, VOID}  # marker 1 in the corner


def test_camvid_lists_a_frame_without_annotation(tmp_path):
    fo.make_camvid_segnet(tmp_path, {"train": 2})
    fo.save_image(tmp_path / "CamVid" / "train" / "0001TP_999999.png", fo.image(3))
    dataset = build_dataset("camvid", tmp_path, "train")
    assert len(dataset) == 2 and [p.name for p in dataset.unmatched] == ["0001TP_999999.png"]


def test_camvid_guide_layout_reads_through_the_folder_reader(tmp_path, capsys):
    """root/{train,val}/{images,masks}: data=folder, with CamVid's classes in dataset.yaml."""
    written = fo.make_camvid_guide(tmp_path)
    fo.write_spec(
        tmp_path,
        {"classes": list(CAMVID_CLASSES), "class_map": {**{k: k for k in range(11)}, 11: 255}},
    )
    dataset = build_dataset("folder", tmp_path, "val")
    assert dataset.class_names == CAMVID_CLASSES and dataset.num_classes == 11
    for index, path in enumerate(dataset.images):
        raw = written["val"][path.stem][1]
        assert np.array_equal(decoded(dataset, index), np.where(raw == 11, VOID, raw))
    assert f"[folder] {tmp_path}: <split>/images + <split>/masks; train 3, val 2" in (
        capsys.readouterr().out
    )


# --- COCO-Stuff ---------------------------------------------------------------------------------


def test_cocostuff_maps_the_raw_ids_to_171_classes():
    assert len(USED_IDS) == len(COCO_CLASSES) == 171 and len(UNUSED_IDS) == 11
    # a few entries of MMSegmentation's clsID_to_trID, by hand
    expected = {
        0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60,
        69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 181: 170,
    }  # fmt: skip
    table = {raw: k for k, raw in enumerate(USED_IDS)}
    assert {raw: table[raw] for raw in expected} == expected
    assert COCO_CLASSES[11] == "stop sign" and COCO_CLASSES[80] == "banner"


def test_cocostuff_raw_stuffthingmaps(tmp_path):
    written = fo.make_cocostuff(tmp_path)
    dataset = build_dataset("cocostuff", tmp_path, "train")
    assert dataset.num_classes == 171 and dataset.class_names == COCO_CLASSES
    lookup = np.full(256, -1)
    lookup[list(USED_IDS)] = np.arange(171)
    lookup[255] = VOID
    for index, path in enumerate(dataset.images):
        raw = written["train"][path.stem][1]
        assert np.array_equal(decoded(dataset, index), lookup[raw])
    # raw 0, 12, 26, 181, marker 40, void -> person, stop sign, backpack, wood, 36, void
    assert set(np.unique(decoded(dataset, 0))) == {0, 11, 24, 170, 36, VOID}
    assert [p.parent.name for p in build_dataset("cocostuff", tmp_path, "val").labels] == [
        "val2017",
        "val2017",
    ]


@pytest.mark.parametrize("unused", [11, 90, 182])
def test_cocostuff_refuses_unused_ids(tmp_path, unused):
    """Unused thing ids never occur in real stuffthingmaps: one that does is not read as a class
    or as void, it is an error that names the file."""
    fo.make_cocostuff(tmp_path, raw_values=(0, unused))
    dataset = build_dataset("cocostuff", tmp_path, "train")
    with pytest.raises(ValueError, match=rf"000000000000\.png holds raw value\(s\) {unused} "):
        dataset[0]


def test_cocostuff_reads_converted_train_ids_as_they_are(tmp_path):
    written = fo.make_cocostuff(tmp_path, converted=True)
    dataset = build_dataset("cocostuff", tmp_path, "val")
    assert [p.name for p in dataset.labels] == [
        "000000000000_labelTrainIds.png",
        "000000000001_labelTrainIds.png",
    ]
    assert dataset.unmatched == []  # the raw PNGs beside them are not the masks read
    for index, path in enumerate(dataset.images):
        assert np.array_equal(decoded(dataset, index), written["val"][path.stem][1])
    assert set(np.unique(decoded(dataset, 0))) == {0, 11, 100, 170, VOID}


# --- profiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "crop", "scale", "iterations", "proxy_scale"),
    [
        ("ade20k", 512, [2048, 512], 160_000, [512, 128]),
        ("cocostuff", 512, [2048, 512], 80_000, [512, 128]),
        ("camvid", 360, [480, 360], 10_000, [240, 180]),
        ("folder", 512, [2048, 512], 10_000, [512, 128]),
    ],
)
def test_profiles_resolve_for_both_stages(tmp_path, name, crop, scale, iterations, proxy_scale):
    search = search_resolve("miou", {"data": name}, data_root=str(tmp_path))
    assert (search.data.name, search.data.root) == (name, str(tmp_path))
    assert search.proxy.scale == proxy_scale and search.proxy.crop_size == 128
    assert search.search.reward_drop_background is False
    assert search.confirm.fit.iterations == iterations  # the confirmation trains the retrain's
    retrain = retrain_resolve(find_file("ce.yaml"), {"data": name}, data_root=str(tmp_path))
    settings = retrain.retrain
    assert (settings.crop_size, settings.scale, settings.fit.iterations) == (
        crop,
        scale,
        iterations,
    )
    assert settings.drop_background is False and settings.fit.sync_bn
    if name != "folder":  # mmseg's recipe: batch 16, lr 0.01, heads at the same rate
        assert (settings.fit.batch_size, settings.fit.lr, settings.fit.head_lr_mult) == (
            16,
            0.01,
            1,
        )
