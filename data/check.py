"""The data check behind `./launch.sh check-data`, and what search and retrain run before they
start: every mask of every split read once, every image's size read from its header.

`check_dataset(name, root, params)` builds the splits (train, val, and test when the dataset has
one; not the holdout, which is part of train) and returns a `CheckResult`: per split the number
of images, each class's pixels and the raw mask values found; the problems (each fails the check,
one line per kind, the first files named) and the warnings (which do not). `check_splits` does the
same over datasets already built: any object with `images`, `labels` (paired lists of paths),
`coding` (a data.masks.MaskCoding), `class_names` and, optionally, `unmatched` will do.

A split's scan is cached under <root>/cache/check-data/ (else the user's cache folder), keyed by
its file list with sizes and modification times (os.stat only) and the dataset's coding: a rerun
on an unchanged tree reads no mask. Masks are read by a pool of processes, one per usable core.
"""

import filecmp
import hashlib
import json
import multiprocessing
import os
import re
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import PIL.Image

from data.masks import INVALID, VOID, MaskCoding, decode, describe_value, raw_values, read_mask

CHECK_VERSION = 1  # bump when a scan's meaning changes: cached scans of older versions are unused
SPLITS = ("train", "val")  # always checked; a missing one is a problem
OPTIONAL_SPLITS = ("test",)  # checked when the dataset builds them
IN_MEMORY = ("shapes",)  # generated datasets: no files to check
SHOWN = 3  # files named per problem line
JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class SplitReport:
    """One split's scan: what `./launch.sh check-data` prints for it (and what is cached)."""

    split: str
    images: int
    class_pixels: dict[str, int]  # class name -> pixels, in class order
    void_pixels: int
    invalid_pixels: int  # values that are neither classes nor void
    raw_values: dict[str, int]  # a raw value as describe_value writes it -> pixels
    problems: list[str]  # one line per kind of problem its masks have
    seconds: float = 0.0  # the scan's time (0 when it came from the cache)
    cached: bool = False


@dataclass
class CheckResult:
    name: str
    root: str
    coding: str  # the mask coding, in words
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    in_memory: bool = False  # a generated dataset (shapes): nothing was checked

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class MaskScan:
    """What one worker learns from an (image, mask) pair."""

    image_size: tuple[int, int] | None = None  # (W, H) from the header
    mask_size: tuple[int, int] | None = None
    jpeg: bool = False
    colour: bool = False  # a three-channel mask: values are colours packed as 0xRRGGBB
    values: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    failed: str = ""  # the path of an unreadable image or mask
    error: str = ""  # and why it is unreadable


# --- one pair of files (runs in the worker processes) -----------------------------------------


def scan_pair(pair: tuple[str, str]) -> MaskScan:
    image_path, mask_path = pair
    scan = MaskScan()
    try:
        with PIL.Image.open(image_path) as image:  # the header only: no pixel is decoded
            scan.image_size = image.size
    except (OSError, SyntaxError) as error:  # PIL reports some broken chunks as SyntaxError
        scan.failed, scan.error = image_path, str(error)
        return scan
    try:
        with PIL.Image.open(mask_path) as mask:
            scan.mask_size = mask.size
            scan.jpeg = mask.format == "JPEG" or mask_path.lower().endswith(JPEG_SUFFIXES)
            # the common case, an 8-bit index or palette mask (read_mask reads it as it is):
            # PIL's histogram counts the 256 values in C, 5x faster than numpy on the array
            counts = mask.histogram() if mask.mode in ("L", "P") else None
        if counts is not None:
            scan.values = [value for value, count in enumerate(counts) if count]
            scan.counts = [counts[value] for value in scan.values]
            return scan
        raw = read_mask(mask_path)
    except (OSError, SyntaxError, ValueError) as error:  # read_mask: a ValueError
        scan.failed, scan.error = mask_path, str(error.__cause__ or error)
        return scan
    scan.colour = raw.ndim == 3
    values, counts = raw_values(raw)
    scan.values, scan.counts = values.tolist(), counts.tolist()
    return scan


