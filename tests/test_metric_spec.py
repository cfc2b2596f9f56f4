"""Metric specs (issue 32): formula parsing and its errors, exact values by hand, against
SegMetrics' built-ins and against torchmetrics, and the surrogate against the hand-written
surrogates (values and gradients) and against independent soft formulas."""

import math
import pickle
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import blob_target
from reference_asl import _gt_edges
from test_surrogates import data, loss_and_grad  # the surrogate tests' inputs (C = 5)

from surrogates import PRESETS, SegMetrics, SurrogateLoss
from surrogates.metrics import SpecMetric
from surrogates.spec import (
    MetricSpec,
    class_scores,
    list_specs,
    load_spec,
    spec_curves,
    spec_from_dict,
)

C = 5

# --- the formula language ---------------------------------------------------------------------


def test_every_whitelisted_operation_evaluates_by_hand():
    spec = MetricSpec("ops", "sqrt(tp) * 2 ** 2 + max(tn, 1) - min(fp, fn) / 4 + (-fn) * 0")
    counts = torch.tensor([[9.0, 2.0, 8.0, 0.5], [16.0, 12.0, 4.0, 3.0]], dtype=torch.float64)
    # 3 * 4 + 1 - 2 / 4 = 12.5;  4 * 4 + 3 - 4 / 4 = 18
    assert class_scores(spec, counts).tolist() == [12.5, 18.0]


def test_a_zero_denominator_gives_zero():
    counts = torch.tensor([[0.0, 0.0, 3.0, 5.0]], dtype=torch.float64)  # never predicted
    assert class_scores(load_spec("precision"), counts).tolist() == [0.0]
    assert class_scores(MetricSpec("x", "tp / 0 + tp"), counts).tolist() == [0.0]


@pytest.mark.parametrize(
    "formula,message,column",
    [
        ("2 * tp / (2 * tp + fp + fn", r"column 10: invalid syntax \('\(' was never closed\)", 10),
        ("tp +", "column 5: invalid syntax", 5),
        ("tp / (tp + fpp)", "column 12: unknown name 'fpp'; valid: .*did you mean 'fp'", 12),
        ("tp % fp", "column 4: operator Mod is not allowed", 4),
        ("(tp) // fp", "column 6: operator FloorDiv is not allowed", 6),
        ("log(tp) + tp", "column 1: only min.*not log", 1),
        ("tp[0]", "column 1: Subscript is not allowed", 1),
        ("tp if fp else fn", "column 1: IfExp is not allowed", 1),
        ("max + tp", "column 1: 'max' is a function", 1),
        ("sqrt(tp, fp)", "column 1: sqrt takes one argument", 1),
        ("tp * 'a'", "column 6: 'a' is not allowed", 6),
    ],
)
def test_a_bad_formula_points_at_the_character(formula, message, column):
    with pytest.raises(ValueError, match=message) as error:
        MetricSpec("mine", formula)
    first, text, caret = str(error.value).split("\n")
    assert first.startswith("per_class of metric 'mine', column")
    assert text == f"    {formula}" and caret == "    " + " " * (column - 1) + "^"


@pytest.mark.parametrize(
    "formula,name",
    [("tn - tp", "tp"), ("tp - tn", "tn"), ("tp + fp", "fp"), ("tp / (tp + fp) + fn", "fn")],
)
def test_a_formula_that_cannot_be_maximised_is_refused_naming_the_variable(formula, name):
    direction = "decreases" if name in ("tp", "tn") else "increases"
    with pytest.raises(ValueError, match=f"^per_class of metric 'x' {direction} as {name} grows"):
        MetricSpec("x", formula)


@pytest.mark.parametrize(
    "formula,message",
    [
        ("1 / (1 - tn) + tp", "decreases as tn grows"),  # increasing on each side of a pole
        ("sqrt(tp - fp)", "is not finite at"),
        ("2 * 3", "uses none of tp, fp, fn, tn"),
    ],
)
def test_poles_non_finite_values_and_count_free_formulas_are_refused(formula, message):
    with pytest.raises(ValueError, match=message):
        MetricSpec("x", formula)


