"""Baseline losses and the registry: independent formulas and hand-computed cases."""

import pytest
import torch
import torch.nn.functional as F
from helpers import blob_target, random_logits

from surrogates import SurrogateLoss, build_loss, list_losses

C = 4


def data(seed=0):
    return random_logits(2, C, 12, 10, seed=seed), blob_target(2, 12, 10, C, seed=seed, cell=3)


def one_hot_logits(labels, num_classes):
    """Logits whose softmax is one-hot to float64 precision (exp(-200) underflows to 0)."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).double() * 400 - 200


def test_registry_lists_and_builds_every_loss():
    assert {"ce", "dice", "focal", "jaccard", "lovasz", "surrogate"} <= set(list_losses())
    assert isinstance(
        build_loss("surrogate", metric="miou", theta="identity", num_classes=3), SurrogateLoss
    )
    with pytest.raises(ValueError, match="unknown loss 'lovaz'.*did you mean 'lovasz'"):
        build_loss("lovaz")


def test_ce_is_torch_cross_entropy_and_focal_reduces_to_it():
    logits, target = data()
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(build_loss("ce")(logits, target), expected)
    assert torch.allclose(build_loss("focal", gamma=0.0)(logits, target), expected)


def test_focal_by_hand():
    # one valid pixel with p_t = 0.8 (two classes), one void pixel
    logits = torch.tensor([[[[0.0, 5.0]], [[-torch.log(torch.tensor(4.0)).item(), 1.0]]]])
    target = torch.tensor([[[0, 255]]])
    expected = -((1 - 0.8) ** 2) * torch.log(torch.tensor(0.8))
    assert float(build_loss("focal")(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_dice_and_jaccard_by_hand():
    # 1 x 2 classes x 1 x 3 pixels: p(class 1) = [0.5, 0.5, 0.5], GT = [1, 0, 255]
    logits = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    target = torch.tensor([[[1, 0, 255]]])
    # valid pixels only: class 0 I = 0.5, |p| = 1, |y| = 1; class 1 the same
    dice = build_loss("dice", smooth=0.0)(logits, target)
    assert float(dice) == pytest.approx(1 - 2 * 0.5 / 2)
    # L1 form: |p - y| = 0.5 + 0.5 = 1 -> I = (1 + 1 - 1) / 2 = 0.5, U = 1.5
    jaccard = build_loss("jaccard", smooth=0.0)(logits, target)
    assert float(jaccard) == pytest.approx(1 - 0.5 / 1.5)


def test_jaccard_equals_product_soft_iou_for_hard_labels():
    logits, target = data()
    valid = (target != 255).unsqueeze(1)
    p = torch.softmax(logits, 1) * valid
    y = torch.stack([target == c for c in range(C)], 1) * valid
    inter = (p * y).sum((0, 2, 3))
    union = (p + y - p * y).sum((0, 2, 3))
    present = y.sum((0, 2, 3)) > 0
    expected = 1 - (inter / union)[present].mean()
    assert float(build_loss("jaccard", smooth=0.0)(logits, target)) == pytest.approx(
        float(expected)
    )


def test_lovasz_on_one_hot_predictions_is_one_minus_iou():
    # For 0/1 errors the Lovasz extension equals the set function: 1 - IoU per present class.
    target = blob_target(2, 12, 10, C, seed=5, cell=3)
    pred = blob_target(2, 12, 10, C, seed=6, cell=3, void_fraction=0)
    loss = build_loss("lovasz")(one_hot_logits(pred, C), target)
    valid = target != 255
    ious = []
    for c in range(C):
        gt_c, pr_c = (target == c) & valid, (pred == c) & valid
        if gt_c.any():
            ious.append((gt_c & pr_c).sum() / (gt_c | pr_c).sum())
    assert float(loss) == pytest.approx(1 - float(torch.stack(ious).mean()), abs=1e-9)


def test_lovasz_matches_the_extension_evaluated_set_by_set():
    """Berman et al.: loss_c = sum_i e_(i) (D(A_i) - D(A_{i-1})), errors sorted descending, A_i the
    top-i error pixels, D(A) = |A| / |G_c u A| the Jaccard loss of mispredicted set A."""
    logits, target = data(seed=7)
    p = torch.softmax(logits, 1)
    valid = target != 255
    per_class = []
    for c in range(C):
        gt = (target == c)[valid].tolist()
        if not any(gt):
            continue
        errors = ((target == c).double() - p[:, c]).abs()[valid].tolist()
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        chosen, loss, previous = set(), 0.0, 0.0
        for i in order:
            chosen.add(i)
            union = len(chosen | {j for j, g in enumerate(gt) if g})
            jaccard_loss = len(chosen) / union
            loss += errors[i] * (jaccard_loss - previous)
            previous = jaccard_loss
        per_class.append(loss)
    expected = sum(per_class) / len(per_class)
    assert float(build_loss("lovasz")(logits, target)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["ce", "focal", "dice", "jaccard", "lovasz"])
def test_baselines_ignore_void_and_reject_bad_input(name):
    logits, target = data(seed=1)
    loss = build_loss(name)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    void = (target == 255).unsqueeze(1).expand_as(logits)
    assert (logits.grad[void] == 0).all()
    bad = target.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match="label 9"):  # values are checked on the first call
        build_loss(name)(logits, bad)
    with pytest.raises(ValueError, match="does not match"):  # shapes on every call
        loss(logits, target[:, 1:])
    checked = build_loss(name, debug=True)  # values on every call (they wait for the GPU)
    checked(logits, target)
    with pytest.raises(ValueError, match="label 9"):
        checked(logits, bad)
    with pytest.raises(ValueError, match="non-finite"):
        checked(logits.detach() * float("inf"), target)
