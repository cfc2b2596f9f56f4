"""Mask files -> class ids: how every file-based dataset reads its labels, and what
`./launch.sh check-data` checks them with.

A `MaskCoding` says what the raw values of a dataset's masks mean; `read_mask` reads a mask file
as it is stored and `decode` turns it into class ids 0 .. num_classes-1, VOID (255), or
INVALID (-1) where a raw value means nothing in the coding (the readers refuse those, check-data
counts them). The encodings are the field's:

    index    a single-channel PNG (a palette PNG's indices are the ids, as in VOC): pixel = class
             id; `void` (default 255) is void; `reduce_zero_label` (ADE20K) makes 0 void and
             k -> k - 1 first, as MMSegmentation does; `class_map` maps raw values to classes
             (or 255), and a raw value it does not name is invalid
    binary   0 = background, 1 or 255 = foreground (the two ways binary masks are saved)
    rgb      a colour mask: each class has a colour (`colours`), `void_colours` are void
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

VOID = 255
INVALID = -1
ENCODINGS = ("index", "binary", "rgb")


@dataclass(frozen=True)
class MaskCoding:
    num_classes: int
    encoding: str = "index"
    void: int | None = VOID  # the raw value that means void (index encoding); None: none does
    reduce_zero_label: bool = False
    class_map: tuple[tuple[int, int], ...] = ()  # (raw, class or VOID) pairs; () = identity
    colours: tuple[tuple[int, int, int], ...] = ()  # rgb: the colour of class c at position c
    void_colours: tuple[tuple[int, int, int], ...] = ()  # rgb: colours that are void


def read_mask(path: str | Path) -> np.ndarray:
    """The mask file as stored: (H, W) integers for a single-channel or palette image (the
    palette's indices, not its colours), (H, W, 3) uint8 for an RGB(A) image. A ValueError names
    a file PIL cannot read."""
    try:
        with PIL.Image.open(path) as mask:
            if mask.mode in ("RGB", "RGBA"):
                return np.array(mask.convert("RGB"))
            if mask.mode == "LA":  # grey + alpha: the grey channel
                return np.array(mask.getchannel(0))
            return np.array(mask)
    except (OSError, SyntaxError) as error:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"cannot read mask {path}: {error}") from error


def decode(raw: np.ndarray, coding: MaskCoding) -> np.ndarray:
    """Class ids (int64, (H, W)) of a raw mask: 0 .. num_classes-1, VOID, INVALID."""
    if coding.encoding == "rgb":
        return _decode_rgb(raw, coding)
    if raw.ndim != 2:
        raise ValueError(
            f"a {coding.encoding} mask has one channel, got shape {raw.shape} "
            "(a colour mask needs mask_encoding: rgb and the class colours)"
        )
    values = raw.astype(np.int64)
    if coding.encoding == "binary":
        out = np.full(values.shape, INVALID, dtype=np.int64)
        out[values == 0] = 0
        out[(values == 1) | (values == 255)] = 1
        return out
    void = np.zeros(values.shape, dtype=bool) if coding.void is None else values == coding.void
    if coding.reduce_zero_label:  # MMSegmentation: 0 -> 255, then k -> k - 1 (void stays void)
        void |= values == 0
        values = values - 1
    if coding.class_map:
        size = max(int(values.max(initial=0)), *(r for r, _ in coding.class_map)) + 1
        table = np.full(size, INVALID, dtype=np.int64)
        for raw_value, class_id in coding.class_map:
            table[raw_value] = class_id
        values = table[np.clip(values, 0, None)]  # -1 (a reduced 0) is void already
    values = np.where((values >= coding.num_classes) & (values != VOID), INVALID, values)
    values = np.where(values < 0, INVALID, values)
    values[void] = VOID
    return values


def _decode_rgb(raw: np.ndarray, coding: MaskCoding) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[2] != 3:
        raise ValueError(f"an rgb mask has three channels, got shape {raw.shape}")
    if not coding.colours:
        raise ValueError("mask_encoding rgb needs the class colours (classes: ... colour:)")
    packed = _pack(raw)
    keys = np.array([_pack_one(c) for c in (*coding.colours, *coding.void_colours)])
    ids = np.array([*range(len(coding.colours)), *[VOID] * len(coding.void_colours)])
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    at = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    return np.where(keys[at] == packed, ids[at], INVALID).astype(np.int64)


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _pack_one(colour: tuple[int, int, int]) -> int:
    r, g, b = colour
    return (r << 16) | (g << 8) | b


def raw_values(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct raw values of a mask and their pixel counts; a colour mask's values are its
    colours packed as 0xRRGGBB."""
    flat = _pack(raw) if raw.ndim == 3 else raw.astype(np.int64)
    return np.unique(flat, return_counts=True)


def describe_value(value: int, encoding: str) -> str:
    """A raw value as check-data prints it: the number, or an rgb colour (r, g, b)."""
    if encoding == "rgb":
        return f"({value >> 16}, {(value >> 8) & 255}, {value & 255})"
    return str(value)