def test_common_monotone_metrics_are_accepted():
    for formula in [
        "(tp * tn - fp * fn) / sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))",  # MCC
        "sqrt(tp / (tp + fp) * tp / (tp + fn))",  # Fowlkes-Mallows
        "min(tp / (tp + fp), tp / (tp + fn))",
        "(tp + tn) / (tp + tn + fp + fn)",
    ]:
        MetricSpec("x", formula)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: replace(load_spec("dice"), classes="macro"), "unknown classes 'macro'"),
        (lambda: replace(load_spec("dice"), images="image"), "did you mean 'per_image'"),
        (lambda: replace(load_spec("dice"), absent="nan"), "unknown absent 'nan'"),
        (lambda: replace(load_spec("dice"), present="pred"), "unknown present 'pred'"),
        (lambda: replace(load_spec("dice"), band=-1), "band of metric 'dice' must be 0 or"),
        (lambda: replace(load_spec("dice"), background="no"), "must be true or false"),
        (lambda: load_spec("fbeta", beta=-2), "constant beta of metric 'fbeta' must be .* >= 0"),
        (lambda: load_spec("tversky", alpha=-0.1), "constant alpha .* >= 0"),
        (lambda: load_spec("fbeta", bta=2), "unknown constant 'bta'.*did you mean 'beta'"),
        (lambda: load_spec("dice", beta=2), "metric 'dice' has no constants"),
        (lambda: load_spec("dcie"), "unknown metric 'dcie'.*did you mean 'dice'"),
        (lambda: MetricSpec("x", "tp * k", {"k": 1, "q": 2}), "constant 'q' is not used"),
        (lambda: MetricSpec("x", "tp * tp", {"tp": 1}), "constant name 'tp'"),
        (lambda: MetricSpec("a b", "tp"), "metric name 'a b'"),
        (lambda: spec_from_dict({"name": "x", "per_class": "tp", "mode": 1}), "unknown key"),
        (lambda: spec_from_dict({"name": "x"}), "has no 'per_class'"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_load_spec_with_a_beta_of_one_is_dice():
    f1 = load_spec("fbeta", beta=1)
    counts = torch.tensor([[3.0, 1.0, 2.0, 9.0], [0.0, 4.0, 1.0, 9.0]], dtype=torch.float64)
    assert torch.allclose(class_scores(f1, counts), class_scores(load_spec("dice"), counts))
    assert load_spec("fbeta").constants == {"beta": 2.0}


def test_spec_round_trips_through_dict_yaml_and_pickle(tmp_path):
    import yaml

    spec = replace(load_spec("tversky", alpha=0.2), images="per_image", background=False, band=3)
    doc = spec.to_dict()
    assert doc == {
        "name": "tversky",
        "per_class": "tp / (tp + alpha * fp + beta * fn)",
        "constants": {"alpha": 0.2, "beta": 0.7},
        "classes": "mean",
        "images": "per_image",
        "present": "gt_or_pred",
        "absent": "skip",
        "background": False,
        "band": 3,
    }
    assert spec_from_dict(doc) == spec and hash(spec_from_dict(doc)) == hash(spec)
    assert pickle.loads(pickle.dumps(spec)) == spec
    path = tmp_path / "f2_fg.yaml"
    doc.pop("name")
    path.write_text(yaml.safe_dump(doc))
    loaded = load_spec(path, beta=0.5)
    assert loaded.name == "f2_fg" and loaded.constants == {"alpha": 0.2, "beta": 0.5}
    assert replace(loaded, name="tversky", constants=spec.constants) == spec
    with pytest.raises(ValueError, match="metric file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_curves_are_those_the_formula_needs():
    assert spec_curves(load_spec("dice")) == ("tp", "fp")
    assert spec_curves(load_spec("recall")) == ("tp",)
    assert spec_curves(load_spec("specificity")) == ("fp",)
    assert spec_curves(MetricSpec("x", "tn / (tn + fn)")) == ("tp", "fp")  # fn = |Y| - tp
    assert len(list_specs()) == 14 and "bf1" not in list_specs()


# --- the exact metric -------------------------------------------------------------------------

# The hand case of test_metrics.py: one 2 x 3 image, 4 classes (3 absent), one void pixel.
# Per class (tp, fp, fn, tn) over the 5 valid pixels: 0 (1, 0, 1, 3), 1 (2, 1, 0, 2),
# 2 (1, 0, 0, 4), 3 (0, 0, 0, 5).
TARGET = [[0, 0, 1], [1, 2, 255]]
PRED = [[0, 1, 1], [1, 2, 0]]


def exact(spec, pred=PRED, target=TARGET, num_classes=4, **kwargs):
    metric = SpecMetric(spec, num_classes, **kwargs)
    metric.update(torch.tensor(pred), torch.tensor(target))
    return metric


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("dice", (2 / 3 + 4 / 5 + 1) / 3),
        ("precision", (1 + 2 / 3 + 1) / 3),
        ("recall", (1 / 2 + 1 + 1) / 3),
        ("specificity", (1 + 2 / 3 + 1) / 3),
        ("balanced_accuracy", (3 / 4 + 5 / 6 + 1) / 3),
        ("fbeta", (5 / 9 + 10 / 11 + 1) / 3),  # beta = 2: 5 tp / (5 tp + 4 fn + fp)
        ("tversky", (1 / 1.7 + 2 / 2.3 + 1) / 3),
        ("miou", (1 / 2 + 2 / 3 + 1) / 3),
        ("gacc", 4 / 5),
        ("fwiou", (2 * 1 / 2 + 2 * 2 / 3 + 1) / 5),
        (replace(load_spec("dice"), absent="zero"), (2 / 3 + 4 / 5 + 1) / 4),
        (replace(load_spec("dice"), absent="one"), (2 / 3 + 4 / 5 + 1 + 1) / 4),
        (replace(load_spec("dice"), classes="weighted"), (2 * 2 / 3 + 2 * 4 / 5 + 1) / 5),
        (replace(load_spec("dice"), classes="micro"), 8 / 10),  # 2 * 4 / (2 * 4 + 1 + 1)
        (replace(load_spec("dice"), background=False), (4 / 5 + 1) / 2),
        (replace(load_spec("specificity"), absent="one"), (1 + 2 / 3 + 1 + 1) / 4),
    ],
)
def test_exact_values_by_hand(spec, expected):
    assert exact(spec).compute() == pytest.approx(expected, abs=1e-12)


