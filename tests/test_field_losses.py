"""The field's baseline losses (issue 33): hand-computed cases on tiny images, void and absent
classes, the distance transform against scipy, and MONAI as an oracle where it implements the
same definition (test-only dependency)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import blob_target, random_logits
from scipy.ndimage import distance_transform_edt

from surrogates import build_loss
from surrogates.distance import distance_to, inside_outside, torch_distance_to
from surrogates.losses import median_frequency_weights

NEW = ["wce", "dpce", "ssim", "ce_dice", "tversky", "focal_tversky", "gdice", "boundary"]
NEW += ["hausdorff"]
C1, C2 = 0.01**2, 0.03**2


def build(name, **kwargs):
    if name == "wce" and "weights" not in kwargs:
        kwargs["class_frequencies"] = [5.0, 3.0, 1.0, 2.0][: kwargs.pop("classes", 4)]
    kwargs.pop("classes", None)
    return build_loss(name, **kwargs)


def logits_for(probabilities):
    """Logits (1, C, H, W) whose softmax is the given (C, H, W) probabilities."""
    return torch.tensor(probabilities, dtype=torch.float64).log().unsqueeze(0)


# --- the distance transform ---


@pytest.mark.parametrize("transform", [distance_to, torch_distance_to])  # CPU, other devices
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 5, 9), (4, 16, 16), (1, 1, 6)])
def test_distance_to_is_scipys_exact_transform(shape, transform):
    g = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=g) < 0.15
    mask[0, 0, 0] = True
    if shape[0] > 1:
        mask[-1] = False  # an empty map: all zero by contract
    expected = [distance_transform_edt(~m) if m.any() else 0 * m for m in mask.numpy()]
    assert np.allclose(transform(mask).numpy(), np.stack(expected), atol=1e-5)


def test_inside_outside_against_scipy_and_maps_without_boundary():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(6, 9, 7, generator=g) < 0.3
    mask[1], mask[2] = True, False  # whole map, empty map: no boundary
    inside, outside = inside_outside(mask.view(2, 3, 9, 7))
    for k, m in enumerate(mask.numpy()):
        edged = 0 < m.sum() < m.size
        expected_in = distance_transform_edt(m) if edged else 0 * m
        expected_out = distance_transform_edt(~m) if edged else 0 * m
        assert np.allclose(inside.view(6, 9, 7)[k].numpy(), expected_in, atol=1e-5)
        assert np.allclose(outside.view(6, 9, 7)[k].numpy(), expected_out, atol=1e-5)


# --- hand-computed values on 2 x 3 images ---


def test_wce_by_hand_and_median_frequency_weights():
    probs = [[[0.7, 0.4, 0.5], [0.2, 0.9, 0.5]], [[0.3, 0.6, 0.5], [0.8, 0.1, 0.5]]]
    target = torch.tensor([[[0, 1, 255], [1, 1, 0]]])
    loss = build_loss("wce", weights=[1.0, 3.0])(logits_for(probs), target)
    # pixels (label, p_label): (0, .7) (1, .6) (1, .8) (1, .1) (0, .5); weights 1 3 3 3 1
    terms = [(1, 0.7), (3, 0.6), (3, 0.8), (3, 0.1), (1, 0.5)]
    expected = sum(-w * math.log(p) for w, p in terms) / sum(w for w, _ in terms)
    assert float(loss) == pytest.approx(expected)
    # median-frequency balancing: median(6, 3, 1) / f; a class never seen gets 0
    assert median_frequency_weights([6, 3, 1, 0]).tolist() == pytest.approx([0.5, 1, 3, 0])


def test_dpce_by_hand():
    # classes 0 | 0 | 1 in both rows: class 0's inside distances 2, 1 (d_max 2) give penalties
    # (2 - d + 1) / 2 = 0.5, 1; class 1's column d = 1 = d_max gives 1
    target = torch.tensor([[[0, 0, 1], [0, 0, 1]]])
    loss = build_loss("dpce")(torch.zeros(1, 2, 2, 3, dtype=torch.float64), target)
    assert float(loss) == pytest.approx(math.log(2) * (1.5 + 2 + 2) / 3)


def test_ssim_by_hand_with_a_one_pixel_window():
    # a 1 x 1 window: mean = value, variances 0, so SSIM = (2 p y + C1) / (p^2 + y^2 + C1)
    target = torch.tensor([[[0, 1, 255], [1, 1, 0]]])
    loss = build_loss("ssim", window=1)(torch.zeros(1, 2, 2, 3, dtype=torch.float64), target)
    hit, miss = (1 + C1) / (1.25 + C1), C1 / (0.25 + C1)  # p = 0.5 against y = 1 and y = 0
    assert float(loss) == pytest.approx(1 - (hit + miss) / 2)


def test_ssim_matches_a_plain_window_by_window_restatement():
    logits, target = random_logits(1, 2, 5, 6, seed=2), blob_target(1, 5, 6, 2, seed=2, cell=2)
    p, k, sigma = torch.softmax(logits, 1)[0], 3, 1.5
    valid = target[0] != 255
    p = p * valid
    y = torch.stack([(target[0] == c) & valid for c in range(2)]).double()
    g = torch.tensor([math.exp(-(i**2) / (2 * sigma**2)) for i in (-1, 0, 1)])
    weight = (g[:, None] * g[None, :] / g.sum() ** 2).double()
    values = []
    for c in range(2):
        for i in range(1, 4):
            for j in range(1, 5):
                if not valid[i, j]:
                    continue
                a, b = p[c, i - 1 : i + 2, j - 1 : j + 2], y[c, i - 1 : i + 2, j - 1 : j + 2]
                ma, mb = (weight * a).sum(), (weight * b).sum()
                va, vb = (weight * a * a).sum() - ma**2, (weight * b * b).sum() - mb**2
                cov = (weight * a * b).sum() - ma * mb
                values.append(
                    (2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2))
                )
    loss = build_loss("ssim", window=k, sigma=sigma)(logits, target)
    assert float(loss) == pytest.approx(1 - float(sum(values)) / len(values))


def test_tversky_focal_tversky_ce_dice_by_hand():
    # p = 0.5 everywhere, GT [1, 0, void]: per class TP = FP = FN = 0.5
    logits, target = torch.zeros(1, 2, 1, 3, dtype=torch.float64), torch.tensor([[[1, 0, 255]]])
    index = 0.5 / (0.5 + 0.3 * 0.5 + 0.7 * 0.5)
    assert float(build_loss("tversky", smooth=0)(logits, target)) == pytest.approx(1 - index)
    focal = build_loss("focal_tversky", smooth=0)(logits, target)
    assert float(focal) == pytest.approx((1 - index) ** (3 / 4))
    both = build_loss("ce_dice", ce_weight=2.0, dice_weight=0.5, smooth=0)(logits, target)
    assert float(both) == pytest.approx(2 * math.log(2) + 0.5 * (1 - 0.5))
    # alpha = beta = 1/2 is Dice; focal Tversky with gamma = 1 is Tversky
    logits, target = random_logits(2, 3, 6, 5, seed=4), blob_target(2, 6, 5, 3, seed=4, cell=2)
    half = build_loss("tversky", alpha=0.5, beta=0.5)(logits, target)
    assert float(half) == pytest.approx(float(build_loss("dice")(logits, target)))
    plain = build_loss("focal_tversky", gamma=1.0)(logits, target)
    assert float(plain) == pytest.approx(float(build_loss("tversky")(logits, target)))


def test_gdice_by_hand_with_an_absent_class():
    # 3 classes, p = 1/3 each; GT [0, 0, 1] (class 2 absent), void elsewhere
    logits = torch.zeros(1, 3, 2, 3, dtype=torch.float64)
    target = torch.tensor([[[0, 0, 1], [255, 255, 255]]])
    w0, w1 = 1 / 2**2, 1 / 1**2  # class 2 takes the largest present weight, w1
    inter = w0 * 2 / 3 + w1 * 1 / 3
    cardinality = w0 * (1 + 2) + w1 * (1 + 1) + w1 * (1 + 0)
    loss = build_loss("gdice", smooth=0)(logits, target)
    assert float(loss) == pytest.approx(1 - 2 * inter / cardinality)


def test_boundary_by_hand_and_its_schedule():
    # GT 0 | 0 | 1, p = 0.5: class 0's phi = -1, 0, +1; class 1's phi = 2, 1, 0
    logits, target = torch.zeros(1, 2, 1, 3, dtype=torch.float64), torch.tensor([[[0, 0, 1]]])
    boundary_term = 0.5 * (-1 + 0 + 1 + 2 + 1 + 0) / 6
    pure = build_loss("boundary", alpha_start=0.0)(logits, target)
    assert float(pure) == pytest.approx(boundary_term)
    region = float(build_loss("gdice")(logits, target))
    loss = build_loss("boundary", epoch_calls=2, alpha_decay=0.25, alpha_min=0.4)
    with torch.no_grad():  # calls without grad do not count
        assert float(loss(logits, target)) == pytest.approx(region)
    alphas = [1, 1, 0.75, 0.75, 0.5, 0.5, 0.4, 0.4]
    values = [float(loss(logits.requires_grad_(), target).detach()) for _ in alphas]
    expected = [a * region + (1 - a) * boundary_term for a in alphas]
    assert values == pytest.approx(expected)
    assert loss.calls == len(alphas)


def test_hausdorff_by_hand():
    # GT 0 | 0 | 1; p(class 0) = 0.9, 0.2, 0.2 -> predicted regions 0 | 1 | 1
    probs = [[[0.9, 0.2, 0.2]], [[0.1, 0.8, 0.8]]]
    target = torch.tensor([[[0, 0, 1]]])
    d_pred = [1, 1, 2]  # the same for both classes: boundary between columns 0 and 1
    d_gt = [2, 1, 1]
    errors = [0.1**2, 0.8**2, 0.2**2]  # class 1's errors are the same
    expected = 2 * sum(e * (a**2 + b**2) for e, a, b in zip(errors, d_pred, d_gt, strict=True)) / 6
    assert float(build_loss("hausdorff")(logits_for(probs), target)) == pytest.approx(expected)


# --- every new loss: void, absent classes, gradients, bad options ---


@pytest.mark.parametrize("name", NEW)
def test_void_pixels_ignored_in_value_and_gradient(name):
    logits, target = random_logits(2, 3, 12, 10, seed=1), blob_target(2, 12, 10, 3, seed=1, cell=3)
    logits.requires_grad_(True)
    loss = build(name, classes=3)(logits, target)
    loss.backward()
    void = (target == 255).unsqueeze(1).expand_as(logits)
    assert void.any() and (logits.grad[void] == 0).all()
    assert torch.isfinite(logits.grad).all()
    moved = logits.detach().clone()
    moved[void] = 30 * torch.randn(int(void.sum()), dtype=moved.dtype)
    expected = float(loss.detach())
    assert float(build(name, classes=3)(moved, target)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_absent_classes_and_float32_gradients_are_finite(name):
    target = blob_target(2, 12, 10, 2, seed=2, cell=3)  # classes 0 and 1 of 4
    target[1] = 0  # a class filling an image: no boundary in its maps
    logits = random_logits(2, 4, 12, 10, seed=2, dtype=torch.float32).requires_grad_(True)
    loss = build(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if name in ("tversky", "focal_tversky"):  # the mean runs over the classes present
        confident = logits.detach().clone()
        confident[:, 2:] = -40.0  # classes 2 and 3: absent and never predicted
        reduced = build(name)(confident[:, :2].contiguous(), target)
        assert float(build(name)(confident, target)) == pytest.approx(float(reduced), rel=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_a_batch_without_any_boundary_or_valid_pixel(name):
    logits = random_logits(2, 3, 5, 4, seed=3).requires_grad_(True)
    for target in (torch.zeros(2, 5, 4, dtype=torch.long), torch.full((2, 5, 4), 255)):
        loss = build(name, classes=3)(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("wce", {"weights": [1.0, -1.0]}, "wce weights"),
        ("wce", {"weights": [0.0, 0.0]}, "sum to > 0"),
        ("wce", {}, "exactly one"),
        ("wce", {"class_frequencies": [0, 0]}, "class_frequencies"),
        ("tversky", {"alpha": -0.1}, "alpha=-0.1"),
        ("focal_tversky", {"gamma": 0}, "gamma"),
        ("ce_dice", {"ce_weight": 0, "dice_weight": 0}, "ce_dice weights"),
        ("ssim", {"window": 4}, "odd"),
        ("boundary", {"alpha_start": 1.5}, "alpha_start"),
        ("hausdorff", {"alpha": -1}, "alpha"),
    ],
)
def test_bad_options_are_one_line_value_errors(name, options, message):
    with pytest.raises(ValueError, match=message) as error:
        build_loss(name, **options)
    assert "\n" not in str(error.value)


def test_wce_rejects_a_weight_count_that_is_not_the_class_count():
    logits, target = random_logits(1, 3, 4, 4), blob_target(1, 4, 4, 3)
    with pytest.raises(ValueError, match="2 class weights, logits 3"):
        build_loss("wce", weights=[1.0, 2.0])(logits, target)


# --- MONAI as an oracle (same definitions; no void, every class present) ---


def oracle_data():
    logits = random_logits(2, 3, 12, 10, seed=0)
    target = blob_target(2, 12, 10, 3, seed=0, cell=3, void_fraction=0)
    assert (target.unique() == torch.arange(3)).all()
    return logits, target


def test_monai_region_losses():
    losses = pytest.importorskip("monai.losses")
    logits, target = oracle_data()
    common = dict(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    pairs = [
        (losses.DiceCELoss(**common), build_loss("ce_dice", smooth=1e-5)),
        (losses.TverskyLoss(alpha=0.3, beta=0.7, **common), build_loss("tversky", smooth=1e-5)),
        (losses.GeneralizedDiceLoss(**common), build_loss("gdice", smooth=1e-5)),
    ]
    for oracle, ours in pairs:
        expected = oracle(logits, target.unsqueeze(1))
        assert float(ours(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_monai_distance_losses():
    losses = pytest.importorskip("monai.losses")
    logits, target = oracle_data()
    oracle = losses.HausdorffDTLoss(include_background=True, to_onehot_y=True, softmax=True)
    expected = oracle(logits, target.unsqueeze(1))
    assert float(build_loss("hausdorff")(logits, target)) == pytest.approx(float(expected))
    # the boundary term alone: the mean of p_c phi_c over pixels and classes
    y = F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    expected = losses.BoundaryLoss()(torch.softmax(logits, 1), y)
    ours = build_loss("boundary", alpha_start=0.0)(logits, target)
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)


def test_a_retrain_sets_the_boundary_epoch_and_restores_the_count_on_resume():
    from retrain.train import schedule_loss

    fit = SimpleNamespace(aux_weight=0.4)
    cfg = SimpleNamespace(loss={"name": "boundary"}, retrain=SimpleNamespace(fit=fit))
    loss = build_loss("boundary")
    schedule_loss(loss, cfg, SimpleNamespace(aux_head=object()), epoch_iterations=30, start=45)
    assert (loss.epoch_calls, loss.calls) == (60, 90)  # two calls an iteration: main and aux
    assert loss.alpha() == pytest.approx(0.99)
    cfg.loss["epoch_calls"] = 7  # the loss file's own epoch wins
    schedule_loss(loss, cfg, SimpleNamespace(), epoch_iterations=30, start=0)
    assert (loss.epoch_calls, loss.calls) == (60, 0)
