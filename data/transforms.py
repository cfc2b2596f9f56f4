"""Joint image/mask transforms (torchvision.transforms.v2 on tv_tensors) and the presets.

Every transform is a callable (image, target) -> (image, target) on `tv_tensors.Image` (uint8,
3 x H x W) and `tv_tensors.Mask` (int64, H x W). v2 dispatches on those types: masks are resized
with nearest neighbour, padded with the ignore label 255 and left alone by photometric changes.

Presets (keyword-only, like torchvision's references/segmentation/presets.py):
    train_transforms   random rescale (ratio range) -> random crop -> flip -> photometric
                       distortion -> normalisation -> pad to the crop size, the image with 0
                       (the mean colour) and the labels with 255 (the mmseg VOC pipeline of
                       SPEC A§5-6, mmseg's definitions: no channel swaps, Pad after Normalize).
                       A `TrainAugment`: with batch_wise=True (what training uses) the flip,
                       distortion, normalisation and padding colour are done on the whole batch
                       on the training device, from draws made per sample
    eval_transforms    resize to fit `scale` keeping the aspect ratio -> centre crop: the proxy
                       reward protocol (A§5: fit (512, 128), crop 128)
    whole_image_transforms  resize the image only; the prediction is resized back to the label
                       (retrain evaluation, A§1.5). Batch size 1.
All give float images with ImageNet normalisation and int64 labels.

The rescale, crop, flip and normalisation are small classes on v2's functional ops rather than
v2's transform classes: those cost ~0.15 ms a sample in argument handling, a tenth of a CPU
proxy step at batch 16. RandomHorizontalFlip, the per-sample PhotometricDistortion call and
PadToSize after Normalize are the definition TrainAugment's batch-wise halves are tested against.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, what pretrained backbones expect
STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def fit_size(h: int, w: int, scale: tuple[int, int]) -> list[int]:
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
        size = fit_size(*image.shape[-2:], scale)
        return TF.resize(image, size), TF.resize(target, size)


class ResizeToFit:
    """Resize to fit `scale`, keeping the aspect ratio; with image_only the labels keep their
    size (whole-image evaluation resizes the prediction back instead)."""

    def __init__(self, scale: tuple[int, int], image_only: bool = False):
        self.scale, self.image_only = scale, image_only

    def __call__(self, image, target):
        size = fit_size(*image.shape[-2:], self.scale)
        return TF.resize(image, size), target if self.image_only else TF.resize(target, size)


class RandomCrop:
    """Random crop of at most `size` x `size` from image and labels: a side shorter than `size`
    is kept whole (mmseg's RandomCrop); `PadToSize` brings the crop to `size` afterwards.

    cat_max_ratio < 1 (mmseg's, 0.75 in the reference): up to 10 draws until the crop holds at
    least two labelled classes and none covers cat_max_ratio of its labelled pixels; else the
    last draw."""

    def __init__(self, size: int, cat_max_ratio: float = 1.0):
        self.size, self.cat_max_ratio = size, cat_max_ratio

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        crop_h, crop_w = min(self.size, h), min(self.size, w)
        labels = target.as_subclass(torch.Tensor)  # plain: tv_tensors' dispatch costs ~0.2 ms
        for _ in range(10 if self.cat_max_ratio < 1 else 1):
            top = int(torch.randint(0, h - crop_h + 1, ()))
            left = int(torch.randint(0, w - crop_w + 1, ()))
            crop = (top, left, crop_h, crop_w)
            window = labels[..., top : top + crop_h, left : left + crop_w]
            if self.cat_max_ratio >= 1 or self._balanced(window):
                break
        return TF.crop(image, *crop), TF.crop(target, *crop)

    def _balanced(self, target: torch.Tensor) -> bool:
        # all 256 label values counted, void's dropped after: no boolean mask to gather
        counts = torch.bincount(target.reshape(-1), minlength=IGNORE_INDEX + 1)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum()


class PadToSize:
    """Pad at the bottom and right to `size` x `size`: the image with `fill`, the labels with
    the void label. mmseg pads after the normalisation, with 0: the mean colour, which no
    photometric step has touched (TrainAugment does the same, batch-wise). Plain tensors out."""

    def __init__(self, size: int, fill: float = 0):
        self.size, self.fill = size, fill

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        padding = (0, max(self.size - w, 0), 0, max(self.size - h, 0))  # left, right, top, bottom
        image, target = image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
        if not any(padding):
            return image, target
        return F.pad(image, padding, value=self.fill), F.pad(target, padding, value=IGNORE_INDEX)


class CenterCrop:
    """Centre `size` x `size` crop; where it reaches outside a smaller image, the image is padded
    with 0 and the labels with the void label (v2.CenterCrop pads the labels with 0 too, which
    would score the padding as background)."""

    def __init__(self, size: int):
        self.size = [size, size]

    def __call__(self, image, target):
        inside = TF.center_crop(torch.ones_like(target.as_subclass(torch.Tensor)), self.size)
        target = TF.center_crop(target.as_subclass(torch.Tensor), self.size)
        return TF.center_crop(image, self.size), torch.where(inside.bool(), target, IGNORE_INDEX)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if float(torch.rand(())) < self.p:
            return TF.horizontal_flip(image), TF.horizontal_flip(target)
        return image, target


# The photometric draws of one image, in the order drawn (a row of PhotometricDistortion.draw)
PHOTOMETRIC_PARAMS = (
    "brightness", "beta", "contrast_first", "contrast", "alpha", "saturation", "saturation_alpha",
    "hue", "hue_shift",
)  # fmt: skip


class PhotometricDistortion:
    """mmseg's PhotoMetricDistortion (the reference's VOC and Cityscapes pipelines, SPEC A§5-6)
    on uint8 images. Each step runs with probability 0.5 and ends in uint8 (clipped, then
    truncated, as mmseg's `convert`):

        brightness   + b,  b ~ U(-32, 32)
        contrast     * a,  a ~ U(0.5, 1.5)       before the two HSV steps or after them (50/50)
        saturation   S * a, a ~ U(0.5, 1.5)      in OpenCV's uint8 HSV
        hue          H + k mod 180, k an integer in [-18, 18)   (OpenCV's H unit is 2 degrees)

    Colour channels are never swapped: torchvision's RandomPhotometricDistort permutes them,
    mmdet's version did, mmseg's does not. The labels are left alone.

    `draw()` makes one image's random choices and `apply(images, params)` carries them out on a
    batch (N, 3, H, W) at once, on any device: training draws per sample in the loader, under
    the sample's seed, and applies on the GPU (TrainAugment). Calling the object does both for
    one image."""

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
        return tv_tensors.Image(self.apply(pixels[None], self.draw()[None])[0]), target

    def draw(self) -> torch.Tensor:
        """(len(PHOTOMETRIC_PARAMS),) float32: the coins (0/1) and values of one image."""
        delta = self.brightness_delta
        brightness = _coin()
        beta = _uniform(-delta, delta) if brightness else 0.0
        contrast_first = _coin()
        contrast = _coin() if contrast_first else False
        alpha = _uniform(*self.contrast_range) if contrast else 1.0
        saturation = _coin()
        saturation_alpha = _uniform(*self.saturation_range) if saturation else 1.0
        hue = _coin()
        delta = self.hue_delta
        hue_shift = int(torch.randint(-delta, delta, ())) if hue and delta else 0
        if not contrast_first:
            contrast = _coin()
            alpha = _uniform(*self.contrast_range) if contrast else 1.0
        values = (brightness, beta, contrast_first, contrast, alpha, saturation,
                  saturation_alpha, hue, hue_shift)  # fmt: skip
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    @staticmethod
    def apply(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) images distorted by their rows of `draw()` params (N, 9)."""
        columns = params.to(pixels.device).T.reshape(-1, len(pixels), 1, 1, 1)  # (9, N, 1, 1, 1)
        p = dict(zip(PHOTOMETRIC_PARAMS, columns, strict=True))
        on = {
            k: p[k] > 0.5 for k in ("brightness", "contrast_first", "contrast", "saturation", "hue")
        }
        pixels = torch.where(on["brightness"], scale_shift(pixels, beta=p["beta"]), pixels)
        contrast = on["contrast"] & on["contrast_first"]
        pixels = torch.where(contrast, scale_shift(pixels, alpha=p["alpha"]), pixels)
        hsv = rgb_to_hsv(pixels)
        saturated = scale_shift(hsv[:, 1:2], alpha=p["saturation_alpha"])
        hsv = torch.cat([hsv[:, :1], saturated, hsv[:, 2:]], dim=1)
        pixels = torch.where(on["saturation"], hsv_to_rgb(hsv), pixels)
        hsv = rgb_to_hsv(pixels)
        hue = (hsv[:, :1].long() + p["hue_shift"].long()) % 180
        hsv = torch.cat([hue.to(torch.uint8), hsv[:, 1:]], dim=1)
        pixels = torch.where(on["hue"], hsv_to_rgb(hsv), pixels)
        contrast = on["contrast"] & ~on["contrast_first"]
        return torch.where(contrast, scale_shift(pixels, alpha=p["alpha"]), pixels)


def _coin() -> bool:
    return bool(torch.randint(0, 2, ()))  # torch RNG: seeded per sample


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def scale_shift(pixels: torch.Tensor, alpha=1.0, beta=0.0) -> torch.Tensor:
    """uint8 -> alpha * x + beta, clipped to [0, 255] and truncated to uint8 (mmseg's convert).
    alpha and beta: numbers, or float32 tensors that broadcast (one value per image)."""
    return (pixels.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) RGB -> uint8 HSV in OpenCV's ranges: H in [0, 180) (2 degrees a
    unit), S and V in [0, 255], each rounded to the nearest integer."""
    x = rgb.float()
    value, low = x.max(-3).values, x.min(-3).values
    chroma = value - low
    saturation = torch.where(value > 0, 255 * chroma / value.clamp(min=1), 0)
    r, g, b = x.unbind(-3)
    safe = chroma.clamp(min=1)
    hue = torch.where(
        value == r,
        60 * (g - b) / safe,
        torch.where(value == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe),
    )
    hue = torch.where(chroma > 0, hue % 360, 0)
    hsv = torch.stack([(hue / 2).round() % 180, saturation.round(), value], dim=-3)
    return hsv.to(torch.uint8)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`: uint8 OpenCV-range HSV (..., 3, H, W) -> uint8 RGB, rounded."""
    hue, saturation, value = hsv.float().unbind(-3)
    sector = hue * 2 / 60  # (H, W) in [0, 6)
    # f(n) = V - V S max(0, min(k, 4 - k, 1)) with k = (n + H / 60) mod 6: R, G, B for n = 5, 3, 1
    channels = []
    for n in (5, 3, 1):
        k = (n + sector) % 6
        weight = torch.minimum(torch.minimum(k, 4 - k), torch.ones_like(k)).clamp(min=0)
        channels.append(value - value * saturation / 255 * weight)
    return torch.stack(channels, dim=-3).round().clamp(0, 255).to(torch.uint8)


class Normalize:
    """uint8 image -> float32, ImageNet-normalised; labels -> int64. Plain tensors out."""

    def __init__(self):
        shift = torch.tensor(MEAN).view(3, 1, 1) * 255
        scale = 1 / (torch.tensor(STD).view(3, 1, 1) * 255)
        self.constants = {torch.device("cpu"): (shift, scale)}  # by device, each copied once

    def __call__(self, image, target):
        device = image.device
        if device not in self.constants:
            self.constants[device] = tuple(
                c.to(device) for c in self.constants[torch.device("cpu")]
            )
        shift, scale = self.constants[device]
        image = image.as_subclass(torch.Tensor).float().sub_(shift).mul_(scale)
        return image, target.as_subclass(torch.Tensor).long()


def _finish() -> list[Callable]:
    return [Normalize()]


class TrainAugment:
    """The training augmentation in two halves. Per sample, in the loader: rescale and crop
    (image sizes differ until the crop), padding to the crop size so that a batch stacks, then
    the draws of the flip and the photometric distortion, made under the sample's seed in the
    order the per-sample steps make them. Per batch (`on_batch`, on the training device): flip,
    distortion, normalisation, and the padding set to 0, the mean colour.

    The padding is mmseg's Pad after Normalize: the crop's image part alone is flipped and
    distorted, and its padding stays at the bottom/right, 0 after the normalisation (not black,
    -2 after it, as padding the uint8 image gave, nor distorted with the image).

    With batch_wise=False a call runs both halves on the one sample (image float, normalised);
    with batch_wise=True it returns (uint8 image, uint8 labels, params) for `on_batch`, which
    the engine's batch stream applies on the GPU: a quarter of the bytes to copy, and the pixel
    work off the loader's CPU. Both give the same numbers for the same seed."""

    def __init__(
        self,
        sample_steps: list[Callable],
        crop_size: int,
        flip: bool,
        photometric: bool,
        batch_wise,
    ):
        self.sample_steps = sample_steps
        self.pad = PadToSize(crop_size)  # uint8 image with 0 for now; on_batch sets the colour
        self.flip_p = 0.5 if flip else 0.0
        self.photometric = PhotometricDistortion() if photometric else None
        self.batch_wise = batch_wise
        self.normalize = Normalize()

    def __call__(self, image, target):
        for step in self.sample_steps:
            image, target = step(image, target)
        extent = torch.tensor(image.shape[-2:], dtype=torch.float32)  # the crop's image part
        image, target = self.pad(image, target)
        params = torch.cat([extent, self.draw()])
        image, target = image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
        if self.batch_wise:
            return image, target.to(torch.uint8), params  # labels are 0..255
        images, targets = self.on_batch(image[None], target[None], params[None])
        return images[0], targets[0]

    def draw(self) -> torch.Tensor:
        """(1 + photometric draws,) float32: the flip coin, then PhotometricDistortion.draw()."""
        flip = float(torch.rand(())) < self.flip_p if self.flip_p else False
        photometric = self.photometric.draw() if self.photometric else torch.zeros(0)
        return torch.cat([torch.tensor([float(flip)]), photometric])

    def on_batch(self, images: torch.Tensor, target: torch.Tensor, params: torch.Tensor):
        """uint8 (N, 3, H, W) crops padded at the bottom/right, (N, H, W) labels, (N, 2 + K)
        params (the rows and columns of each crop's image part, then its `draw()`) -> the
        normalised float images, padding 0, and int64 labels of the batch, on the images'
        device."""
        params = params.to(images.device)
        rows, cols, flip = params[:, 0].long(), params[:, 1].long(), params[:, 2] > 0.5
        images, target = _flip_within(images, flip, cols), _flip_within(target, flip, cols)
        if self.photometric is not None:
            images = self.photometric.apply(images, params[:, 3:])
        images, target = self.normalize(images, target)
        h, w = images.shape[-2:]
        inside_rows = torch.arange(h, device=images.device).view(h, 1) < rows.view(-1, 1, 1)
        inside = inside_rows & (torch.arange(w, device=images.device) < cols.view(-1, 1, 1))
        # (N, H, W): the crops' image parts
        return images.masked_fill_(~inside[:, None], 0), target


def _flip_within(x: torch.Tensor, flip: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N, ..., W) with the first cols[n] columns of sample n mirrored where flip[n]: a padded
    crop flips its image part and keeps its padding on the right (mmseg flips before padding);
    an unpadded one flips whole. One gather: no branch on the device's values."""
    width = x.shape[-1]
    j = torch.arange(width, device=x.device)
    mirrored = torch.where(j < cols[:, None], cols[:, None] - 1 - j, j)  # (N, W)
    index = torch.where(flip[:, None], mirrored, j)
    shape = (len(x),) + (1,) * (x.dim() - 2) + (width,)
    return x.gather(-1, index.view(shape).expand_as(x))


def train_transforms(
    *,
    crop_size: int,
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
    cat_max_ratio: float = 1.0,
    batch_wise: bool = False,
) -> TrainAugment:
    """scale = None skips the rescale (data already at training size, e.g. shapes);
    batch_wise leaves flip, distortion and normalisation to `on_batch` (TrainAugment)."""
    steps: list[Callable] = []
    if scale is not None:
        steps.append(RandomRescale(tuple(scale), tuple(ratio_range)))
    steps.append(RandomCrop(crop_size, cat_max_ratio))
    return TrainAugment(steps, crop_size, flip, photometric, batch_wise)


def eval_transforms(*, crop_size: int | None = None, scale: tuple[int, int] | None = None):
    """Resize to fit `scale` (None: keep) then centre-crop `crop_size` (None: no crop)."""
    steps: list[Callable] = []
    if scale is not None:
        steps.append(ResizeToFit(tuple(scale)))
    if crop_size is not None:
        steps.append(CenterCrop(crop_size))
    return v2.Compose(steps + _finish())


def whole_image_transforms(*, scale: tuple[int, int] | None = None) -> Callable:
    steps: list[Callable] = [ResizeToFit(tuple(scale), image_only=True)] if scale else []
    return v2.Compose(steps + _finish())
