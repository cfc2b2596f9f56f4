"""The built-in shapes dataset, the joint transforms, the dataset registry and the loaders."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors  # noqa: E402

import data
import data.shapes as shapes_module
from data.shapes import CLASS_NAMES, Shapes, ShapesParams, render
from data.torchvision_compat import torchvision  # noqa: F401
from data.transforms import (
    MEAN,
    STD,
    Normalize,
    PadToSize,
    PhotometricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRescale,
    eval_transforms,
    hsv_to_rgb,
    rgb_to_hsv,
    scale_shift,
    train_transforms,
    whole_image_transforms,
)

SMALL = dict(size=32, train=40, holdout=8, val=8, test=8)


def test_render_is_deterministic_and_splits_differ():
    params = ShapesParams(size=48)
    image, labels = render(params, "train", 3)
    again_image, again_labels = render(params, "train", 3)
    assert np.array_equal(image, again_image) and np.array_equal(labels, again_labels)
    other_image, _ = render(params, "holdout", 3)
    assert not np.array_equal(image, other_image)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and labels.dtype == np.uint8


def test_dataset_statistics_make_a_fair_test_bed():
    params = ShapesParams(size=64, train=300)
    labels = np.stack([render(params, "train", i)[1] for i in range(300)])
    valid = labels[labels != 255]
    share = np.bincount(valid, minlength=7) / valid.size
    present = [(labels == c).any(axis=(1, 2)).mean() for c in range(7)]
    assert set(np.unique(labels)) == set(range(7)) | {255}
    assert share[0] > 0.6  # background dominates, as in VOC
    assert share[6] < 0.01 and 0.15 < present[6] < 0.6  # dots: rare and small, yet not noise
    assert share[5] < share[1] / 2  # lines: thin, few pixels per image
    assert 0.02 < (labels == 255).mean() < 0.15  # a void band, not a void sea


def test_void_band_surrounds_objects_and_width_is_configurable():
    _, labels = render(ShapesParams(size=64, void_width=0), "train", 0)
    assert not (labels == 255).any()
    _, banded = render(ShapesParams(size=64, void_width=2), "train", 0)
    void = banded == 255
    # every void pixel lies within 2 px of an object pixel
    objects = np.pad((banded > 0) & (banded < 255), 2)
    near = np.zeros_like(void)
    for dy in range(5):
        for dx in range(5):
            near |= objects[dy : dy + 64, dx : dx + 64]
    assert void.any() and (near[void]).all()
    # objects keep their pixels: the band lies outside them
    assert ((labels > 0) & (banded == 0)).sum() == 0


def test_colour_alone_does_not_separate_the_classes():
    params = ShapesParams(size=64)
    means = {c: [] for c in range(7)}
    for i in range(150):
        image, labels = render(params, "train", i)
        for c in range(7):
            if (labels == c).sum() > 3:
                means[c].append(image[labels == c].mean(0))
    centres = np.array([np.mean(means[c], 0) for c in range(7)])
    spreads = np.array([np.std(means[c], 0).mean() for c in range(7)])
    # class mean colours are much closer to each other than the spread within a class
    assert np.abs(centres - centres.mean(0)).max() < spreads.min()


def test_cache_is_written_once_and_keyed_by_parameters(tmp_path, monkeypatch):
    calls = []
    original = shapes_module.generate_split

    def counting(params, split):
        calls.append((params, split))
        return original(params, split)

    monkeypatch.setattr(shapes_module, "generate_split", counting)
    first = Shapes(tmp_path, "val", **SMALL)
    second = Shapes(tmp_path, "val", **SMALL)
    assert len(calls) == 1 and torch.equal(first.images, second.images)
    Shapes(tmp_path, "val", **{**SMALL, "void_width": 2})  # other parameters: a new cache
    assert len(calls) == 2
    monkeypatch.setattr(shapes_module, "VERSION", shapes_module.VERSION + 1)
    Shapes(tmp_path, "val", **SMALL)  # a new generator version is never served the old cache
    assert len(calls) == 3
    folders = sorted(p.name for p in (tmp_path / "shapes").iterdir())
    assert len(folders) == 3 and not list((tmp_path / "shapes").rglob("*.tmp*"))


def test_items_and_transforms(tmp_path):
    dataset = data.build_dataset("shapes", tmp_path, "train", **SMALL)
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 32, 32) and target.shape == (32, 32) and target.dtype == torch.int64
    assert dataset.num_classes == len(CLASS_NAMES) == 7
    transformed = data.build_dataset("shapes", tmp_path, "train", eval_transforms(), **SMALL)
    x, y = transformed[0]
    expected = (image.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1
    )
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, target)


def test_train_transforms_pad_labels_with_void_and_keep_pairs_aligned():
    image = tv_tensors.Image(
        (1 + torch.arange(120)).to(torch.uint8).view(1, 10, 12).repeat(3, 1, 1)
    )
    target = tv_tensors.Mask(torch.arange(10 * 12).view(10, 12) % 7)
    torch.manual_seed(0)
    x, y = train_transforms(crop_size=16, photometric=False)(image, target)
    assert x.shape == (3, 16, 16) and y.shape == (16, 16) and y.dtype == torch.int64
    assert (y == 255).sum() == 16 * 16 - 10 * 12  # padding is void
    # image and labels moved together: wherever there is a label, the pixel is a real one (no
    # pixel value normalises to exactly 0, the padding's colour)
    assert ((x[0] == 0) == (y == 255)).all()


@pytest.mark.parametrize("batch_wise", [False, True])
def test_crop_padding_is_the_mean_colour_after_the_distortion(batch_wise):
    """mmseg pads after Normalize with 0: the padding of a crop larger than the image is the
    mean colour, exactly 0 after the normalisation, whatever the photometric distortion did to
    the image, and stays at the bottom/right when the crop is flipped; its labels are void."""
    generator = torch.Generator().manual_seed(0)
    image = tv_tensors.Image(
        torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8, generator=generator)
    )
    target = tv_tensors.Mask(torch.randint(0, 4, (10, 12), generator=generator))
    augment = train_transforms(crop_size=16, batch_wise=batch_wise)
    plain = train_transforms(crop_size=16, photometric=False, batch_wise=batch_wise)
    flipped = distorted = 0
    for seed in range(16):
        torch.manual_seed(seed)
        sample = augment(image, target)
        torch.manual_seed(seed)
        undistorted = plain(image, target)
        if batch_wise:
            flipped += int(sample[2][2])
            sample = augment.on_batch(*(part[None] for part in sample))
            undistorted = plain.on_batch(*(part[None] for part in undistorted))
        x, y = (part.squeeze(0) for part in sample)
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert (x[:, 10:] == 0).all() and (x[:, :, 12:] == 0).all()  # bottom and right
        assert (y[10:] == 255).all() and (y[:, 12:] == 255).all()
        assert (y[:10, :12] != 255).all() and (x[:, :10, :12] != 0).all()
        distorted += not torch.equal(x, undistorted[0].squeeze(0))
    assert distorted > 4  # the image part was distorted in most crops, the padding never
    assert not batch_wise or 0 < flipped < 16


def test_cat_max_ratio_redraws_crops_that_one_class_dominates():
    from data.transforms import RandomCrop

    # class 1 fills the top-left 16 x 16 quadrant of a 32 x 32 image, class 0 the rest; some
    # void so that it is left out of the shares. A 16 px crop at (top, left) is balanced when
    # class 1's share of its labelled pixels lies strictly between 0.25 and 0.75.
    labels = torch.zeros(32, 32, dtype=torch.int64)
    labels[:16, :16] = 1
    labels[31, :] = 255
    balanced = []
    for top in range(17):
        for left in range(17):
            window = labels[top : top + 16, left : left + 16]
            ones, zeros = (window == 1).sum().item(), (window == 0).sum().item()
            balanced.append(0.25 < ones / (ones + zeros) < 0.75)
    p = sum(balanced) / len(balanced)  # one uniform draw; 10 redraws: 1 - (1 - p) ** 10
    image, target = tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8)), labels

    def share_balanced(crop, n=1500):
        torch.manual_seed(0)
        hits = 0
        for _ in range(n):
            y = crop(image, tv_tensors.Mask(target))[1]
            ones, zeros = (y == 1).sum().item(), (y == 0).sum().item()
            hits += 0.25 < ones / (ones + zeros) < 0.75
        return hits / n

    assert 0.2 < p < 0.5
    assert share_balanced(RandomCrop(16)) == pytest.approx(p, abs=0.04)
    assert share_balanced(RandomCrop(16, 0.75)) == pytest.approx(1 - (1 - p) ** 10, abs=0.02)
    # one class only, or only void: no crop is balanced, the last draw is kept
    x, y = RandomCrop(16, 0.75)(image, tv_tensors.Mask(torch.zeros(32, 32, dtype=torch.int64)))
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    assert RandomCrop(8, 0.75)(image, tv_tensors.Mask(torch.full((32, 32), 255)))[1].shape == (8, 8)


def _pixel(r, g, b):
    return torch.tensor([r, g, b], dtype=torch.uint8).view(3, 1, 1)


def test_photometric_steps_by_hand():
    # mmseg's convert: clip to [0, 255], then truncate to uint8
    assert scale_shift(_pixel(100, 250, 3), beta=20.7).flatten().tolist() == [120, 255, 23]
    assert scale_shift(_pixel(100, 200, 3), alpha=1.5).flatten().tolist() == [150, 255, 4]
    assert scale_shift(_pixel(100, 200, 3), beta=-10).flatten().tolist() == [90, 190, 0]
    # OpenCV's uint8 HSV: H in 2-degree units
    assert rgb_to_hsv(_pixel(255, 0, 0)).flatten().tolist() == [0, 255, 255]
    assert rgb_to_hsv(_pixel(0, 255, 0)).flatten().tolist() == [60, 255, 255]
    assert rgb_to_hsv(_pixel(0, 0, 128)).flatten().tolist() == [120, 255, 128]
    assert rgb_to_hsv(_pixel(90, 90, 90)).flatten().tolist() == [0, 0, 90]
    # a hue shift of 60 units (120 degrees) turns red into green; saturation halved (truncated
    # to 127) turns it pink
    assert hsv_to_rgb(
        torch.tensor([60, 255, 255], dtype=torch.uint8).view(3, 1, 1)
    ).flatten().tolist() == [0, 255, 0]
    pink = hsv_to_rgb(torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1))
    assert pink.flatten().tolist() == [255, 128, 128]


def test_hsv_round_trip_agrees_with_colorsys():
    import colorsys

    rgb = torch.randint(0, 256, (3, 40, 40), generator=torch.Generator().manual_seed(0))
    rgb = rgb.to(torch.uint8)
    hsv = rgb_to_hsv(rgb)
    for r, g, b in rgb.flatten(1).T[:200].tolist():
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        ours = rgb_to_hsv(_pixel(r, g, b)).flatten().tolist()
        assert abs(ours[0] - round(h * 180) % 180) <= 1 and abs(ours[1] - s * 255) <= 0.5 + 1e-9
        assert ours[2] == round(v * 255)
    # uint8 HSV loses a little, as OpenCV's: half a 2-degree hue unit is up to 255 / 60 levels
    assert (hsv_to_rgb(hsv).int() - rgb.int()).abs().max() <= 5


def test_photometric_distortion_never_swaps_channels():
    # without hue and saturation changes every step is the same monotone map on each channel,
    # so a pixel with R > G > B keeps that order in every draw (torchvision's version permutes
    # the channels in about half of its draws)
    image = tv_tensors.Image(_pixel(180, 120, 60).expand(3, 4, 4).clone())
    distort = PhotometricDistortion(hue_delta=0, saturation_range=(1.0, 1.0))
    changed = 0
    for seed in range(200):
        torch.manual_seed(seed)
        out, _ = distort(image, None)
        r, g, b = out[:, 0, 0].tolist()
        assert r >= g >= b and out.dtype == torch.uint8
        changed += [r, g, b] != [180, 120, 60]
    assert 100 < changed < 200  # most draws change something, about 1 in 8 nothing at all
    # the full distortion keeps a strongly red image red-dominant in every draw
    red = tv_tensors.Image(_pixel(220, 30, 30).expand(3, 4, 4).clone())
    torch.manual_seed(1)
    for _ in range(300):
        r, g, b = PhotometricDistortion()(red, None)[0][:, 0, 0].tolist()
        assert r > g and r > b
    # the hue alone moves by at most 18 units (36 degrees) each way, around the circle
    hue_only = PhotometricDistortion(
        brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1)
    )
    torch.manual_seed(0)
    hues = [int(rgb_to_hsv(hue_only(image, None)[0])[0, 0, 0]) for _ in range(300)]
    moves = {(h - 15 + 90) % 180 - 90 for h in hues}  # the input's hue is 15 (30 degrees)
    assert min(moves) <= -16 and max(moves) >= 15 and all(-19 <= m <= 18 for m in moves)


def test_the_eval_centre_crop_pads_labels_with_void():
    """A reward image narrower than the crop (VOC: an aspect ratio above 4:1 after the rescale)
    is padded; the padding's labels are void, not background (class 0)."""
    image = tv_tensors.Image(torch.full((3, 10, 40), 7, dtype=torch.uint8))
    target = tv_tensors.Mask(torch.ones(10, 40, dtype=torch.uint8))
    x, y = eval_transforms(crop_size=16)(image, target)
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    assert y[:, 0].tolist() == [255] * 3 + [1] * 10 + [255] * 3  # 3 rows of padding each side
    assert (y != 255).sum() == 10 * 16


