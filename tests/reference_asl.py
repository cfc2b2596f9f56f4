"""A plain, slow re-statement of the reference surrogates (SPEC A§2-3) for equivalence tests.

Written independently of surrogates/: full one-hot tensors, the reference's own t-solver with
its a == 0.5 special case, 2-D (non-separable) max-pool dilation, one-hot erosion for GT edges,
autograd everywhere. Too slow and memory-hungry for training; exact enough to test against.
"""

import torch
import torch.nn.functional as F

CURVES = {"miou": 2, "fwiou": 2, "biou": 2, "macc": 1, "gacc": 1, "bf1": 4}


def reference_curve(x, points):
    """Piecewise quadratic Bezier through (0,0), points..., (1,1), the reference solver (A§3.3)."""
    xy = (
        [(0.0, 0.0)] + [(points[i], points[i + 1]) for i in range(0, len(points), 2)] + [(1.0, 1.0)]
    )
    out = torch.zeros_like(x)
    for k in range(0, len(xy) - 1, 2):
        (x0, y0), (x1, y1), (x2, y2) = xy[k], xy[k + 1], xy[k + 2]
        selected = (x <= x2) if k == 0 else (x > x0) & (x <= x2)
        xs = torch.where(selected, x, torch.full_like(x, x2))
        u = (xs - x0) / (x2 - x0)
        a = (x1 - x0) / (x2 - x0)
        if a == 0.5:
            t = u
        else:
            t = (a - torch.sqrt(a * a + (1 - 2 * a) * u)) / (2 * a - 1)
        y = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * y1 + t**2 * y2
        out = torch.where(selected, y, out)
    return out


def _curves(theta, metric):
    n = CURVES[metric]
    size = len(theta) // n
    return [theta[i * size : (i + 1) * size] for i in range(n)]


def _gt_edges(y):
    """Per-class GT edges: pad the one-hot with 1, 3x3 erosion, edge where it changed (A§2.7)."""
    eroded = -F.max_pool2d(-F.pad(y, (1, 1, 1, 1), value=1.0), 3, stride=1)
    return (eroded != y).to(y.dtype)


def reference_loss(
    metric, theta, logits, target, num_classes, tolerance=5, drop_background=None, eps=1e-8
):
    c = num_classes
    if drop_background is None:
        drop_background = metric == "biou"
    p = torch.softmax(logits, dim=1)
    valid = (target >= 0) & (target < c)
    y = F.one_hot(torch.where(valid, target, c), c + 1)[..., :c].permute(0, 3, 1, 2).to(p.dtype)
    m = valid.unsqueeze(1).to(p.dtype)
    curves = [lambda x, pts=pts: reference_curve(x, pts) for pts in _curves(theta, metric)]
    k = 2 * tolerance + 1
    if metric in ("miou", "fwiou", "biou"):
        h_i, h_u = curves
        if metric == "biou":
            edges = _gt_edges(y)[:, 1:] if drop_background else _gt_edges(y)
            band = F.max_pool2d(edges, k, stride=1, padding=tolerance).amax(1, keepdim=True)
            m = m * (band > 0.5).to(p.dtype)
        inter = (m * h_i(p) * y).sum((0, 2, 3))
        union = (m * (h_u(p) + y - h_u(p) * y)).sum((0, 2, 3)) + eps
        if metric == "fwiou":
            f = y.sum((0, 2, 3))
            keep = f > 0
            return 1 - (f * inter / union)[keep].sum() / f[keep].sum()
        return 1 - (inter / union).mean()
    if metric == "macc":
        return 1 - ((curves[0](p) * y).sum((0, 2, 3)) / (y.sum((0, 2, 3)) + eps)).mean()
    if metric == "gacc":
        return 1 - (curves[0](p) * y).sum() / (y.sum() + eps)
    h1, h2, h3, h4 = curves
    gt_edges = _gt_edges(y)
    eroded = -F.max_pool2d(-F.pad(p, (1, 1, 1, 1), value=1.0), 3, stride=1)
    soft = h3(p) + h4(eroded) - h3(p) * h4(eroded) - h1(p) * h2(eroded)

    def dilate(x):
        return F.max_pool2d(x, k, stride=1, padding=tolerance)

    n_gt = gt_edges.sum((0, 2, 3)) + eps
    n_pr = soft.sum((0, 2, 3)) + eps
    precision = (soft * dilate(gt_edges)).sum((0, 2, 3)) / n_pr
    recall = (dilate(soft) * gt_edges).sum((0, 2, 3)) / n_gt
    f1 = 2 * precision * recall / (precision + recall + eps)
    keep = gt_edges.sum((0, 2, 3)) > 0
    if drop_background:
        keep[0] = False
    return 1 - f1[keep].mean()
