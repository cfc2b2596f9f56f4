"""Joint image/mask transforms (torchvision.transforms.v2 on tv_tensors) and the presets.

Every transform is a callable (image, target) -> (image, target) on `tv_tensors.Image` (uint8,
3 x H x W) and `tv_tensors.Mask` (int64, H x W). v2 dispatches on those types: masks are resized
with nearest neighbour, padded with the ignore label 255 and left alone by photometric changes.

Presets (keyword-only, like torchvision's references/segmentation/presets.py):
    train_transforms   random rescale (ratio range) -> random crop padded with 255 -> flip ->
                       photometric distortion (the mmseg VOC pipeline of SPEC A§5-6)
    eval_transforms    resize to fit `scale` keeping the aspect ratio -> centre crop: the proxy
                       reward protocol (A§5: fit (512, 128), crop 128)
    whole_image_transforms  resize the image only; the prediction is resized back to the label
                       (retrain evaluation, A§1.5). Batch size 1.
All end with float conversion and ImageNet normalisation of the image and int64 labels.
"""

from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, what pretrained backbones expect
STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def _fit_size(h: int, w: int, scale: tuple[int, int]) -> list[int]:
    """(h, w) resized to fit inside scale = (long side, short side), keeping the aspect ratio
    (mmseg's keep_ratio rescale)."""
    long_side, short_side = max(scale), min(scale)
    factor = min(long_side / max(h, w), short_side / min(h, w))
    return [max(1, round(h * factor)), max(1, round(w * factor))]


class RandomRescale:
    """Rescale to fit `scale` times a ratio drawn uniformly from `ratio_range`."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]):
        self.scale, self.ratio_range = scale, ratio_range

    def __call__(self, image, target):
        low, high = self.ratio_range
        ratio = low + (high - low) * float(torch.rand(()))  # torch RNG: seeded per sample
        scale = (round(self.scale[0] * ratio), round(self.scale[1] * ratio))
        size = _fit_size(*image.shape[-2:], scale)
        return TF.resize(image, size), TF.resize(target, size)


class ResizeToFit:
    """Resize to fit `scale`, keeping the aspect ratio; with image_only the labels keep their
    size (whole-image evaluation resizes the prediction back instead)."""

    def __init__(self, scale: tuple[int, int], image_only: bool = False):
        self.scale, self.image_only = scale, image_only

    def __call__(self, image, target):
        size = _fit_size(*image.shape[-2:], self.scale)
        return TF.resize(image, size), target if self.image_only else TF.resize(target, size)


def _finish() -> list[Callable]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(MEAN, STD),
    ]


def train_transforms(
    *,
    crop_size: int,
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
) -> Callable:
    """scale = None skips the rescale (data already at training size, e.g. shapes)."""
    steps: list[Callable] = []
    if scale is not None:
        steps.append(RandomRescale(tuple(scale), tuple(ratio_range)))
    steps.append(
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        )
    )
    if flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    return v2.Compose(steps + _finish())


def eval_transforms(*, crop_size: int | None = None, scale: tuple[int, int] | None = None):
    """Resize to fit `scale` (None: keep) then centre-crop `crop_size` (None: no crop)."""
    steps: list[Callable] = []
    if scale is not None:
        steps.append(ResizeToFit(tuple(scale)))
    if crop_size is not None:
        steps.append(v2.CenterCrop(crop_size))
    return v2.Compose(steps + _finish())


def whole_image_transforms(*, scale: tuple[int, int] | None = None) -> Callable:
    steps: list[Callable] = [ResizeToFit(tuple(scale), image_only=True)] if scale else []
    return v2.Compose(steps + _finish())