def test_per_class_values_follow_the_absent_rule():
    assert exact("dice").per_class() == pytest.approx([2 / 3, 4 / 5, 1, math.nan], nan_ok=True)
    one = replace(load_spec("dice"), absent="one")
    assert exact(one).per_class() == pytest.approx([2 / 3, 4 / 5, 1, 1])


def test_present_gt_skips_classes_predicted_but_absent_from_gt():
    # class 1 is predicted once, never in GT: recall 0 / 0 = 0 counts for gt_or_pred
    pred, target = [[0, 1]], [[0, 0]]
    assert exact("recall", pred, target, 2).compute() == pytest.approx((1 / 2 + 0) / 2)
    assert exact("macc", pred, target, 2).compute() == pytest.approx(1 / 2)


def test_per_image_averages_the_images_and_skips_empty_ones():
    pred = torch.tensor([PRED, [[3, 3, 3], [3, 3, 3]], [[0, 0, 0], [0, 0, 0]]])
    target = torch.tensor([TARGET, [[3, 3, 3], [3, 3, 255]], [[255] * 3] * 2])
    metric = SpecMetric("dice_image", 4)
    metric.update(pred, target)
    # image 3 has no valid pixel: left out; image 2 holds class 3 alone: 1
    assert metric.compute() == pytest.approx(((2 / 3 + 4 / 5 + 1) / 3 + 1) / 2)
    assert int(metric.state["image_count"]) == 2


def test_unassigned_predictions_are_false_negatives_only():
    # label 2 = C is "no class": GT 0 has tp 1, fn 1; no class gets its false positive
    metric = exact("precision", [[0, 2], [1, 1]], [[0, 0], [1, 1]], 2)
    assert metric.state["counts"].tolist() == [[1, 0, 1, 2], [2, 0, 0, 2]]
    assert metric.compute() == pytest.approx(1.0)


