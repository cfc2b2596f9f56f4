"""Exact Euclidean distance transforms, on the device of the masks.

The distance-map losses (dpce, boundary, hausdorff in surrogates/losses.py) need, at every step,
distances to the boundaries of the GT and, for hausdorff, of the current prediction. Computing
them here, vectorised on the tensors' own device, keeps those losses drop-in `loss(logits,
target)` modules with no host round trip on a GPU and no change to the data loader (whose flips
run batch-wise on the device, after a loader-side map would have been made).

The transform is the separable exact one (squared distance = a 1-D pass down the columns, then a
min-plus pass along the rows, as in Felzenszwalb & Huttenlocher 2012): the column pass is two
cumulative max/min scans, the row pass a minimum over shifted copies of each row that stops at
the row's largest distance, O(H W d) work for distances up to d. It equals scipy's
distance_transform_edt (tests/test_field_losses.py). On a CPU, where no round trip is saved,
scipy's transform itself runs, map by map: 2-5x faster there than the torch one
(`./launch.sh bench losses --voc-step`).
"""

import numpy as np
import torch
from scipy import ndimage


def distance_to(mask: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from every pixel to the nearest True pixel of its map (0 on them).

    A map with no True pixel is all zero (it has no boundary; callers treat it as such). scipy
    on a CPU, torch_distance_to on any other device.

    Shape: mask (..., H, W) bool -> (..., H, W) float32."""
    if mask.device.type != "cpu":
        return torch_distance_to(mask)
    h, w = mask.shape[-2:]
    mask = mask | ~mask.any(-1, keepdim=True).any(-2, keepdim=True)  # an empty map: zeros
    outside = (~mask).reshape(-1, h, w).numpy()  # scipy: the distance to the nearest zero
    distance = np.empty(outside.shape, np.float32)
    for k, one in enumerate(outside):
        distance[k] = ndimage.distance_transform_edt(one)
    return torch.from_numpy(distance).view(mask.shape)


def torch_distance_to(mask: torch.Tensor) -> torch.Tensor:
    """distance_to in torch, vectorised over the maps on their device (a GPU: no host copy)."""
    h, w = mask.shape[-2:]
    if h < w:  # the row pass along the shorter side
        return torch_distance_to(mask.transpose(-1, -2)).transpose(-1, -2)
    mask = mask | ~mask.any(-1, keepdim=True).any(-2, keepdim=True)  # an empty map: zeros
    far = 2 * (h + w)  # farther than any pixel of the map
    rows = torch.arange(h, device=mask.device, dtype=torch.float32).view(h, 1)  # exact: < 2^24
    # column pass: distance to the nearest True pixel above or below in the same column
    above = torch.where(mask, rows, -far).cummax(dim=-2).values
    below = torch.where(mask, rows, h + far).flip(-2).cummin(dim=-2).values.flip(-2)
    column = torch.minimum(rows - above, below - rows)
    squared = _row_pass(column.square().reshape(-1, w))  # (rows of all maps, W)
    return squared.sqrt().reshape(mask.shape)


def _row_pass(g2: torch.Tensor) -> torch.Tensor:
    """d2[r, j] = min_k ((j - k)^2 + g2[r, k]): the exact squared distance of each pixel.

    Shift by shift (k = j -+ s); a row is done once s^2 exceeds its largest distance found so
    far, since no farther column can be nearer. Every 8 shifts the done rows are dropped (a host
    sync on a GPU, no copy to the host), so a row costs shifts up to its own farthest distance,
    not the batch's."""
    d2, rows = g2.clone(), torch.arange(len(g2), device=g2.device)
    g2_left, d2_left = g2, g2.clone()  # the rows still running
    w = g2.shape[1]
    for s in range(1, w):
        if s % 8 == 1:
            d2[rows] = d2_left
            running = d2_left.amax(1) > s * s
            rows, g2_left, d2_left = rows[running], g2_left[running], d2_left[running]
            if not len(rows):
                break
            shifted = torch.empty_like(g2_left[:, 1:])  # reused: a fresh buffer a shift costs
            # page faults on a CPU (bench/losses.py)
        candidate = torch.add(g2_left[:, :-s], s * s, out=shifted[:, : w - s])
        torch.minimum(d2_left[:, s:], candidate, out=d2_left[:, s:])  # the column s to the left
        candidate = torch.add(g2_left[:, s:], s * s, out=shifted[:, : w - s])
        torch.minimum(d2_left[:, :-s], candidate, out=d2_left[:, :-s])  # to the right
    d2[rows] = d2_left
    return d2


def inside_outside(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For pixels inside each map's region, the distance to the nearest pixel outside it; for
    pixels outside, the distance to the nearest pixel inside; 0 elsewhere. Both are zero on maps
    whose region is empty or the whole map: they have no boundary.

    Only maps with a boundary are transformed (a VOC image holds 2-3 of its 21 classes), which
    costs a host sync on a GPU to count them, no copy of the masks.

    Shape: mask (..., H, W) bool -> two (..., H, W) float32."""
    h, w = mask.shape[-2:]
    flat = mask.reshape(-1, h, w)
    count = flat.sum((1, 2))
    edged = ((count > 0) & (count < h * w)).nonzero().squeeze(1)  # maps with a boundary
    region = flat[edged]
    distance = distance_to(torch.cat([~region, region]))  # to the outside, to the inside
    inside = torch.zeros(flat.shape, device=mask.device)
    outside = torch.zeros(flat.shape, device=mask.device)
    inside[edged] = torch.where(region, distance[: len(edged)], 0.0)
    outside[edged] = torch.where(region, 0.0, distance[len(edged) :])
    return inside.view(mask.shape), outside.view(mask.shape)
