"""Baseline losses and the loss registry: `build_loss(name, **kw)` (SPEC B2).

    ce        cross-entropy with ignore_index, mean over valid pixels
    focal     focal loss -(1 - p_t)^gamma log p_t (Lin et al. 2017), mean over valid pixels
    dice      1 - soft Dice, per class pooled over the batch, mean over classes present in the GT
    jaccard   1 - soft Jaccard with L1 cardinalities, I = (|p| + |y| - |p - y|) / 2 and
              U = (|p| + |y| + |p - y|) / 2 (Wang & Blaschko 2023): equal to the product form for
              hard labels and still a valid Jaccard for soft ones
    lovasz    Lovasz-Softmax (Berman et al. 2018): the Lovasz extension of the per-class Jaccard
              loss of the sorted errors |y_c - p_c|, over classes present in the batch, pooled
    surrogate the searched metric surrogates (surrogates/surrogate.py)

Every loss takes logits (N, C, H, W) and an integer target (N, H, W) and returns a 0-dim tensor.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from surrogates.checks import check_finite, check_logits_target, debug_default, unknown_name
from surrogates.surrogate import SurrogateLoss

_LOSSES: dict[str, Callable[..., nn.Module]] = {}  # name -> builder


def register_loss(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _LOSSES:
        raise ValueError(f"a loss is already registered under the name '{fn.__name__}'")
    _LOSSES[fn.__name__] = fn
    return fn


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name: ce, focal, dice, jaccard, lovasz or surrogate.

    Example: build_loss("surrogate", metric="miou", theta="asl-voc-miou", num_classes=21)."""
    if name not in _LOSSES:
        raise unknown_name("loss", name, _LOSSES)
    return _LOSSES[name](**kwargs)


class _PixelLoss(nn.Module):
    """Shared checks and float32 promotion; subclasses implement `score`."""

    def __init__(
        self, ignore_index: int = 255, num_classes: int | None = None, debug: bool | None = None
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.debug = debug_default() if debug is None else debug  # value checks on every call
        self.values_checked = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_values = self.debug or not self.values_checked  # surrogates/checks.py
        check_logits_target(logits, target, self.num_classes, self.ignore_index, check_values)
        with torch.autocast(logits.device.type, enabled=False):
            z = logits if logits.dtype == torch.float64 else logits.float()
            loss = self.score(z, target.long())
        if check_values and not torch.isfinite(loss):
            check_finite(logits, loss)
        self.values_checked = True
        return loss

    def valid_probs(self, z, target):
        """Softmax (N, C, P), one-hot GT (N, C, P) and valid mask (N, 1, P), void zeroed."""
        n, c = z.shape[:2]
        valid = (target != self.ignore_index).reshape(n, 1, -1)
        labels = torch.where(valid.squeeze(1), target.reshape(n, -1), 0)
        y = F.one_hot(labels, c).transpose(1, 2).to(z.dtype) * valid
        p = torch.softmax(z, dim=1).reshape(n, c, -1) * valid
        return p, y, valid


class CrossEntropy(_PixelLoss):
    def score(self, z, target):
        return F.cross_entropy(z, target, ignore_index=self.ignore_index)


class FocalLoss(_PixelLoss):
    def __init__(self, gamma: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def score(self, z, target):
        log_pt = -F.cross_entropy(z, target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        focal = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        return (focal * valid).sum() / valid.sum().clamp(min=1)  # a mask, no sync


class DiceLoss(_PixelLoss):
    def __init__(self, smooth: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.smooth = smooth

    def score(self, z, target):
        p, y, _ = self.valid_probs(z, target)
        inter = (p * y).sum((0, 2))
        cardinality = p.sum((0, 2)) + y.sum((0, 2))
        dice = (2 * inter + self.smooth) / (cardinality + self.smooth)
        return 1 - _mean_present(dice, y.sum((0, 2)))


class JaccardLoss(_PixelLoss):
    def __init__(self, smooth: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.smooth = smooth

    def score(self, z, target):
        p, y, _ = self.valid_probs(z, target)
        sum_p, sum_y, diff = p.sum((0, 2)), y.sum((0, 2)), (p - y).abs().sum((0, 2))
        inter = (sum_p + sum_y - diff) / 2
        union = (sum_p + sum_y + diff) / 2
        return 1 - _mean_present((inter + self.smooth) / (union + self.smooth), sum_y)


class LovaszSoftmax(_PixelLoss):
    def score(self, z, target):
        p, y, valid = self.valid_probs(z, target)
        p = p.transpose(0, 1)[:, valid.squeeze(1)]  # (C, valid pixels of the whole batch)
        y = y.transpose(0, 1)[:, valid.squeeze(1)]
        present = y.sum(1) > 0
        if not present.any():
            return z.sum() * 0.0  # nothing to segment: zero loss, zero gradient
        errors, order = (y - p).abs().sort(dim=1, descending=True)
        y_sorted = y.gather(1, order)
        # gradient of the Lovasz extension of the Jaccard loss at the sorted errors
        gts = y_sorted.sum(1, keepdim=True)
        inter = gts - y_sorted.cumsum(1)
        union = gts + (1 - y_sorted).cumsum(1)
        jaccard = 1 - inter / union
        jaccard = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        per_class = (errors * jaccard).sum(1)
        return per_class[present].mean()


def _mean_present(per_class: torch.Tensor, gt_count: torch.Tensor) -> torch.Tensor:
    present = (gt_count > 0).to(per_class.dtype)
    return (per_class * present).sum() / present.sum().clamp(min=1)


@register_loss
def ce(
    ignore_index: int = 255, num_classes: int | None = None, debug: bool | None = None
) -> nn.Module:
    return CrossEntropy(ignore_index=ignore_index, num_classes=num_classes, debug=debug)


@register_loss
def focal(
    gamma: float = 2.0,
    ignore_index: int = 255,
    num_classes: int | None = None,
    debug: bool | None = None,
) -> nn.Module:
    return FocalLoss(gamma=gamma, ignore_index=ignore_index, num_classes=num_classes, debug=debug)


@register_loss
def dice(
    smooth: float = 1e-6,
    ignore_index: int = 255,
    num_classes: int | None = None,
    debug: bool | None = None,
) -> nn.Module:
    return DiceLoss(smooth=smooth, ignore_index=ignore_index, num_classes=num_classes, debug=debug)


@register_loss
def jaccard(
    smooth: float = 1e-6,
    ignore_index: int = 255,
    num_classes: int | None = None,
    debug: bool | None = None,
) -> nn.Module:
    return JaccardLoss(
        smooth=smooth, ignore_index=ignore_index, num_classes=num_classes, debug=debug
    )


@register_loss
def lovasz(
    ignore_index: int = 255, num_classes: int | None = None, debug: bool | None = None
) -> nn.Module:
    return LovaszSoftmax(ignore_index=ignore_index, num_classes=num_classes, debug=debug)


@register_loss
def surrogate(**kwargs) -> nn.Module:
    return SurrogateLoss(**kwargs)