def test_band_counts_the_gt_trimap_like_biou():
    # test_metrics.py's BIoU hand case: tolerance 1, background band dropped -> (2/3 + 6/7) / 2
    target = [[1, 1, 0, 255], [1, 1, 0, 0], [1, 1, 0, 0]]
    pred = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    biou = replace(load_spec("biou"), band=1)
    assert exact(biou, pred, target, 2, drop_background=True).compute() == pytest.approx(
        (2 / 3 + 6 / 7) / 2
    )


def random_labels(n=4, h=30, w=28, c=7, seed=1, unassigned=True):
    """Blob targets of classes 0-4 (and void), predictions mostly right plus noise over 0-5
    (and C when unassigned): class 5 is predicted but never in GT, class 6 absent from both."""
    target = blob_target(n, h, w, 5, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.randint(0, 6 + unassigned, target.shape, generator=generator)
    noise = torch.where(noise == 6, c, noise)
    keep = torch.rand(target.shape, generator=generator) < 0.7
    return torch.where(keep, target.clamp(max=4), noise), target


@pytest.mark.parametrize("drop_background", [False, True])
def test_the_paper_metrics_as_specs_equal_segmetrics(drop_background):
    pred, target = random_labels()
    tolerance = 2
    names = ("miou", "fwiou", "macc", "gacc", "miou_image")
    specs = [replace(load_spec(name), name=f"{name}_spec") for name in names]
    specs += [replace(load_spec("biou"), name="biou_spec", band=tolerance)]
    specs += [replace(load_spec("dice"), name="mdice_spec")]
    metrics = SegMetrics(7, tolerance=tolerance, drop_background=drop_background, specs=specs)
    for i in range(0, 4, 2):
        metrics.update(pred[i : i + 2], target[i : i + 2])
    results = metrics.compute()
    for name in (*names, "biou", "mdice"):
        assert results[f"{name}_spec"] == pytest.approx(results[name], abs=1e-12), name
    for name in ("miou", "macc", "biou", "mdice"):
        spec_values = results["per_class"][f"{name}_spec"]
        assert spec_values == pytest.approx(results["per_class"][name], nan_ok=True), name


def test_segmetrics_pooled_counts_give_any_pooled_spec_after_the_fact():
    # retrain's classes.csv keeps these counts: bench quality scores a spec target on them
    pred, target = random_labels()
    metrics = SegMetrics(7, specs=["fbeta", "tversky"])
    metrics.update(pred, target)
    results = metrics.compute()
    per_class = results["per_class"]
    counts = torch.tensor([per_class[k] for k in ("tp", "fp", "fn", "tn")]).T
    valid = (target >= 0) & (target < 7)
    gt, pr = target[valid], pred[valid]
    assert counts[:, 0].tolist() == [int(((gt == c) & (pr == c)).sum()) for c in range(7)]
    assert counts[:, 1].tolist() == [int(((gt != c) & (pr == c)).sum()) for c in range(7)]
    assert counts[:, 2].tolist() == [int(((gt == c) & (pr != c)).sum()) for c in range(7)]
    assert (counts.sum(1) == valid.sum()).all()
    for name in ("fbeta", "tversky"):
        after = SpecMetric(name, 7)
        after.state["counts"] = counts
        assert after.compute() == pytest.approx(results[name], abs=1e-12), name


def test_segmetrics_keeps_its_results_and_refuses_taken_names():
    pred, target = random_labels(n=2)
    plain, carrying = SegMetrics(7), SegMetrics(7, specs=["dice_image", "fbeta"])
    plain.update(pred, target)
    carrying.update(pred, target)
    before, after = plain.compute(), carrying.compute()
    assert set(after) - set(before) == {"dice_image", "fbeta"}
    assert all(after[k] == before[k] for k in before if k != "per_class")
    assert after["per_class"]["fbeta"] and "dice_image" not in after["per_class"]
    for specs in (["miou"], ["miou_image"], ["dice", "dice"]):
        with pytest.raises(ValueError, match="is taken"):
            SegMetrics(7, specs=specs)


def test_spec_metrics_merge_and_restore_like_segmetrics():
    pred, target = random_labels()
    specs = ["dice_image", replace(load_spec("tversky"), band=2, classes="weighted")]
    whole = SegMetrics(7, specs=specs)
    whole.update(pred, target)
    first, second = SegMetrics(7, specs=specs), SegMetrics(7, specs=specs)
    first.update(pred[:1], target[:1])
    second.update(pred[1:], target[1:])
    merged = first.merge(second).compute()
    expected = whole.compute()
    for name in ("dice_image", "tversky"):
        assert merged[name] == pytest.approx(expected[name], abs=1e-12)
    restored = SegMetrics(7, specs=specs)
    restored.load_state_dict(whole.state_dict())
    assert restored.compute()["tversky"] == expected["tversky"]
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(SegMetrics(7, specs=["dice_image", "tversky"]))


TORCHMETRICS = {  # torchmetrics class and keyword arguments -> our built-in spec
    "fbeta": ("MulticlassFBetaScore", {"beta": 2.0}),
    "specificity": ("MulticlassSpecificity", {}),
    "precision": ("MulticlassPrecision", {}),
    "recall": ("MulticlassRecall", {}),
}


@pytest.mark.parametrize("name", TORCHMETRICS)
@pytest.mark.parametrize("classes", ["mean", "weighted", "micro"])
@pytest.mark.parametrize("images", ["pooled", "per_image"])
def test_spec_metrics_equal_torchmetrics(name, classes, images):
    """Same definitions: macro (classes absent from GT and prediction skipped, x / 0 = 0),
    weighted by GT support, micro; global or per sample then the mean; void ignored."""
    import torchmetrics.classification as tm

    pred, target = random_labels(unassigned=False)
    cls, kwargs = TORCHMETRICS[name]
    average = {"mean": "macro", "weighted": "weighted", "micro": "micro"}[classes]
    multidim = {"pooled": "global", "per_image": "samplewise"}[images]
    reference = getattr(tm, cls)(
        num_classes=7, average=average, multidim_average=multidim, ignore_index=255, **kwargs
    )
    ours = SpecMetric(replace(load_spec(name), classes=classes, images=images), 7)
    for i in range(0, 4, 2):
        ours.update(pred[i : i + 2], target[i : i + 2])
        reference.update(pred[i : i + 2], target[i : i + 2])
    assert ours.compute() == pytest.approx(float(reference.compute().mean()), abs=1e-6)


# --- the surrogate ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["miou", "fwiou", "biou", "macc", "gacc"])
@pytest.mark.parametrize("preset", ["asl-voc", "identity"])
@pytest.mark.parametrize("options", ["pooled", "present", "per image", "absent class"])
def test_paper_specs_give_the_hand_written_surrogates(metric, preset, options):
    """Values and gradients of SurrogateLoss(spec) against SurrogateLoss(name), float64 to
    1e-10 and float32 to 1e-6, on test_surrogates.py's reference cases and options."""
    theta = PRESETS[f"asl-voc-{metric}"] if preset == "asl-voc" else "identity"
    spec = replace(load_spec(metric), band=2) if metric == "biou" else load_spec(metric)
    kwargs = {
        "present": {"class_reduction": "present"},
        "per image": {"per_image": True},
    }.get(options, {})
    builtin = SurrogateLoss(metric, theta, C, tolerance=2, **kwargs)
    ours = SurrogateLoss(spec, theta, C, **kwargs)
    assert ours.theta == builtin.theta and ours.drop_background == builtin.drop_background
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
        logits, target = data(dtype)
        if options == "absent class":
            target = torch.where(target == 4, 3, target)
        value, grad = loss_and_grad(ours, logits, target)
        expected, expected_grad = loss_and_grad(builtin, logits, target)
        assert abs(float(value - expected)) < tol, (dtype, float(value), float(expected))
        assert torch.allclose(grad, expected_grad, atol=tol, rtol=1e-4), dtype


def soft_counts(logits, target, band=None):
    """Independent identity-curve soft counts (each (N, C)): tp = sum p y, fp = sum p (1-y),
    fn = sum (1-p) y, tn = sum (1-p)(1-y) over valid pixels (and the band)."""
    p = torch.softmax(logits, 1)
    valid = (target != 255).unsqueeze(1).to(p.dtype)
    m = valid if band is None else valid * band
    y = torch.stack([(target == c) for c in range(C)], 1).to(p.dtype)
    total = lambda x: (x * m).sum((2, 3))  # noqa: E731
    return total(p * y), total(p * (1 - y)), total((1 - p) * y), total((1 - p) * (1 - y))


EPS = 1e-8


def test_custom_specs_are_their_soft_formulas():
    logits, target = data(n=3)
    target[0] = target[0].clamp(max=2)  # image 0 lacks classes 3 and 4
    tp, fp, fn, tn = soft_counts(logits, target)
    batch = [x.sum(0) for x in (tp, fp, fn, tn)]  # pooled over the batch
    dice = 2 * batch[0] / (2 * batch[0] + batch[1] + batch[2] + EPS)
    tversky = batch[0] / (batch[0] + 0.3 * batch[1] + 0.7 * batch[2] + EPS)
    specificity = batch[3] / (batch[3] + batch[1] + EPS)
    dice_image = (2 * tp / (2 * tp + fp + fn + EPS)).mean(1).mean()
    gt = batch[0] + batch[2]
    cases = {
        "dice": dice.mean(),
        "tversky": tversky.mean(),
        "specificity": specificity.mean(),
        "dice_image": dice_image,
        "fb": dice[1:].mean(),
        "dw": (gt * dice).sum() / gt.sum(),
        "dm": 2 * batch[0].sum() / (2 * batch[0].sum() + batch[1].sum() + batch[2].sum() + EPS),
    }
    specs = {name: load_spec(name) for name in ("dice", "tversky", "specificity", "dice_image")}
    specs["fb"] = replace(specs["dice"], background=False)
    specs["dw"] = replace(specs["dice"], classes="weighted")
    specs["dm"] = replace(specs["dice"], classes="micro")
    for name, expected in cases.items():
        value = SurrogateLoss(specs[name], "identity", C)(logits, target)
        assert float(value) == pytest.approx(1 - float(expected), abs=1e-12), name


def test_present_reduction_applies_the_absent_rule_to_classes_without_gt():
    logits, target = data()
    target = torch.where(target >= 3, 0, target)  # classes 3 and 4 absent from the GT
    tp, fp, fn, _ = (x.sum(0) for x in soft_counts(logits, target))
    dice = 2 * tp / (2 * tp + fp + fn + EPS)
    expected = {
        "skip": dice[:3].mean(),
        "zero": dice[:3].sum() / 5,
        "one": (dice[:3].sum() + 2) / 5,
    }
    for rule, value in expected.items():
        spec = replace(load_spec("dice"), absent=rule)
        loss = SurrogateLoss(spec, "identity", C, class_reduction="present")
        assert float(loss(logits, target)) == pytest.approx(1 - float(value), abs=1e-12), rule
    everything = SurrogateLoss("dice", "identity", C)(logits, target)  # "all": every class
    assert float(everything) == pytest.approx(1 - float(dice.mean()), abs=1e-12)


def test_band_uses_the_reference_trimap():
    logits, target = data()
    valid = (target >= 0) & (target < C)
    y = F.one_hot(torch.where(valid, target, C), C + 1)[..., :C].permute(0, 3, 1, 2).double()
    edges = _gt_edges(y)[:, 1:]  # background dropped (the default for a band)
    band = (F.max_pool2d(edges, 5, stride=1, padding=2).amax(1, keepdim=True) > 0.5).double()
    tp, fp, fn, _ = (x.sum(0) for x in soft_counts(logits, target, band))
    expected = (2 * tp / (2 * tp + fp + fn + EPS)).mean()
    loss = SurrogateLoss(replace(load_spec("dice"), band=2), "identity", C)
    assert loss.tolerance == 2 and loss.drop_background
    assert float(loss(logits, target)) == pytest.approx(1 - float(expected), abs=1e-12)


def test_spec_surrogate_gradcheck_float64():
    logits, target = data(n=2, h=8, w=6)
    spec = replace(load_spec("tversky"), images="per_image", background=False, band=2)
    loss = SurrogateLoss(spec, PRESETS["asl-voc-miou"], C)
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (z,), eps=1e-6, atol=1e-6)


