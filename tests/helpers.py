"""Small data makers shared by the tests."""

import torch
import torch.nn.functional as F


def blob_target(n, h, w, num_classes, seed=0, void_fraction=0.05, cell=4):
    """Label maps with blob-shaped regions (a coarse random grid upsampled with nearest), so
    boundaries look like real ones, plus scattered void (255) pixels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (n, 1, -(-h // cell), -(-w // cell)), generator=g)
    target = F.interpolate(coarse.float(), scale_factor=cell, mode="nearest")[:, 0, :h, :w].long()
    void = torch.rand(n, h, w, generator=g) < void_fraction
    return target.masked_fill(void, 255)


def random_logits(n, c, h, w, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
