"""sync=True: two gloo processes on two halves of a batch see the whole-batch surrogate."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import blob_target, random_logits

from surrogates import SurrogateLoss

METRICS = ("miou", "macc", "bf1")


def halves_worker(rank, world_size, init_file, logits, target, out):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    half = logits.shape[0] // world_size
    for metric in METRICS:
        loss = SurrogateLoss(metric, f"asl-voc-{metric}", 5, sync=True, tolerance=2)
        z = logits[rank * half : (rank + 1) * half].clone().requires_grad_(True)
        value = loss(z, target[rank * half : (rank + 1) * half])
        value.backward()
        out[f"{metric}/{rank}/value"] = value.detach()
        out[f"{metric}/{rank}/grad"] = z.grad
    dist.destroy_process_group()


def test_sync_on_two_processes_equals_the_whole_batch(tmp_path):
    logits = random_logits(4, 5, 16, 16)
    target = blob_target(4, 16, 16, 5)
    out = mp.Manager().dict()
    mp.spawn(halves_worker, args=(2, tmp_path / "init", logits, target, out), nprocs=2)
    for metric in METRICS:
        loss = SurrogateLoss(metric, f"asl-voc-{metric}", 5, tolerance=2)
        z = logits.clone().requires_grad_(True)
        whole = loss(z, target)
        whole.backward()
        for rank in range(2):
            assert float(out[f"{metric}/{rank}/value"]) == pytest.approx(float(whole), abs=1e-12)
            # backward all-reduces, so each rank holds world_size x its share; DDP's averaging
            # of parameter gradients then gives exactly the whole-batch gradient
            expected = 2 * z.grad[rank * 2 : (rank + 1) * 2]
            assert torch.allclose(out[f"{metric}/{rank}/grad"], expected, atol=1e-12), metric


def test_sync_without_process_group_is_the_plain_loss():
    logits, target = random_logits(2, 5, 8, 8), blob_target(2, 8, 8, 5)
    synced = SurrogateLoss("miou", "identity", 5, sync=True)(logits, target)
    assert float(synced) == float(SurrogateLoss("miou", "identity", 5)(logits, target))
