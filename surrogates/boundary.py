"""Boundary operators shared by the exact metrics and the surrogates (SPEC A§1.2).

An edge pixel of class c is a pixel of class c with at least one in-image 8-neighbour that is not
of class c. The image border is not an edge; a pixel next to void (any label outside [0, C)) is.
Dilation with tolerance r is a (2r+1) x (2r+1) square window (Chebyshev distance <= r).

Why bit sets: "is an edge of class c within r of this pixel" is needed for every pixel and
class, and a dilation of C one-hot maps costs C passes of a max filter per direction. With the
classes of a pixel's edges as bits of one integer word, dilating all classes at once is an OR
over the window, C-independent: ~20x less work than the one-hot max filter at C = 21
(bench/metrics.py, bench/losses.py). These passes are memory-bound, so words and labels use the
narrowest integer type that holds them: one int32 word for VOC's 21 or Cityscapes' 19 classes,
one uint8 for shapes' 7, int64 words of 63 classes each beyond 63 classes.
"""

import torch

# The four neighbour offsets (dy, dx) that, used in both directions, cover all 8 neighbours.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))
# classes per word of each word type; the sign bit of the signed types stays clear
_CLASSES_PER_WORD = {torch.uint8: 8, torch.int16: 15, torch.int32: 31, torch.int64: 63}
CLASSES_PER_WORD = _CLASSES_PER_WORD[torch.int64]  # beyond 63 classes: several int64 words


def word_type(num_classes: int) -> torch.dtype:
    """The narrowest word type that holds num_classes bits, else int64 (several words)."""
    return next((t for t, bits in _CLASSES_PER_WORD.items() if num_classes <= bits), torch.int64)


def compact_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels in [0, num_classes] in the narrowest integer type that holds them (for the
    memory-bound neighbour comparisons of label_edges)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if num_classes <= torch.iinfo(dtype).max:
            return labels.to(dtype)
    return labels


def _shifted(dy: int, dx: int, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (a, b) such that b is the pixel at offset (dy, dx) from a, both inside the image."""
    ys_a, ys_b = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        xs_a, xs_b = slice(0, w - dx), slice(dx, w)
    else:
        xs_a, xs_b = slice(-dx, w), slice(0, w + dx)
    return (ys_a, xs_a), (ys_b, xs_b)


def label_edges(labels: torch.Tensor) -> torch.Tensor:
    """Bool map of pixels that differ from at least one in-image 8-neighbour.

    labels: (..., H, W) integer map in which every invalid label is one value (e.g. C), so a class
    pixel next to void is an edge. The class an edge pixel belongs to is its own label."""
    h, w = labels.shape[-2:]
    edges = torch.zeros_like(labels, dtype=torch.bool)
    for dy, dx in _HALF_NEIGHBOURHOOD:
        (ya, xa), (yb, xb) = _shifted(dy, dx, h, w)
        differ = labels[..., ya, xa] != labels[..., yb, xb]
        edges[..., ya, xa] |= differ
        edges[..., yb, xb] |= differ
    return edges


def dilate_or(x: torch.Tensor, radius: int) -> torch.Tensor:
    """OR of x over the (2r+1) x (2r+1) square around each pixel (zero outside the image).

    x: (..., H, W) bool or integer bit sets. Each direction is a window of width k = 2r+1 built by
    doubling (widths 1, 2, 4, ... k), so ~2 log2(k) ORs instead of 2k."""
    for dim in (-1, -2):
        x = _window_or(x, 2 * radius + 1, dim)
    return x


def _window_or(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Centred window OR of odd width k along dim."""
    r, size = k // 2, x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = r
    pad = x.new_zeros(pad_shape)
    x = torch.cat([pad, x, pad], dim)  # index j <-> pixel j - r
    width = 1  # invariant: x[j] is the OR of the padded input over [j, j + width)
    while width < k:
        step = min(width, k - width)
        length = x.shape[dim] - step
        x = x.narrow(dim, 0, length) | x.narrow(dim, step, length)
        width += step
    return x.narrow(dim, 0, size)  # window [j - r, j + r] of pixel j


def class_bits(labels: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) labels where mask -> (N, words, H, W) bit sets of type word_type(num_classes):
    bit c at the pixels of class c inside mask; beyond 63 classes, bit c % 63 of int64 word
    c // 63."""
    dtype = word_type(num_classes)
    if num_classes <= _CLASSES_PER_WORD[dtype]:
        bit = torch.ones((), dtype=dtype, device=labels.device) << labels.to(dtype)
        return torch.where(mask, bit, 0).unsqueeze(1)  # labels outside mask may be any class
    words = -(-num_classes // CLASSES_PER_WORD)
    labels = labels.long()
    bit = 1 << (labels % CLASSES_PER_WORD)
    bits = torch.zeros(labels.shape[0], words, *labels.shape[1:], dtype=torch.int64,
                       device=labels.device)  # fmt: skip
    word = (labels // CLASSES_PER_WORD).clamp(0, words - 1).unsqueeze(1)
    return bits.scatter_(1, word, torch.where(mask, bit, 0).unsqueeze(1))


def has_class_bit(bits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, words, H, W) bit sets, (N, H, W) labels in [0, C) -> bool: the pixel's own class bit."""
    if bits.shape[1] == 1:
        return ((bits.squeeze(1) >> labels.to(bits.dtype)) & 1).bool()
    labels = labels.long()
    word = bits.gather(1, (labels // CLASSES_PER_WORD).unsqueeze(1)).squeeze(1)
    return ((word >> (labels % CLASSES_PER_WORD)) & 1).bool()


def class_mask(bits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, words, H, W) bit sets -> (N, C, H, W) 0/1 of the word type, one channel per entry of
    classes. Pure tensor ops, so it fuses into a compiled kernel (surrogates/surrogate.py)."""
    per_word = _CLASSES_PER_WORD[bits.dtype] if bits.shape[1] == 1 else CLASSES_PER_WORD
    word = bits.index_select(1, classes // per_word)
    return (word >> (classes % per_word).to(bits.dtype).view(1, -1, 1, 1)) & 1
