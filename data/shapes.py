"""`shapes`: the built-in synthetic segmentation dataset that makes everything run out of the box.

A fair test bed for metric-specific losses rather than a toy any loss solves (DESIGN.md,
prototype figures). Every image holds a few occluding objects of six classes on a textured,
noisy background:

    0 background  smooth colour gradients, sinusoidal texture, faint object-like clutter, noise
    1 disc        ellipses, the common large blob
    2 box         rotated rectangles
    3 triangle    rotated triangles
    4 ring        thin annuli (1.5-3 px wide at 64 px): boundary-heavy
    5 line        thin long segments (1.5-2.5 px wide): elongated, few pixels
    6 dot         tiny discs in about a third of the images: the rare, small class

Colour and texture are drawn from the same distribution for every class and for the background,
so only shape separates the classes. Objects are drawn in random order and occlude each other.
As in PASCAL VOC, a void band (label 255, `void_width` px, 0 = none) surrounds every object on its
outside, so it also covers the border of objects it occludes.

Calibration (VERSION 2): version 1 (object sizes up to 13-14 px, background texture up to 0.15,
contrast 0.25 in one channel) was too hard for a CPU proxy; a lite net at 300 iterations barely
left the all-background score. Objects are now smaller (whole shapes fit the 32 px proxy crops)
and a little more frequent, textures and noise fainter and object colours further from the
background's. With the default proxy (lite, 32 px crops of 64 px images, batch 16, 300 AdamW
steps) CE reaches mIoU ~26 on the holdout split and the published mIoU surrogate ~31-34.

Samples are a pure function of (seed, split, index). The splits `train`, `holdout` (the default
reward split of the search), `val` and `test` use disjoint random streams. A dataset is generated
once and cached under `<data root>/shapes/` as uint8 arrays, one `.npz` per split, in a folder
named by a hash of the generator parameters and `VERSION`; other parameters or a new version give
a new folder, so a stale cache is never reused.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from results.files import atomic_path

VERSION = 2  # bump whenever the generator's output changes
CLASS_NAMES = ("background", "disc", "box", "triangle", "ring", "line", "dot")
SPLITS = {"train": 0, "holdout": 1, "val": 2, "test": 3}  # split -> random stream id

# appearance (intensities in [0, 1]); calibration notes in the module docstring
BACKGROUND_TEXTURE = (0.02, 0.06)  # range of the background's sinusoid amplitude
OBJECT_TEXTURE = (0.0, 0.03)  # range of the objects' sinusoid amplitude
MIN_CONTRAST = 0.45  # least RGB distance (Euclidean) of an object's base colour from the background
CLUTTER_OPACITY = 0.2  # blend weight of the background's object-like clutter


@dataclass(frozen=True)
class ShapesParams:
    size: int = 64  # image side in pixels
    train: int = 2000  # images per split
    holdout: int = 300
    val: int = 300
    test: int = 300
    void_width: int = 1  # void band around objects in pixels (0 = no void)
    noise: float = 0.03  # std of the per-pixel Gaussian noise, intensities in [0, 1]
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return f"v{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# --- drawing ----------------------------------------------------------------------------------


def _rotated(xx, yy, cx, cy, angle):
    """Pixel coordinates in the frame of an object centred at (cx, cy) rotated by angle."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    return c * dx + s * dy, -s * dx + c * dy


def _disc(rng, xx, yy, scale):
    cx, cy = rng.uniform(0, xx.shape[1], 2)
    a, b = rng.uniform(4, 9, 2) * scale
    u, v = _rotated(xx, yy, cx, cy, rng.uniform(0, np.pi))
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _box(rng, xx, yy, scale):
    cx, cy = rng.uniform(0, xx.shape[1], 2)
    a, b = rng.uniform(3, 7, 2) * scale
    u, v = _rotated(xx, yy, cx, cy, rng.uniform(0, np.pi))
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def _triangle(rng, xx, yy, scale):
    cx, cy = rng.uniform(0, xx.shape[1], 2)
    radius = rng.uniform(5, 10) * scale
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    px, py = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    inside = np.ones_like(xx, dtype=bool)
    for i in range(3):  # same side of each edge as the opposite vertex
        j, k = (i + 1) % 3, (i + 2) % 3
        side = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
        ref = (px[j] - px[i]) * (py[k] - py[i]) - (py[j] - py[i]) * (px[k] - px[i])
        inside &= side * ref >= 0
    return inside


def _ring(rng, xx, yy, scale):
    cx, cy = rng.uniform(0, xx.shape[1], 2)
    outer = rng.uniform(5, 10) * scale
    width = rng.uniform(1.5, 3.0) * scale
    r = np.hypot(xx - cx, yy - cy)
    return (r <= outer) & (r >= outer - width)


def _line(rng, xx, yy, scale):
    size = xx.shape[1]
    x0, y0 = rng.uniform(0, size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.35, 0.8) * size
    x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
    width = rng.uniform(1.5, 2.5) * scale
    # distance from each pixel to the segment
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= width / 2


def _dot(rng, xx, yy, scale):
    cx, cy = rng.uniform(2, xx.shape[1] - 2, 2)
    return np.hypot(xx - cx, yy - cy) <= rng.uniform(1.3, 2.3) * scale


# class id -> (drawer, probability of at least one, max count)
_OBJECTS = {
    1: (_disc, 0.7, 2),
    2: (_box, 0.7, 2),
    3: (_triangle, 0.7, 2),
    4: (_ring, 0.6, 2),
    5: (_line, 0.6, 2),
    6: (_dot, 0.4, 3),
}


