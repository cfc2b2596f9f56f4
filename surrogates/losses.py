"""Baseline losses and the loss registry: `build_loss(name, **kw)` (SPEC B2).

    ce        cross-entropy with ignore_index, mean over valid pixels
    focal     focal loss -(1 - p_t)^gamma log p_t (Lin et al. 2017), mean over valid pixels
    dice      1 - soft Dice, per class pooled over the batch, mean over classes present in the GT
    jaccard   1 - soft Jaccard with L1 cardinalities, I = (|p| + |y| - |p - y|) / 2 and
              U = (|p| + |y| + |p - y|) / 2 (Wang & Blaschko 2023): equal to the product form for
              hard labels and still a valid Jaccard for soft ones
    lovasz    Lovasz-Softmax (Berman et al. 2018): the Lovasz extension of the per-class Jaccard
              loss of the sorted errors |y_c - p_c|, over classes present in the batch, pooled
    wce       class-weighted CE, weights given or median-frequency balanced (Eigen & Fergus 2015)
    dpce      CE weighted by 1 + an inverted, normalised distance map of the GT regions (Caliva
              et al. 2019): pixels near their region's boundary count up to twice
    ssim      1 - SSIM (Wang et al. 2004) of each class's probability map and its one-hot GT
    ce_dice   ce_weight * CE + dice_weight * (1 - soft Dice), 1 : 1 by default
    tversky   1 - Tversky index TP / (TP + alpha FP + beta FN) (Salehi et al. 2017)
    focal_tversky  (1 - Tversky index)^(1 / gamma) (Abraham & Khan 2019)
    gdice     generalised Dice, class weights 1 / |Y_c|^2 (Sudre et al. 2017)
    boundary  alpha * gdice + (1 - alpha) * the boundary loss mean p_c phi_c, phi the GT's signed
              distance map; alpha from 1 down by 0.01 an epoch (Kervadec et al. 2019)
    hausdorff (p - y)^2 (d_p^alpha + d_y^alpha), the distance-transform Hausdorff loss (Karimi &
              Salcudean 2019), d the distance maps of the predicted and GT regions
    surrogate the searched metric surrogates (surrogates/surrogate.py)

Every loss takes logits (N, C, H, W) and an integer target (N, H, W) and returns a 0-dim tensor.
Region losses (dice, jaccard, tversky, focal_tversky) average over the classes present in the
batch's GT and pool the batch. Distance maps are computed on the logits' device at every call
(surrogates/distance.py); docs/surrogates.md lists every formula, option and default.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from surrogates.checks import check_finite, check_logits_target, debug_default, unknown_name
from surrogates.distance import inside_outside
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
    """Build a loss by name (list_losses(); options in each builder's arguments).

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


class WeightedCE(_PixelLoss):
    def __init__(self, weights: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("weights", weights)  # (C,), moves with .to(device)

    def score(self, z, target):
        if z.shape[1] != len(self.weights):
            raise ValueError(f"wce has {len(self.weights)} class weights, logits {z.shape[1]}")
        valid = target != self.ignore_index
        ce = F.cross_entropy(z, target, ignore_index=self.ignore_index, reduction="none")
        weight = self.weights.to(z.dtype)[torch.where(valid, target, 0)] * valid
        return (weight * ce).sum() / weight.sum().clamp(min=1e-12)  # no NaN on an all-void batch


class DistancePenalisedCE(_PixelLoss):
    def score(self, z, target):
        valid = target != self.ignore_index
        ce = F.cross_entropy(z, target, ignore_index=self.ignore_index, reduction="none")
        weight = 1 + boundary_penalty(target, z.shape[1], valid)  # (N, H, W), 1 to 2
        return (weight * ce).sum() / valid.sum().clamp(min=1)


def boundary_penalty(target: torch.Tensor, num_classes: int, valid: torch.Tensor) -> torch.Tensor:
    """Caliva et al.'s penalty: per image and class, the distance d >= 1 of a pixel of the region
    to the nearest pixel outside it, inverted and normalised by the region's largest: 1 on the
    boundary, 1 / d_max at its deepest pixel, 0 on void and on regions with no boundary.

    Shape: (N, H, W) -> (N, H, W)."""
    labels = torch.where(valid, target, 0)
    regions = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).bool() & valid.unsqueeze(1)
    inside, _ = inside_outside(regions)  # (N, C, H, W), void counts as outside every class
    d = inside.gather(1, labels.unsqueeze(1)).squeeze(1)  # the pixel's own class's map
    d_max = inside.amax((2, 3)).gather(1, labels.flatten(1)).view_as(d)
    return torch.where(d > 0, (d_max - d + 1) / d_max.clamp(min=1), 0.0)


class SSIMLoss(_PixelLoss):
    def __init__(self, window: int = 11, sigma: float = 1.5, **kwargs):
        super().__init__(**kwargs)
        if window < 1 or window % 2 == 0:
            raise ValueError(f"ssim window must be an odd size >= 1, got {window}")
        if sigma <= 0:
            raise ValueError(f"ssim sigma must be > 0, got {sigma}")
        self.window, self.sigma = window, sigma

    def score(self, z, target):
        n, c, h, w = z.shape
        p, y, valid = self.valid_probs(z, target)  # void: p = y = 0, so no value or gradient
        k = min(self.window, h - (h % 2 == 0), w - (w % 2 == 0))  # odd, within the image
        p, y = p.view(n, c, h, w), y.view(n, c, h, w)
        # local means over each k x k window: (5, N, C, H - k + 1, W - k + 1)
        mu_p, mu_y, pp, yy, py = _gaussian_blur(
            torch.stack([p, y, p * p, y * y, p * y]), k, self.sigma
        )
        c1, c2 = 0.01**2, 0.03**2  # (K * data range)^2 with K = 0.01, 0.03 and range 1
        var_p, var_y, cov = pp - mu_p**2, yy - mu_y**2, py - mu_p * mu_y
        ssim = ((2 * mu_p * mu_y + c1) * (2 * cov + c2)) / (
            (mu_p**2 + mu_y**2 + c1) * (var_p + var_y + c2)
        )  # (N, C, H - k + 1, W - k + 1): a window per centre pixel inside the image
        r = k // 2
        centre = valid.view(n, 1, h, w)[:, :, r : h - r, r : w - r].to(z.dtype)
        return 1 - (ssim * centre).sum() / (c * centre.sum()).clamp(min=1)


def _gaussian_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Gaussian-weighted means of every k x k window inside the image (no padding), separable.

    Shape: (..., H, W) -> (..., H - k + 1, W - k + 1)."""
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    h, w = x.shape[-2:]
    maps = x.reshape(1, -1, h, w)  # every map a channel: a depthwise convolution, which on a CPU
    m = maps.shape[1]  # runs 4-5x faster than a batch of single-channel ones
    blurred = F.conv2d(maps, g.view(1, 1, k, 1).expand(m, 1, k, 1), groups=m)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, k).expand(m, 1, 1, k), groups=m)
    return blurred.view(*x.shape[:-2], h - k + 1, w - k + 1)


class CEDice(DiceLoss):
    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        _check_weights("ce_dice", ce_weight=ce_weight, dice_weight=dice_weight)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def score(self, z, target):
        ce = F.cross_entropy(z, target, ignore_index=self.ignore_index, reduction="sum")
        ce = ce / (target != self.ignore_index).sum().clamp(min=1)  # 0, not NaN, when all void
        return self.ce_weight * ce + self.dice_weight * super().score(z, target)


class TverskyLoss(_PixelLoss):
    """1 - TI with the Tversky index TI_c = TP / (TP + alpha FP + beta FN), or with gamma the
    focal Tversky loss (1 - TI_c)^(1 / gamma); mean over the classes present."""

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0, smooth: float = 1e-6, **kw
    ):
        super().__init__(**kw)
        _check_weights("tversky", alpha=alpha, beta=beta)
        if gamma <= 0:
            raise ValueError(f"focal_tversky gamma must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def score(self, z, target):
        p, y, _ = self.valid_probs(z, target)
        tp = (p * y).sum((0, 2))
        fp, fn = p.sum((0, 2)) - tp, y.sum((0, 2)) - tp
        index = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        # the clamp keeps the gradient of x^(1/gamma), gamma > 1, finite at a perfect class
        per_class = (1 - index).clamp(min=1e-12) ** (1 / self.gamma)
        return _mean_present(per_class, y.sum((0, 2)))


class GeneralisedDice(_PixelLoss):
    def __init__(self, smooth: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.smooth = smooth

    def score(self, z, target):
        p, y, _ = self.valid_probs(z, target)
        return generalised_dice(p, y, self.smooth)


def generalised_dice(p: torch.Tensor, y: torch.Tensor, smooth: float) -> torch.Tensor:
    """1 - 2 sum_c w_c I_c / sum_c w_c (|p_c| + |y_c|), w_c = 1 / |y_c|^2 over the batch; a
    class absent from the batch takes the largest present weight (as MONAI does), so that
    predicting it still costs. (N, C, P) probabilities and one-hot GT, void zeroed."""
    count = y.sum((0, 2))
    weight = 1 / count.clamp(min=1) ** 2
    absent = count == 0
    weight = torch.where(absent, torch.where(absent, 0, weight).amax(), weight)
    inter = (weight * (p * y).sum((0, 2))).sum()
    cardinality = (weight * (p.sum((0, 2)) + count)).sum()
    return 1 - (2 * inter + smooth) / (cardinality + smooth)


class BoundaryLoss(_PixelLoss):
    """alpha * generalised Dice + (1 - alpha) * mean_(valid pixels, classes) p_c phi_c, phi_c the
    signed distance to the boundary of class c's GT region (Kervadec et al.: + outside, -(d - 1)
    inside, 0 for a class absent from the image or filling it). alpha starts at alpha_start
    and drops by alpha_decay after every epoch_calls training calls (calls with grad enabled),
    down to alpha_min; `calls` is the count, which a resumed training sets."""

    def __init__(
        self,
        alpha_start: float = 1.0,
        alpha_decay: float = 0.01,
        alpha_min: float = 0.01,
        epoch_calls: int = 100,
        smooth: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in [("alpha_start", alpha_start), ("alpha_min", alpha_min)]:
            if not 0 <= value <= 1:
                raise ValueError(f"boundary {name} must be in [0, 1], got {value}")
        if alpha_decay < 0:
            raise ValueError(f"boundary alpha_decay must be >= 0, got {alpha_decay}")
        if epoch_calls < 1:
            raise ValueError(f"boundary epoch_calls must be >= 1, got {epoch_calls}")
        self.alpha_start, self.alpha_decay, self.alpha_min = alpha_start, alpha_decay, alpha_min
        self.epoch_calls, self.smooth, self.calls = epoch_calls, smooth, 0

    def alpha(self) -> float:
        epochs = self.calls // self.epoch_calls
        return max(
            min(self.alpha_min, self.alpha_start), self.alpha_start - self.alpha_decay * epochs
        )

    def score(self, z, target):
        alpha = self.alpha()
        if torch.is_grad_enabled():
            self.calls += 1
        p, y, valid = self.valid_probs(z, target)
        inside, outside = inside_outside(y.view(z.shape).bool())
        phi = (outside - torch.where(inside > 0, inside - 1, 0.0)).flatten(2)  # (N, C, P)
        boundary = (p * phi).sum() / (z.shape[1] * valid.sum()).clamp(min=1)
        return alpha * generalised_dice(p, y, self.smooth) + (1 - alpha) * boundary


class HausdorffDTLoss(_PixelLoss):
    def __init__(self, alpha: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if alpha < 0:
            raise ValueError(f"hausdorff alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def score(self, z, target):
        p, y, valid = self.valid_probs(z, target)
        predicted = (p.detach() > 0.5).view(z.shape)  # the prediction's regions (void: none)
        d_p, d_y = (sum(inside_outside(regions)) for regions in (predicted, y.view(z.shape).bool()))
        distance = (d_p**self.alpha + d_y**self.alpha).flatten(2)  # (N, C, P)
        return ((p - y) ** 2 * distance).sum() / (z.shape[1] * valid.sum()).clamp(min=1)


def _check_weights(loss: str, **weights: float) -> None:
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
        shown = ", ".join(f"{k}={v}" for k, v in weights.items())
        raise ValueError(f"{loss} weights must be finite, >= 0 and sum to > 0, got {shown}")


def median_frequency_weights(frequencies) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c over the classes
    seen in training (f_c: class c's share of the labelled pixels, or its pixel count); an unseen
    class gets weight 0 (it never appears in a target)."""
    f = torch.as_tensor(frequencies, dtype=torch.float64)
    if f.dim() != 1 or (f < 0).any() or not torch.isfinite(f).all() or f.sum() <= 0:
        raise ValueError(f"wce class_frequencies must be >= 0 and sum to > 0, got {f.tolist()}")
    seen = f > 0
    return torch.where(seen, f[seen].median() / f.clamp(min=1e-300), 0.0).float()


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
def wce(
    weights: list[float] | None = None, class_frequencies: list[float] | None = None, **kwargs
) -> nn.Module:
    """Give weights (one a class) or the training set's class_frequencies (median-frequency)."""
    if (weights is None) == (class_frequencies is None):
        raise ValueError("wce needs exactly one of weights or class_frequencies")
    if class_frequencies is not None:
        return WeightedCE(median_frequency_weights(class_frequencies), **kwargs)
    _check_weights("wce", **{f"w{c}": float(w) for c, w in enumerate(weights)})
    return WeightedCE(torch.tensor(weights, dtype=torch.float32), **kwargs)


