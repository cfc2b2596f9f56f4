"""Joint image/mask transforms (torchvision.transforms.v2 on tv_tensors) and the presets.

Every transform is a callable (image, target) -> (image, target) on `tv_tensors.Image` (uint8,
3 x H x W) and `tv_tensors.Mask` (int64, H x W). v2 dispatches on those types: masks are resized
with nearest neighbour, padded with the ignore label 255 and left alone by photometric changes.

Presets (keyword-only, like torchvision's references/segmentation/presets.py):
    train_transforms   random rescale (ratio range) -> random crop padded with 255 -> flip ->
                       photometric distortion (the mmseg VOC pipeline of SPEC A§5-6, mmseg's
                       definition: no channel swaps)
    eval_transforms    resize to fit `scale` keeping the aspect ratio -> centre crop: the proxy
                       reward protocol (A§5: fit (512, 128), crop 128)
    whole_image_transforms  resize the image only; the prediction is resized back to the label
                       (retrain evaluation, A§1.5). Batch size 1.
All end with float conversion and ImageNet normalisation of the image and int64 labels.

The crop, flip and normalisation that every training sample goes through are small classes on
v2's functional ops rather than v2's transform classes: those cost ~0.15 ms a sample in argument
handling, a tenth of a CPU proxy step at batch 16.
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


class RandomCrop:
    """Random `size` x `size` crop of image and labels; a side shorter than `size` is padded at
    the bottom/right first, image with 0 and labels with the void label (mmseg's Pad).

    cat_max_ratio < 1 (mmseg's, 0.75 in the reference): up to 10 draws until the crop holds at
    least two labelled classes and none covers cat_max_ratio of its labelled pixels; else the
    last draw."""

    def __init__(self, size: int, cat_max_ratio: float = 1.0):
        self.size, self.cat_max_ratio = size, cat_max_ratio

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        pad_h, pad_w = max(self.size - h, 0), max(self.size - w, 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
            target = TF.pad(target, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
        for _ in range(10 if self.cat_max_ratio < 1 else 1):
            top = int(torch.randint(0, h + pad_h - self.size + 1, ()))
            left = int(torch.randint(0, w + pad_w - self.size + 1, ()))
            crop = (top, left, self.size, self.size)
            if self.cat_max_ratio >= 1 or self._balanced(TF.crop(target, *crop)):
                break
        return TF.crop(image, *crop), TF.crop(target, *crop)

    def _balanced(self, target: torch.Tensor) -> bool:
        counts = torch.bincount(target[target != IGNORE_INDEX].flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum()


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if float(torch.rand(())) < self.p:
            return TF.horizontal_flip(image), TF.horizontal_flip(target)
        return image, target


class PhotometricDistortion:
    """mmseg's PhotoMetricDistortion (the reference's VOC and Cityscapes pipelines, SPEC A§5-6)
    on a uint8 (3, H, W) image. Each step runs with probability 0.5 and ends in uint8 (clipped,
    then truncated, as mmseg's `convert`):

        brightness   + b,  b ~ U(-32, 32)
        contrast     * a,  a ~ U(0.5, 1.5)       before the two HSV steps or after them (50/50)
        saturation   S * a, a ~ U(0.5, 1.5)      in OpenCV's uint8 HSV
        hue          H + k mod 180, k an integer in [-18, 18)   (OpenCV's H unit is 2 degrees)

    Colour channels are never swapped: torchvision's RandomPhotometricDistort permutes them,
    mmdet's version did, mmseg's does not. The labels are left alone."""

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range
        self.hue_delta = hue_delta

    def __call__(self, image, target):
        pixels = image.as_subclass(torch.Tensor)
        if _coin():
            pixels = scale_shift(
                pixels, beta=_uniform(-self.brightness_delta, self.brightness_delta)
            )
        contrast_first = _coin()
        if contrast_first and _coin():
            pixels = scale_shift(pixels, alpha=_uniform(*self.contrast_range))
        if _coin():
            hsv = rgb_to_hsv(pixels)
            hsv[1] = scale_shift(hsv[1], alpha=_uniform(*self.saturation_range))
            pixels = hsv_to_rgb(hsv)
        if _coin():
            hsv = rgb_to_hsv(pixels)
            delta = self.hue_delta
            shift = int(torch.randint(-delta, delta, ())) if delta else 0
            hsv[0] = (hsv[0].long() + shift) % 180
            pixels = hsv_to_rgb(hsv)
        if not contrast_first and _coin():
            pixels = scale_shift(pixels, alpha=_uniform(*self.contrast_range))
        return tv_tensors.Image(pixels), target


def _coin() -> bool:
    return bool(torch.randint(0, 2, ()))  # torch RNG: seeded per sample


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def scale_shift(pixels: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """uint8 -> alpha * x + beta, clipped to [0, 255] and truncated to uint8 (mmseg's convert)."""
    return (pixels.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) RGB -> uint8 HSV in OpenCV's ranges: H in [0, 180) (2 degrees a unit),
    S and V in [0, 255], each rounded to the nearest integer."""
    x = rgb.float()
    value, low = x.max(0).values, x.min(0).values
    chroma = value - low
    saturation = torch.where(value > 0, 255 * chroma / value.clamp(min=1), 0)
    r, g, b = x
    safe = chroma.clamp(min=1)
    hue = torch.where(
        value == r,
        60 * (g - b) / safe,
        torch.where(value == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe),
    )
    hue = torch.where(chroma > 0, hue % 360, 0)
    hsv = torch.stack([(hue / 2).round() % 180, saturation.round(), value])
    return hsv.to(torch.uint8)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`: uint8 OpenCV-range HSV -> uint8 RGB, rounded."""
    hue, saturation, value = hsv.float()
    sector = hue * 2 / 60  # (H, W) in [0, 6)
    # f(n) = V - V S max(0, min(k, 4 - k, 1)) with k = (n + H / 60) mod 6: R, G, B for n = 5, 3, 1
    channels = []
    for n in (5, 3, 1):
        k = (n + sector) % 6
        weight = torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp(min=0)
        channels.append(value - value * saturation / 255 * weight)
    return torch.stack(channels).round().clamp(0, 255).to(torch.uint8)


class Normalize:
    """uint8 image -> float32, ImageNet-normalised; labels -> int64. Plain tensors out."""

    def __init__(self):
        self.shift = torch.tensor(MEAN).view(3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(STD).view(3, 1, 1) * 255)

    def __call__(self, image, target):
        image = image.as_subclass(torch.Tensor).float().sub_(self.shift).mul_(self.scale)
        return image, target.as_subclass(torch.Tensor).long()


def _finish() -> list[Callable]:
    return [Normalize()]


def train_transforms(
    *,
    crop_size: int,
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
    cat_max_ratio: float = 1.0,
) -> Callable:
    """scale = None skips the rescale (data already at training size, e.g. shapes)."""
    steps: list[Callable] = []
    if scale is not None:
        steps.append(RandomRescale(tuple(scale), tuple(ratio_range)))
    steps.append(RandomCrop(crop_size, cat_max_ratio))
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    if photometric:
        steps.append(PhotometricDistortion())
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