def _texture(rng, xx, yy, size, amplitude=None, away_from=None):
    """(H, W, 3) colour field in [0, 1]: a random colour, a gradient and a sinusoidal texture.
    Objects and background draw their colours from this same distribution, so colour alone
    separates nothing; objects are less textured than the background and their colour differs
    from the background's (`away_from`) by at least MIN_CONTRAST, so they are visible."""
    base = rng.uniform(0.15, 0.85, 3)
    # Euclidean, not per channel: from a mid-grey background no colour in [0.15, 0.85]^3 is
    # 0.45 away in one channel, but some are at distance 0.45 (up to 0.6)
    while away_from is not None and np.linalg.norm(base - away_from) < MIN_CONTRAST:
        base = rng.uniform(0.15, 0.85, 3)
    gradient = rng.uniform(-0.25, 0.25, (2, 3)) / size
    field = base + xx[..., None] * gradient[0] + (yy - size / 2)[..., None] * gradient[1]
    freq = rng.uniform(0.3, 1.4)
    angle = rng.uniform(0, np.pi)
    phase = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    return field + rng.uniform(*(amplitude or BACKGROUND_TEXTURE)) * phase[..., None]


def _outer_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels outside `mask` within Chebyshev distance `width` of it."""
    grown = mask.copy()
    padded = np.pad(mask, width)
    h, w = mask.shape
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            grown |= padded[dy : dy + h, dx : dx + w]
    return grown & ~mask


def render(params: ShapesParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample: (H, W, 3) uint8 image and (H, W) uint8 labels (255 = void)."""
    rng = np.random.default_rng([params.seed, SPLITS[split], index])
    size = params.size
    scale = size / 64
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    image = _texture(rng, xx, yy, size)
    background = image.mean((0, 1))
    for _ in range(rng.integers(0, 2)):  # faint object-like clutter that stays background
        mask = _disc(rng, xx, yy, scale) if rng.random() < 0.5 else _box(rng, xx, yy, scale)
        clutter = _texture(rng, xx, yy, size)[mask]
        image[mask] = (1 - CLUTTER_OPACITY) * image[mask] + CLUTTER_OPACITY * clutter

    objects = [
        cls
        for cls, (_, p, most) in _OBJECTS.items()
        if rng.random() < p
        for _ in range(rng.integers(1, most + 1))
    ]
    if not objects:
        objects = [int(rng.integers(1, 4))]  # every image holds at least one blob
    rng.shuffle(objects)  # draw order = occlusion order

    labels = np.zeros((size, size), np.uint8)
    void = np.zeros((size, size), bool)
    for cls in objects:
        mask = _OBJECTS[cls][0](rng, xx, yy, scale)
        if params.void_width > 0:
            void |= _outer_band(mask, params.void_width)
        void[mask] = False
        labels[mask] = cls
        paint = _texture(rng, xx, yy, size, amplitude=OBJECT_TEXTURE, away_from=background)
        image[mask] = paint[mask]

    image = image + rng.normal(0, params.noise, image.shape)
    labels[void] = 255
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels


# --- cache and dataset ------------------------------------------------------------------------


def generate_split(params: ShapesParams, split: str) -> tuple[np.ndarray, np.ndarray]:
    count = getattr(params, split)
    images = np.empty((count, params.size, params.size, 3), np.uint8)
    labels = np.empty((count, params.size, params.size), np.uint8)
    for i in range(count):
        images[i], labels[i] = render(params, split, i)
    return images, labels


def load_split(root: str | Path, params: ShapesParams, split: str) -> tuple[np.ndarray, ...]:
    """(images (N, H, W, 3), labels (N, H, W)) uint8, generated on first use and cached."""
    folder = Path(root) / "shapes" / params.key()
    path = folder / f"{split}.npz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        images, labels = generate_split(params, split)
        with atomic_path(path) as tmp:  # a crash mid-write never leaves a truncated cache
            np.savez(tmp, images=images, labels=labels)
        (folder / "params.json").write_text(json.dumps({"version": VERSION, **asdict(params)}))
        seconds = time.perf_counter() - start
        print(f"[shapes] generated {split}: {len(images)} images in {seconds:.1f}s -> {path}")
    with np.load(path) as arrays:
        return arrays["images"], arrays["labels"]


class Shapes(torch.utils.data.Dataset):
    """The synthetic dataset. Items are (Image uint8 (3, H, W), Mask int64 (H, W)), or what
    `transform(image, mask)` makes of them."""

    num_classes = len(CLASS_NAMES)
    ignore_index = 255
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        **params,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split '{split}'; valid: {', '.join(SPLITS)}")
        unknown = sorted(set(params) - set(ShapesParams.__dataclass_fields__))
        if unknown:
            valid = ", ".join(ShapesParams.__dataclass_fields__)
            raise ValueError(f"unknown shapes parameter(s) {', '.join(unknown)}; valid: {valid}")
        self.params = ShapesParams(**params)
        if self.params.size < 16 or getattr(self.params, split) < 1:
            raise ValueError(f"shapes needs size >= 16 and >= 1 image per split: {self.params}")
        images, labels = load_split(root, self.params, split)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) view
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = tv_tensors.Image(self.images[index])
        target = tv_tensors.Mask(self.labels[index].long())
        if self.transform is not None:
            return self.transform(image, target)
        return image, target
