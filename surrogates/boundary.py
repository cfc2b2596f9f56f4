"""Boundary operators shared by the exact metrics and the surrogates (SPEC A§1.2).

An edge pixel of class c is a pixel of class c with at least one in-image 8-neighbour that is not
of class c. The image border is not an edge; a pixel next to void (any label outside [0, C)) is.
Dilation with tolerance r is a (2r+1) x (2r+1) square max filter (Chebyshev distance <= r).
"""

import torch
import torch.nn.functional as F

# The four neighbour offsets (dy, dx) that, used in both directions, cover all 8 neighbours.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


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


def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max filter over a (2r+1) x (2r+1) square, as two 1-D passes (2(2r+1) instead of (2r+1)^2
    comparisons). x: (N, C, H, W) float. Differentiable: gradients reach each window's maximum."""
    if radius <= 0:
        return x
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))


def erode3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 min filter ignoring out-of-image pixels (= padding with 1.0 for values in [0,1])."""
    return -F.max_pool2d(-x, 3, stride=1, padding=1)


def one_hot_masked(labels: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) labels where mask is True -> (N, C, H, W) float one-hot, zero elsewhere."""
    n, h, w = labels.shape
    out = torch.zeros(n, num_classes + 1, h, w, device=labels.device)
    index = torch.where(mask, labels, num_classes).clamp_(0, num_classes)
    out.scatter_(1, index.unsqueeze(1), 1.0)
    return out[:, :num_classes]