def test_rescale_and_eval_presets_sizes():
    image = tv_tensors.Image(torch.zeros(3, 100, 200, dtype=torch.uint8))
    target = tv_tensors.Mask(torch.zeros(100, 200, dtype=torch.int64))
    x, y = eval_transforms(scale=(512, 64), crop_size=64)(image, target)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    x, y = whole_image_transforms(scale=(512, 50))(image, target)
    assert x.shape == (3, 50, 100) and y.shape == (100, 200)  # labels keep their size
    torch.manual_seed(1)
    sizes = {
        train_transforms(crop_size=300, scale=(400, 100), photometric=False, flip=False)(
            image, target
        )[1]
        .ne(255)
        .sum()
        .item()
        for _ in range(5)
    }
    assert len(sizes) > 1  # random rescale: a different valid area each time


def test_registry_and_auto(tmp_path):
    names = ["ade20k", "camvid", "cityscapes", "cocostuff", "folder", "shapes", "voc"]
    assert data.list_datasets() == names
    with pytest.raises(ValueError, match="did you mean 'shapes'"):
        data.build_dataset("shape", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown shapes split 'tran'"):
        Shapes(tmp_path, "tran", **SMALL)
    with pytest.raises(ValueError, match="unknown shapes parameter"):
        Shapes(tmp_path, "train", sise=32)
    assert data.resolve_dataset("auto", tmp_path) == "shapes"
    (tmp_path / "cityscapes" / "leftImg8bit").mkdir(parents=True)
    assert data.resolve_dataset("auto", tmp_path) == "cityscapes"
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    assert data.resolve_dataset("auto", tmp_path) == "voc"
    assert data.resolve_dataset("shapes", tmp_path) == "shapes"


def _batches(loader, count):
    it = iter(loader)
    return [next(it) for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_resumes_mid_stream_with_identical_batches(tmp_path, workers):
    dataset = Shapes(tmp_path, "train", train_transforms(crop_size=24), **SMALL)
    full = _batches(data.train_loader(dataset, 6, seed=3, workers=workers), 9)  # > 1 epoch
    resumed = _batches(data.train_loader(dataset, 6, seed=3, start_iteration=5), 4)
    for (x, y), (rx, ry) in zip(full[5:], resumed, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    other = _batches(data.train_loader(dataset, 6, seed=4), 1)[0]
    assert not torch.equal(full[0][0], other[0])


def test_train_loader_visits_every_item_once_per_epoch(tmp_path):
    dataset = Shapes(tmp_path, "train", **SMALL)  # 40 items, batches of 8: 5 per epoch
    seen = torch.cat([y.flatten(1) for _, y in _batches(data.train_loader(dataset, 8, 0), 5)])
    assert len({tuple(row.tolist()) for row in seen}) == 40


def test_batch_wise_augmentation_equals_the_per_sample_definition():
    """The training augmentation split in two (draws per sample in the loader, pixels per batch
    on the device) gives the same crops as the per-sample steps run one after the other, for the
    same seeds: rescale, crop, flip, mmseg's photometric distortion, normalisation, padding
    (half the crops are larger than their rescaled image)."""
    from torchvision.transforms import v2

    size = 40  # rescaled short sides of 16-64 px: half the crops need padding
    kwargs = dict(scale=(64, 32), ratio_range=(0.5, 2.0), cat_max_ratio=0.75)
    definition = v2.Compose(
        [
            RandomRescale(kwargs["scale"], kwargs["ratio_range"]),
            RandomCrop(size, kwargs["cat_max_ratio"]),
            RandomHorizontalFlip(0.5),
            PhotometricDistortion(),
            Normalize(),
            PadToSize(size),
        ]
    )
    batch_wise = train_transforms(crop_size=size, batch_wise=True, **kwargs)
    generator = torch.Generator().manual_seed(0)
    expected, parts = [], []
    for i in range(12):
        h, w = 30 + 7 * i, 70 - 3 * i
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        label = torch.randint(0, 4, (h, w), generator=generator)
        label[:, :3] = 255
        sample = (tv_tensors.Image(image), tv_tensors.Mask(label))
        torch.manual_seed(1000 + i)
        expected.append(definition(*sample))
        torch.manual_seed(1000 + i)
        parts.append(batch_wise(*sample))
    images, target, params = (torch.stack(x) for x in zip(*parts, strict=True))
    assert images.dtype == torch.uint8 and target.dtype == torch.uint8
    got_images, got_target = batch_wise.on_batch(images, target, params)
    assert torch.equal(got_images, torch.stack([e[0] for e in expected]))
    assert torch.equal(got_target, torch.stack([e[1] for e in expected]))
    assert got_target.dtype == torch.int64
    rows, cols, draws = params[:, 0], params[:, 1], params[:, 2:]
    padded = (rows < size) | (cols < size)
    assert 0 < padded.sum() < 12 and (rows < size).any() and (cols < size).any()  # crops padded ...
    assert (draws[padded, 0] > 0.5).any()  # ... and flipped, whose padding stays on the right
    assert 0 < draws[:, 0].sum() < 12  # both flip outcomes ...
    for column in (1, 6, 8):  # ... and several steps of the distortion drawn on and off
        assert 0 < (draws[:, column] > 0.5).sum() < 12
