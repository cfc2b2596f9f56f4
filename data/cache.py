"""The proxy's images decoded and resized once per machine, for every trial to map.

A VOC proxy trial trains on 128 px crops of images rescaled to fit 512 x 128 times a ratio in
[0.5, 2]: decoding a 500 x 375 JPEG and its PNG for each crop costs more than the GPU's step.
`cached_dataset` decodes the split once, shrinks each image to the largest size the random
rescale can ask for (fit to the scale times the top ratio; never enlarged), and writes them as
uint8 to one flat file that every trial on the machine maps read-only (the page cache holds one
copy for all of them). The rescale then runs from the cached image.

The reward split is cached the same way at the evaluation's size (fit to eval_scale): its
resize then finds the image at the size it asks for and leaves it alone, so the cached reward
images are the decoded ones, value for value, without the decoding in every trial (Cityscapes:
298 images of 2048 x 1024, 20-30 s of one core).

Layout: <cache_root>/<dataset>-<key>/{pixels.u8, index.npy, params.json}, where pixels.u8 holds
each image's (3, h, w) bytes followed by its (h, w) labels and index.npy an (offset, h, w) row
per image. The key hashes what the content depends on (the image and label file paths, the size,
VERSION): another split, holdout or scale gets another folder. The folder is written under a
temporary name and renamed when complete, so a crash never leaves half a cache and two
processes building it at once end with one. Delete the folder to rebuild it.
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from data.transforms import fit_size

VERSION = 1


class CachedImages(Dataset):
    """A dataset's images from its cache folder; items are (Image uint8, Mask int64) passed
    through `transform`, like the dataset's own."""

    def __init__(self, folder: Path, source: Dataset, transform: Callable | None):
        self.folder = folder
        self.index = np.load(folder / "index.npy")  # (N, 3): offset, h, w
        self.pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r")
        self.transform = transform
        self.num_classes, self.ignore_index = source.num_classes, source.ignore_index
        self.class_names = source.class_names
        self.ids = getattr(source, "ids", None)  # which images, in order (VOC's ids)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int):
        offset, h, w = (int(v) for v in self.index[index])
        data = torch.from_numpy(np.array(self.pixels[offset : offset + 4 * h * w]))  # a copy
        image = tv_tensors.Image(data[: 3 * h * w].view(3, h, w))
        target = tv_tensors.Mask(data[3 * h * w :].view(h, w).long())
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def cached_dataset(
    source: Dataset, largest: tuple[int, int], cache_root: Path, transform: Callable | None
) -> CachedImages:
    """`source` (a reader with `images`/`labels` path lists and no transform) from its cache
    under `cache_root`, built first if missing. `largest`: (long, short) side the images are
    shrunk to fit."""
    files = [str(p) for p in [*source.images, *source.labels]]
    key_text = json.dumps([VERSION, type(source).__name__, list(largest), files])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    folder = Path(cache_root) / f"{type(source).__name__.lower()}-{key}"
    if not (folder / "index.npy").is_file():
        _build(source, largest, folder)
    return CachedImages(folder, source, transform)


class _Shrunk(Dataset):
    def __init__(self, source: Dataset, largest: tuple[int, int]):
        self.source, self.largest = source, largest

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, target = self.source[index]
        h, w = image.shape[-2:]
        size = fit_size(h, w, self.largest)
        if size[0] < h:  # only ever shrink: enlarging would add nothing the rescale cannot
            image, target = TF.resize(image, size), TF.resize(target, size)
        h, w = image.shape[-2:]
        labels = target.as_subclass(torch.Tensor).to(torch.uint8)
        flat = torch.cat([image.as_subclass(torch.Tensor).reshape(-1), labels.reshape(-1)])
        return flat, h, w


def _build(source: Dataset, largest: tuple[int, int], folder: Path) -> None:
    """Decode, shrink and write every image, in order, with the machine's cores decoding."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    workers = min(8, len(os.sched_getaffinity(0)))
    loader = DataLoader(_Shrunk(source, largest), batch_size=None, num_workers=workers)
    started, total, rows, offset = time.perf_counter(), len(source), [], 0
    print(f"[cache] decoding {total:,} images into {folder} ...", flush=True)
    try:
        with open(tmp / "pixels.u8", "wb") as out:
            for i, (flat, h, w) in enumerate(loader):
                out.write(flat.numpy().tobytes())
                rows.append((offset, h, w))
                offset += flat.numel()
                if (i + 1) % max(1, total // 10) == 0 or i + 1 == total:
                    seconds = time.perf_counter() - started
                    print(f"[cache] {i + 1:,}/{total:,} images, {seconds:.0f}s", flush=True)
        np.save(tmp / "index.npy", np.array(rows, dtype=np.int64))
        (tmp / "params.json").write_text(json.dumps({"version": VERSION, "largest": largest}))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its cache is the same
            if not (folder / "index.npy").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
