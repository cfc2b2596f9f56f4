"""The torch.compile'd kernels give the eager values (the rest of the suite runs eager)."""

import pytest
import torch
from helpers import blob_target, random_logits

from surrogates import PRESETS, SurrogateLoss, fused


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(fused, "_enabled", True)


@pytest.mark.parametrize("metric", ["miou", "macc", "biou", "bf1"])
@pytest.mark.parametrize("classes", [5, 3])  # all classes in the batch, or some (bf1 skips)
def test_compiled_surrogate_equals_eager(metric, classes, compiled, monkeypatch):
    logits = random_logits(2, 5, 20, 24, dtype=torch.float32).requires_grad_(True)
    target = blob_target(2, 20, 24, classes)
    # the boundary losses with the region guard: identity curves (no table) compile too
    region_weight = 0.5 if metric in ("biou", "bf1") else 0.0
    loss = SurrogateLoss(metric, PRESETS[f"asl-voc-{metric}"], 5, region_weight=region_weight)
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert fused._enabled, "compilation failed on this machine"
    monkeypatch.setattr(fused, "_enabled", False)
    eager_value = loss(logits, target)
    (eager_grad,) = torch.autograd.grad(eager_value, logits)
    assert abs(float(value.detach() - eager_value.detach())) < 1e-6
    assert torch.allclose(grad, eager_grad, atol=1e-7, rtol=1e-4)