def test_void_pixels_have_no_influence_on_a_spec_surrogate():
    logits, target = data()
    void = target == 255
    loss = SurrogateLoss("balanced_accuracy", PRESETS["asl-voc-miou"], C)
    value, grad = loss_and_grad(loss, logits, target)
    scrambled = logits.clone()
    scrambled[void.unsqueeze(1).expand_as(logits)] = 50 * torch.randn(int(void.sum()) * C).double()
    value2, _ = loss_and_grad(loss, scrambled, target)
    assert float(value2) == pytest.approx(float(value), abs=1e-12)
    assert (grad[void.unsqueeze(1).expand_as(grad)] == 0).all()


def test_spec_surrogate_construction(tmp_path):
    assert len(SurrogateLoss("recall", "identity", C).theta) == 6
    assert SurrogateLoss("dice", "asl-voc-miou", C).theta == PRESETS["asl-voc-miou"]
    assert SurrogateLoss("dice_image", "identity", C).group_size == 1
    assert SurrogateLoss(load_spec("dice").to_dict(), "identity", C).metric == "dice"
    with pytest.raises(ValueError, match="has 12 numbers"):
        SurrogateLoss("recall", PRESETS["asl-voc-miou"], C)
    with pytest.raises(ValueError, match="per_image: group_size 1, not 2"):
        SurrogateLoss("dice_image", "identity", C, group_size=2)
    with pytest.raises(ValueError, match="region_weight"):
        SurrogateLoss("dice", "identity", C, region_weight=0.5)
    SurrogateLoss(replace(load_spec("dice"), band=3), "identity", C, region_weight=0.5)
    with pytest.raises(ValueError, match="unknown metric 'dicee'.*did you mean 'dice'"):
        SurrogateLoss("dicee", "identity", C)
    path = tmp_path / "dice_bezier.yaml"
    path.write_text(
        "loss:\n  name: surrogate\n  metric:\n    name: f2\n"
        "    per_class: 5 * tp / (5 * tp + 4 * fn + fp)\n    images: per_image\n"
        f"  theta: {PRESETS['asl-voc-miou']}\n  num_classes: {C}\n"
    )
    loss = SurrogateLoss.from_file(path)
    assert loss.metric == "f2" and loss.spec.images == "per_image" and loss.group_size == 1


