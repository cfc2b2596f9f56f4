"""SegMetrics: hand-computed cases for every metric, torchmetrics on random data, merging."""

import math

import pytest
import torch
from helpers import blob_target

from surrogates import METRIC_COLUMNS, METRICS, SegMetrics
from surrogates.boundary import (
    class_bits,
    class_mask,
    compact_labels,
    dilate_or,
    has_class_bit,
    label_edges,
)


def compute(pred, target, num_classes, **kwargs):
    metrics = SegMetrics(num_classes, **kwargs)
    metrics.update(torch.tensor(pred).unsqueeze(0), torch.tensor(target).unsqueeze(0))
    return metrics.compute()


# One 2 x 3 image, 4 classes (class 3 absent from GT and prediction), one void pixel.
# Valid confusion matrix (rows GT): M00 = 1, M01 = 1, M11 = 2, M22 = 1.
TARGET = [[0, 0, 1], [1, 2, 255]]
PRED = [[0, 1, 1], [1, 2, 0]]


def test_miou_by_hand():
    result = compute(PRED, TARGET, 4)
    # IoU = 1/2, 2/3, 1, NaN (class 3 absent: skipped)
    assert result["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert math.isnan(result["per_class"]["miou"][3])


def test_fwiou_by_hand():
    # freq = 2/5, 2/5, 1/5 over valid pixels; textbook sum, not the reference's nanmean * C
    assert compute(PRED, TARGET, 4)["fwiou"] == pytest.approx(0.4 * 0.5 + 0.4 * 2 / 3 + 0.2 * 1)


def test_macc_by_hand():
    assert compute(PRED, TARGET, 4)["macc"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_gacc_by_hand():
    assert compute(PRED, TARGET, 4)["gacc"] == pytest.approx(4 / 5)  # the void pixel is ignored


def test_mdice_by_hand():
    assert compute(PRED, TARGET, 4)["mdice"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


def test_miou_image_averages_per_image_scores():
    target = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    pred = torch.tensor([[[0, 0], [0, 1]], [[1, 1], [1, 1]]])
    metrics = SegMetrics(3)
    metrics.update(pred, target)
    result = metrics.compute()
    # image 1: classes {0, 1}: IoU 3/4 and 0 -> 0.375; image 2: class 1 only -> 1
    assert result["miou_image"] == pytest.approx((0.375 + 1) / 2)
    # dataset level: IoU0 = 3/4, IoU1 = 4/5
    assert result["miou"] == pytest.approx((0.75 + 0.8) / 2)


# A 3 x 4 image for the boundary metrics. Class 1 fills the two left columns and touches the image
# border, class 0 the right, one void pixel at the top right.
BOUNDARY_TARGET = [[1, 1, 0, 255], [1, 1, 0, 0], [1, 1, 0, 0]]
BOUNDARY_PRED = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]


def test_unassigned_prediction_by_hand():
    # label C = 2 is "no class": GT 0 has one hit and one unassigned pixel, GT 1 two hits
    result = compute([[0, 2], [1, 1]], [[0, 0], [1, 1]], 2)
    assert result["per_class"]["miou"] == pytest.approx([1 / 2, 1.0])  # not 1/2, 2/3 (argmax)
    assert result["macc"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["gacc"] == pytest.approx(3 / 4)
    assert result["fwiou"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_unassigned_equals_an_extra_class_for_the_real_classes():
    # independent formula: "no class" scores the C real classes exactly like a (C+1)-th class
    # that never occurs in GT
    generator = torch.Generator().manual_seed(3)
    target = blob_target(2, 24, 24, 4, seed=3)
    pred = torch.randint(0, 5, (2, 24, 24), generator=generator)
    pred = torch.where(torch.rand(2, 24, 24, generator=generator) < 0.7, target.clamp(max=3), pred)
    assert (pred == 4).any()
    ours, extra = SegMetrics(4, tolerance=2), SegMetrics(5, tolerance=2)
    ours.update(pred, target)
    extra.update(pred, target)
    ours, extra = ours.compute(), extra.compute()
    for key in ("miou", "macc", "mdice", "biou", "bf1"):
        assert ours["per_class"][key] == pytest.approx(extra["per_class"][key][:4], nan_ok=True)
    assert ours["gacc"] == pytest.approx(extra["gacc"])
    assert ours["bf1"] == pytest.approx(extra["bf1"])


def test_edges_skip_the_image_border_and_include_pixels_next_to_void():
    target = torch.tensor(BOUNDARY_TARGET)
    gt = torch.where(target < 2, target, 2)
    edges = label_edges(gt) & (target < 2)
    expected = [
        [0, 1, 1, 0],  # (0,0) has only class-1 neighbours in the image: the border is no edge
        [0, 1, 1, 1],  # (1,3) touches the void pixel above it
        [0, 1, 1, 0],  # (2,3): no void or other-class neighbour
    ]
    assert edges.int().tolist() == expected


def test_bf1_by_hand():
    # Tolerance 0: exact coincidence. GT edges: class 1 {(0,1),(1,1),(2,1)}, class 0
    # {(0,2),(1,2),(2,2),(1,3)}. Predicted edges (not masked by void): class 1
    # {(0,1),(0,2),(1,1),(2,1)}, class 0 {(0,3),(1,2),(1,3),(2,2)}.
    # class 1: P = 3/4, R = 3/3; class 0: P = 3/4, R = 3/4.
    f1_class1 = 2 * 0.75 * 1 / 1.75
    f1_class0 = 0.75
    result = compute(BOUNDARY_PRED, BOUNDARY_TARGET, 2, tolerance=0)
    assert result["bf1"] == pytest.approx((f1_class0 + f1_class1) / 2, abs=1e-7)
    dropped = compute(BOUNDARY_PRED, BOUNDARY_TARGET, 2, tolerance=0, drop_background=True)
    assert dropped["bf1"] == pytest.approx(f1_class1, abs=1e-7)
    # with tolerance 1 every edge pixel has a partner of its class within one pixel
    assert compute(BOUNDARY_PRED, BOUNDARY_TARGET, 2, tolerance=1)["bf1"] == pytest.approx(1.0)


def test_biou_by_hand():
    # Tolerance 0, background kept: the trimap is the 7 GT edge pixels; on them M11 = 3, M01 = 1,
    # M00 = 3 -> IoU0 = 3/4, IoU1 = 3/4.
    assert compute(BOUNDARY_PRED, BOUNDARY_TARGET, 2, tolerance=0)["biou"] == pytest.approx(0.75)
    # Tolerance 1, background dropped from the trimap: the band is class-1 edges dilated by one,
    # columns 0-2: M11 = 6, M01 = 1, M00 = 2. The background IoU stays in the mean (A§1.3).
    result = compute(BOUNDARY_PRED, BOUNDARY_TARGET, 2, tolerance=1, drop_background=True)
    assert result["biou"] == pytest.approx((2 / 3 + 6 / 7) / 2)


def test_bf1_image_scores_each_image():
    # image 2 is the hand case above (tolerance 0, bg dropped: F1 = 6/7); image 1 predicts class 1
    # edges where there are none: class 1 has predicted edges but no GT edges -> F = 0.
    target = torch.tensor([[[1, 1, 0, 0]] * 3, BOUNDARY_TARGET])
    pred = torch.tensor([[[1, 1, 1, 0]] * 3, BOUNDARY_PRED])
    metrics = SegMetrics(2, tolerance=0, drop_background=True)
    metrics.update(pred, target)
    # image 1: GT class-1 edges at column 1, predicted at column 2: P = R = 0 -> 0
    assert metrics.compute()["bf1_image"] == pytest.approx((0 + 6 / 7) / 2, abs=1e-7)


def test_miou_and_gacc_match_torchmetrics_on_random_data():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    import data.torchvision_compat  # noqa: F401 - torchmetrics imports torchvision

    c = 7
    target = blob_target(6, 40, 48, c, seed=1)
    noise = torch.randint(0, c, target.shape, generator=torch.Generator().manual_seed(2))
    pred = torch.where(torch.rand(target.shape) < 0.3, noise, target.clamp(max=c - 1))
    jaccard = MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=255)
    accuracy = MulticlassAccuracy(num_classes=c, average="micro", ignore_index=255)
    ours = SegMetrics(c)
    for i in range(0, 6, 2):  # accumulated over batches
        ours.update(pred[i : i + 2], target[i : i + 2])
        jaccard.update(pred[i : i + 2], target[i : i + 2])
        accuracy.update(pred[i : i + 2], target[i : i + 2])
    result = ours.compute()
    assert result["miou"] == pytest.approx(float(jaccard.compute()), abs=1e-6)
    assert result["gacc"] == pytest.approx(float(accuracy.compute()), abs=1e-6)


def test_merge_and_state_sum_equal_one_pass():
    c = 5
    target = blob_target(4, 32, 32, c, seed=3)
    pred = blob_target(4, 32, 32, c, seed=4, void_fraction=0)
    whole = SegMetrics(c, drop_background=True)
    whole.update(pred, target)
    first, second = SegMetrics(c, drop_background=True), SegMetrics(c, drop_background=True)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    merged = first.merge(second).compute()
    expected = whole.compute()
    for key in ("miou", "fwiou", "macc", "gacc", "biou", "bf1", "mdice", "miou_image", "bf1_image"):
        assert merged[key] == pytest.approx(expected[key], abs=1e-12), key
    restored = SegMetrics(c, drop_background=True)
    restored.load_state_dict(whole.state_dict())
    assert restored.compute()["bf1"] == expected["bf1"]
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(SegMetrics(c, tolerance=3))


def test_region_only_metrics_skip_the_boundary_counts():
    c = 5
    target = blob_target(3, 24, 24, c, seed=5)
    pred = blob_target(3, 24, 24, c, seed=6, void_fraction=0)
    full, region = SegMetrics(c), SegMetrics(c, boundary=False)
    full.update(pred, target)
    region.update(pred, target)
    fast, slow = region.compute(), full.compute()
    for key in ("miou", "fwiou", "macc", "gacc", "mdice", "miou_image"):
        assert fast[key] == slow[key], key
    assert all(math.isnan(fast[key]) for key in ("biou", "bf1", "bf1_image"))
    assert not region.state["edges"].any() and not region.state["bconfmat"].any()


def test_empty_metrics_are_nan_and_reset_clears():
    metrics = SegMetrics(3)
    assert math.isnan(metrics.compute()["miou"])
    metrics.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert metrics.compute()["miou"] == 1.0
    metrics.reset()
    assert math.isnan(metrics.compute()["gacc"])


@pytest.mark.parametrize(
    "pred,target,message",
    [
        (
            torch.zeros(1, 4, 4, dtype=torch.long),
            torch.zeros(1, 4, 5, dtype=torch.long),
            "N x H x W",
        ),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "integer labels"),
        (torch.full((1, 4, 4), 4), torch.zeros(1, 4, 4, dtype=torch.long), "pred contains label 4"),
        (torch.full((1, 4, 4), -1), torch.zeros(1, 4, 4, dtype=torch.long), "label -1"),
    ],
)
def test_bad_metric_input_is_rejected(pred, target, message):
    with pytest.raises(ValueError, match=message):
        SegMetrics(3).update(pred, target)


def test_str_prints_a_table():
    metrics = SegMetrics(2, tolerance=0)
    metrics.update(torch.tensor([BOUNDARY_PRED]), torch.tensor([BOUNDARY_TARGET]))
    text = str(metrics)
    assert "IoU" in text and "bf1" in text and len(text.splitlines()) == 4


def test_metric_columns_are_the_numbers_compute_returns():
    metrics = SegMetrics(3)
    metrics.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 1]]]))
    results = metrics.compute()
    assert set(METRIC_COLUMNS) == set(results) - {"per_class"}
    assert METRIC_COLUMNS[:6] == METRICS  # the run files' first six: the target metrics