@register_loss
def dpce(**kwargs) -> nn.Module:
    return DistancePenalisedCE(**kwargs)


@register_loss
def ssim(window: int = 11, sigma: float = 1.5, **kwargs) -> nn.Module:
    return SSIMLoss(window=window, sigma=sigma, **kwargs)


@register_loss
def ce_dice(ce_weight: float = 1.0, dice_weight: float = 1.0, **kwargs) -> nn.Module:
    return CEDice(ce_weight=ce_weight, dice_weight=dice_weight, **kwargs)


@register_loss
def tversky(alpha: float = 0.3, beta: float = 0.7, **kwargs) -> nn.Module:
    return TverskyLoss(alpha=alpha, beta=beta, **kwargs)


@register_loss
def focal_tversky(
    alpha: float = 0.3, beta: float = 0.7, gamma: float = 4 / 3, **kwargs
) -> nn.Module:
    return TverskyLoss(alpha=alpha, beta=beta, gamma=gamma, **kwargs)


@register_loss
def gdice(**kwargs) -> nn.Module:
    return GeneralisedDice(**kwargs)


@register_loss
def boundary(**kwargs) -> nn.Module:
    """alpha_start=1, alpha_decay=0.01, alpha_min=0.01, epoch_calls=100 (BoundaryLoss)."""
    return BoundaryLoss(**kwargs)


@register_loss
def hausdorff(alpha: float = 2.0, **kwargs) -> nn.Module:
    return HausdorffDTLoss(alpha=alpha, **kwargs)


@register_loss
def surrogate(**kwargs) -> nn.Module:
    return SurrogateLoss(**kwargs)