# --- DDP --------------------------------------------------------------------------------------


def ddp_worker(rank, world_size, init_file, logits, target, out):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    half = logits.shape[0] // world_size
    mine = slice(rank * half, (rank + 1) * half)
    for name, kwargs in (("dice", {"sync": True}), ("dice_image", {})):
        loss = SurrogateLoss(name, PRESETS["asl-voc-miou"], C, **kwargs)
        z = logits[mine].clone().requires_grad_(True)
        value = loss(z, target[mine])
        value.backward()
        out[f"{name}/{rank}"] = (value.detach(), z.grad)
    metrics = SegMetrics(C, specs=["dice_image", "tversky"])
    metrics.update(logits[mine].argmax(1), target[mine])
    metrics.all_reduce()
    out[f"metrics/{rank}"] = {k: metrics.compute()[k] for k in ("dice_image", "tversky")}
    dist.destroy_process_group()


def test_spec_surrogates_and_metrics_under_ddp_equal_one_process(tmp_path):
    logits, target = data(n=4, h=12, w=12)
    out = mp.Manager().dict()
    mp.spawn(ddp_worker, args=(2, tmp_path / "init", logits, target, out), nprocs=2)
    for name in ("dice", "dice_image"):
        whole, grad = loss_and_grad(SurrogateLoss(name, PRESETS["asl-voc-miou"], C), logits, target)
        for rank in range(2):
            value, rank_grad = out[f"{name}/{rank}"]
            assert float(value) == pytest.approx(float(whole), abs=1e-12)
            # sync and the gathered per-image sums both send each process world_size times
            # its share of the gradient, which DDP's averaging turns into the global one
            expected = 2 * grad[rank * 2 : (rank + 1) * 2]
            assert torch.allclose(rank_grad, expected, atol=1e-12), name
    metrics = SegMetrics(C, specs=["dice_image", "tversky"])
    metrics.update(logits.argmax(1), target)
    for rank in range(2):
        for key, value in out[f"metrics/{rank}"].items():
            assert value == pytest.approx(metrics.compute()[key], abs=1e-12), key