# one word of each type, each filled to its last usable bit (uint8 8, int16 15, int32 31, int64
# 63 classes), and two int64 words
WORDS = [(5, torch.uint8), (8, torch.uint8), (15, torch.int16), (21, torch.int32)]
WORDS += [(31, torch.int32), (63, torch.int64), (70, torch.int64)]


@pytest.mark.parametrize(("num_classes", "word"), WORDS)
@pytest.mark.parametrize("radius", [0, 1, 3])
@pytest.mark.parametrize("compact", [False, True])  # int64 labels, or compact_labels' type
def test_class_bit_dilation_is_the_one_hot_max_filter(num_classes, word, radius, compact):
    """The bit-set dilation (all classes in one OR pass) against the plain definition: a max
    filter of each class's one-hot edge map."""
    labels = blob_target(2, 13, 17, num_classes, seed=radius, void_fraction=0.0, cell=3)
    labels[0, :3, :3] = num_classes - 1  # the last bit of the word is used
    given = compact_labels(labels, num_classes) if compact else labels
    mask = label_edges(given)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2)
    one_hot = (one_hot * mask.unsqueeze(1)).double()
    k = 2 * radius + 1
    expected = torch.nn.functional.max_pool2d(one_hot, k, stride=1, padding=radius) > 0.5
    near = dilate_or(class_bits(given, mask, num_classes), radius)
    assert near.dtype == word and near.shape[1] == (1 if num_classes <= 63 else 2)
    classes = torch.arange(num_classes)
    assert torch.equal(class_mask(near, classes).bool(), expected)
    assert torch.equal(has_class_bit(near, given), expected.gather(1, labels[:, None])[:, 0])
    band = dilate_or(mask, radius)
    assert torch.equal(band, expected.any(1))