def scan_all(
    pairs: list[tuple[str, str]], workers: int, progress: Callable[[int], None] | None
) -> Iterator[MaskScan]:
    """The scans of `pairs` in order, read by `workers` processes (in this one when 1)."""
    if workers <= 1:
        scans = map(scan_pair, pairs)
        pool = None
    else:
        # chunks large enough to amortise the pickling, small enough to keep both cores busy
        chunk = max(1, min(32, len(pairs) // (8 * workers)))
        pool = multiprocessing.Pool(workers)
        scans = pool.imap(scan_pair, pairs, chunksize=chunk)
    try:
        for done, scan in enumerate(scans, 1):
            if progress:
                progress(done)
            yield scan
    finally:
        if pool is not None:
            pool.terminate()


# --- one split --------------------------------------------------------------------------------


def scan_split(
    dataset,
    split: str,
    root: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SplitReport:
    """Read every mask of `dataset` (and its images' headers) once: the split's report."""
    started = time.perf_counter()
    pairs = [(str(i), str(m)) for i, m in zip(dataset.images, dataset.labels, strict=True)]
    pixels = {False: Counter(), True: Counter()}  # colour mask? -> raw value -> pixels
    masks = {False: [], True: []}  # colour mask? -> [(mask path, its raw values)]
    unreadable, resized, jpegs = [], [], []
    first_error = first_size = ""
    scans = scan_all(pairs, _workers(workers, len(pairs)), progress)
    for (_, mask_path), scan in zip(pairs, scans, strict=True):
        if scan.failed:
            unreadable.append(scan.failed)
            first_error = first_error or scan.error
            continue
        if scan.image_size != scan.mask_size:
            resized.append(mask_path)
            first_size = first_size or f"{_size(scan.mask_size)} vs {_size(scan.image_size)}"
        if scan.jpeg:
            jpegs.append(mask_path)
        pixels[scan.colour].update(dict(zip(scan.values, scan.counts, strict=True)))
        masks[scan.colour].append((mask_path, scan.values))

    report = SplitReport(
        split=split,
        images=len(pairs),
        class_pixels=dict.fromkeys(class_keys(dataset.class_names, dataset.coding), 0),
        void_pixels=0,
        invalid_pixels=0,
        raw_values={},
        problems=[],
    )
    if unreadable:
        report.problems.append(
            f"{split}: {_count(unreadable, 'unreadable file')} ({first_error}): "
            f"{_files(unreadable, root)}"
        )
    if resized:
        report.problems.append(
            f"{split}: {_count(resized, 'mask')} not the size of the image (mask vs image, W x H: "
            f"{first_size}): {_files(resized, root)}"
        )
    if jpegs:
        report.problems.append(
            f"{split}: {_count(jpegs, 'mask')} stored as JPEG (its lossy compression changes the "
            f"values along every edge; save masks as PNG): {_files(jpegs, root)}"
        )
    for colour in (False, True):
        if masks[colour]:
            _add_classes(report, dataset.coding, colour, pixels[colour], masks[colour], root)
    report.seconds = time.perf_counter() - started
    return report


def _add_classes(
    report: SplitReport,
    coding: MaskCoding,
    colour: bool,
    pixels: Counter,
    masks: list[tuple[str, list[int]]],
    root: Path | None,
) -> None:
    """Decode the split's distinct raw values, not every pixel (decode maps value by value, so
    the result is the same), and add their pixels to the report's classes, void and invalid."""
    values = sorted(pixels)
    encoding = "rgb" if colour else "index"
    report.raw_values.update({describe_value(v, encoding): pixels[v] for v in values})
    paths = [path for path, _ in masks]
    try:
        ids = decode(_as_raw(values, colour), coding)[0].tolist()
    except ValueError:
        # decode refuses a mask for its shape or the coding before it reads a pixel: the first
        # mask's own message names its real shape
        report.problems.append(
            f"{report.split}: {_count(paths, 'mask')} cannot be decoded "
            f"({_decode_error(paths[0], coding)}): {_files(paths, root)}"
        )
        return
    names = list(report.class_pixels)
    invalid = {}
    for value, class_id in zip(values, ids, strict=True):
        if class_id == VOID:
            report.void_pixels += pixels[value]
        elif class_id == INVALID:
            report.invalid_pixels += pixels[value]
            invalid[value] = pixels[value]
        else:
            report.class_pixels[names[class_id]] += pixels[value]
    if invalid:
        what = "colours not in the class table" if colour else "values neither classes nor void"
        listed = ", ".join(f"{describe_value(v, encoding)} ({n:,} px)" for v, n in invalid.items())
        holding = [path for path, held in masks if not invalid.keys().isdisjoint(held)]
        report.problems.append(
            f"{report.split}: {_count(holding, 'mask')} with {what}: {_clip(listed, 200)}: "
            f"{_files(holding, root)}"
        )


def class_keys(class_names, coding: MaskCoding) -> list[str]:
    """A report key per class id: its name, made unique (a dataset file may repeat a name) and
    `class_<id>` for ids the names do not reach."""
    names = list(class_names)[: coding.num_classes]
    names += [f"class_{i}" for i in range(len(names), coding.num_classes)]
    return [name if names.count(name) == 1 else f"{name} ({i})" for i, name in enumerate(names)]


def _as_raw(values: list[int], colour: bool) -> np.ndarray:
    """Distinct raw values as a one-row mask: (1, n) values, or (1, n, 3) colours."""
    packed = np.asarray(values, dtype=np.int64)
    if not colour:
        return packed[None]
    rgb = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=-1)
    return rgb[None].astype(np.uint8)


def _decode_error(path: str, coding: MaskCoding) -> str:
    try:
        decode(read_mask(path), coding)
    except ValueError as error:
        return str(error)
    return "decoded as a whole but not value by value"  # decode maps values one by one


def _workers(asked: int | None, masks: int) -> int:
    """Processes for `masks` masks: `asked`, else one per usable core once a pool pays off."""
    if asked is not None:
        return max(1, min(asked, masks))
    if masks < 256:  # a pool costs ~0.1 s to start and more CPU per mask: worth it past ~200
        return 1
    return len(os.sched_getaffinity(0))


# --- a whole dataset --------------------------------------------------------------------------


def check_dataset(
    name: str,
    root: str | Path,
    params: dict | None = None,
    splits: tuple[str, ...] | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> CheckResult:
    """Check the dataset `name` under `root` (built with `params`, as search and retrain build
    it).

    Args:
        splits: the splits to check (each must build); None: train and val, and test when the
            dataset builds it.
        workers: processes reading masks; None: one per usable core (in this process for a
            small split).
        use_cache: answer a split from its cached scan when its files are unchanged, and cache
            new scans.
        progress: print a progress line per split on stderr.

    Returns:
        a CheckResult; `ok` is False when it holds problems. A generated dataset (shapes) has
        `in_memory` set and nothing checked.
    """
    if name in IN_MEMORY:
        return CheckResult(name, str(root), "generated in memory", in_memory=True)
    from data.datasets import build_dataset

    built, problems = {}, []
    for split in splits or (*SPLITS, *OPTIONAL_SPLITS):
        try:
            built[split] = build_dataset(name, root, split, None, **(params or {}))
        except (ValueError, FileNotFoundError, TypeError) as error:
            if splits or split in SPLITS:  # an optional split the dataset lacks is no problem
                problems.append(f"{split}: cannot build the split: {str(error).splitlines()[0]}")
    result = check_splits(built, name, Path(root), workers, use_cache, progress)
    result.problems[:0] = problems
    return result


def check_splits(
    datasets: dict,
    name: str,
    root: Path | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> CheckResult:
    """Check built datasets, {split: dataset}: any objects with `images`, `labels`, `coding`
    and `class_names` (and `unmatched`, else none). File names print relative to `root`, and
    scans are cached under it (see check_dataset)."""
    coding = next(iter(datasets.values())).coding if datasets else None
    result = CheckResult(name, str(root or ""), describe_coding(coding) if coding else "?")
    for split, dataset in datasets.items():
        unmatched = [str(p) for p in getattr(dataset, "unmatched", None) or []]
        if unmatched:
            result.problems.append(
                f"{split}: {_count(unmatched, 'file')} without a partner (an image without a "
                f"mask or a mask without an image): {_files(unmatched, root)}"
            )
        if not dataset.images:
            result.problems.append(f"{split}: no images (an empty split)")
            continue
        shown = print_progress(split, len(dataset.images)) if progress else None
        report = cached_scan(dataset, split, name, root, workers, use_cache, shown)
        result.splits.append(report)
        result.problems += report.problems
    result.problems += overlaps(datasets, root)
    result.warnings += data_warnings(result, coding)
    return result


def overlaps(datasets: dict, root: Path | None = None) -> list[str]:
    """A problem line per pair of splits that share images: the same file, or a copy of it (the
    same stem and bytes; split folders of a user's data may reuse names like 0001.jpg for other
    photos, so a name alone is no overlap). Only files of equal stem and size are read."""
    problems = []
    names = list(datasets)
    for position, first in enumerate(names):
        keys = {(Path(p).stem, os.path.getsize(p)): p for p in datasets[first].images}
        for second in names[position + 1 :]:
            shared = []
            for path in datasets[second].images:
                twin = keys.get((Path(path).stem, os.path.getsize(path)))
                if twin is not None and filecmp.cmp(twin, path, shallow=False):
                    shared.append(str(path))
            if shared:
                problems.append(
                    f"{first} and {second} share {_count(shared, 'image')} (the same file or a "
                    f"copy; a model would be evaluated on its training images): "
                    f"{_files(shared, root)}"
                )
    return problems


def data_warnings(result: CheckResult, coding: MaskCoding | None) -> list[str]:
    warnings = []
    found = set().union(*(report.raw_values for report in result.splits))
    index = coding is not None and coding.encoding == "index"
    if index and found == {"0", "255"} and decode(np.array([[255]]), coding)[0, 0] == VOID:
        warnings.append(
            "the masks hold only 0 and 255: as index masks 255 is void and only background is "
            "learnt; binary masks? set mask_encoding: binary"
        )
    train = next((report for report in result.splits if report.split == "train"), None)
    if train is not None:
        absent = [name for name, count in train.class_pixels.items() if count == 0]
        if absent:
            warnings.append(
                f"{len(absent)} of {len(train.class_pixels)} classes absent from train: "
                f"{_clip(', '.join(absent), 300)}"
            )
    return warnings


# --- the cache --------------------------------------------------------------------------------


def cached_scan(
    dataset,
    split: str,
    name: str,
    root: Path | None,
    workers: int | None,
    use_cache: bool,
    progress: Callable[[int], None] | None,
) -> SplitReport:
    if not use_cache:
        return scan_split(dataset, split, root, workers, progress)
    # a name may be a dataset file's path (data=path/to/dataset.yaml): its last word only
    label = re.sub(r"[^\w.-]+", "_", f"{name}-{split}")[-60:]
    file_name = f"{label}-{scan_key(dataset, name, split)[:32]}.json"
    folders = cache_folders(root)
    for folder in folders:
        report = _load(folder / file_name)
        if report is not None:
            return report
    report = scan_split(dataset, split, root, workers, progress)
    for folder in folders:  # the data root, else (not writable) the user's cache folder
        try:
            _write_atomic(folder / file_name, json.dumps(asdict(report)))
            break
        except OSError:
            continue
    return report


def scan_key(dataset, name: str, split: str) -> str:
    """A split's identity without reading a file: paths with their sizes and modification
    times, the coding and the class names."""
    files = [[str(p), *_stat(p)] for p in (*dataset.images, *dataset.labels)]
    key = {
        "version": CHECK_VERSION,
        "name": name,
        "split": split,
        "coding": asdict(dataset.coding),
        "classes": list(dataset.class_names),
        "files": files,
    }
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def cache_folders(root: Path | None) -> list[Path]:
    """<root>/cache/check-data, then the user's cache folder (for a read-only data root)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folders = [user / "seg-loss-search" / "check-data"]
    return [Path(root) / "cache" / "check-data", *folders] if root else folders


def _stat(path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _load(path: Path) -> SplitReport | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if set(doc) != {f.name for f in fields(SplitReport)}:
        return None
    return SplitReport(**{**doc, "seconds": 0.0, "cached": True})


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- what it prints ---------------------------------------------------------------------------


def describe_coding(coding: MaskCoding) -> str:
    if coding.encoding == "binary":
        return "binary masks: 0 background, 1 or 255 foreground"
    if coding.encoding == "rgb":
        return (
            f"rgb masks: {len(coding.colours)} class colours, "
            f"{len(coding.void_colours)} void colours"
        )
    words = [f"index masks: {coding.num_classes} classes"]
    if coding.void is not None:
        words.append(f"{coding.void} void")
    if coding.reduce_zero_label:
        words.append("reduce_zero_label (0 void, k -> k - 1)")
    if coding.class_map:
        words.append(f"a class map of {len(coding.class_map)} raw values")
    return ", ".join(words)


def format_report(result: CheckResult) -> str:
    """The report of `./launch.sh check-data` without its problem lines (the CLI prints those
    on stderr): per split the images, the class shares and the raw values; the warnings."""
    if result.in_memory:
        return f"check-data: {result.name} is generated in memory: there are no files to check"
    lines = [f"check-data: {result.name} at {result.root} ({result.coding})"]
    for report in result.splits:
        rate = report.images / max(report.seconds, 1e-9)
        how = f"{rate:,.0f} masks/s"
        if report.cached:
            how = "cached: files unchanged since the last check"
        lines.append(f"{report.split}: {report.images:,} images ({how})")
        total = sum(report.class_pixels.values()) + report.void_pixels + report.invalid_pixels
        shares = [f"{n} {_percent(c, total)}" for n, c in report.class_pixels.items() if c]
        shares.append(f"void {_percent(report.void_pixels, total)}")
        if report.invalid_pixels:
            shares.append(f"invalid {_percent(report.invalid_pixels, total)}")
        lines.append(_wrap("classes", shares))
        values = list(report.raw_values)
        more = [f"and {len(values) - 40} more"] if len(values) > 40 else []
        lines.append(_wrap("raw values", values[:40] + more))
    for warning in result.warnings:
        lines.append(textwrap.fill(f"warning: {warning}", width=100, subsequent_indent="    "))
    return "\n".join(lines)


def print_progress(split: str, total: int) -> Callable[[int], None]:
    """A progress callback: a `\\r` line on a terminal, else a plain line every 10 s."""
    terminal = sys.stderr.isatty()
    started = last = time.perf_counter()

    def show(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done < total and now - last < (0.25 if terminal else 10.0):
            return
        last = now
        line = f"[check-data] {split}: {done:,}/{total:,} masks ({done / (now - started):,.0f}/s)"
        if terminal:
            print(f"\r{line}", end="\n" if done == total else "", file=sys.stderr, flush=True)
        elif done < total:
            print(line, file=sys.stderr, flush=True)

    return show


def _percent(count: int, total: int) -> str:
    share = count / max(total, 1)
    return "<0.1%" if 0 < share < 0.001 else f"{100 * share:.1f}%"


def _wrap(label: str, items: list[str]) -> str:
    """`  label: a, b, c` wrapped at 100 characters between items, never inside one."""
    lines, line = [], f"  {label}:"
    for number, item in enumerate(items):
        word = f" {item}{',' if number < len(items) - 1 else ''}"
        if len(line) + len(word) > 100 and line.strip():
            lines.append(line)
            line = "   "
        line += word
    return "\n".join([*lines, line])


def _count(items: list, noun: str) -> str:
    return f"{len(items):,} {noun}{'' if len(items) == 1 else 's'}"


def _files(paths: list[str], root: Path | None) -> str:
    """The first few paths (relative to root when under it) and how many more."""
    shown = [_relative(path, root) for path in paths[:SHOWN]]
    rest = f" and {len(paths) - SHOWN:,} more" if len(paths) > SHOWN else ""
    return ", ".join(shown) + rest


def _relative(path: str, root: Path | None) -> str:
    if root is not None and Path(path).is_relative_to(root):
        return str(Path(path).relative_to(root))
    return str(path)


def _size(size: tuple[int, int] | None) -> str:
    return f"{size[0]}x{size[1]}" if size else "?"


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 4] + " ..."
