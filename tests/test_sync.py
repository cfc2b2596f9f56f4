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
    # class 4 only on rank 0's half: rank 1 must still count its soft edges of class 4 (bf1
    # computes the classes with GT edges in the batch of any process)
    target[2:] = torch.where(target[2:] == 4, 3, target[2:])
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


def strided_worker(rank, world_size, init_file, logits, target, out, group_sizes=(2, None)):
    """One DDP process with its share of the global batch, dealt as data.train_loader deals it:
    every world_size-th image."""
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    for metric in METRICS:
        for group_size in group_sizes:
            loss = SurrogateLoss(metric, f"asl-voc-{metric}", 5, tolerance=2, group_size=group_size)
            z = logits[rank::world_size].clone().requires_grad_(True)
            value = loss(z, target[rank::world_size])
            value.backward()
            mean = value.detach().clone()
            dist.all_reduce(mean)  # the loss a DDP run logs: the mean over processes
            out[f"{metric}/{group_size}/{rank}/value"] = mean / world_size
            out[f"{metric}/{group_size}/{rank}/grad"] = z.grad / world_size  # DDP's average
    dist.destroy_process_group()


def test_a_loss_group_size_makes_two_processes_train_like_one(tmp_path):
    logits = random_logits(8, 5, 16, 16)
    target = blob_target(8, 16, 16, 5)
    out = mp.Manager().dict()
    mp.spawn(strided_worker, args=(2, tmp_path / "init", logits, target, out), nprocs=2)
    for metric in METRICS:
        # one process, the whole global batch of 8: 4 groups of 2 (images j, j + 4 together)
        loss = SurrogateLoss(metric, f"asl-voc-{metric}", 5, tolerance=2, group_size=2)
        z = logits.clone().requires_grad_(True)
        whole = loss(z, target)
        whole.backward()
        for rank in range(2):
            assert float(out[f"{metric}/2/{rank}/value"]) == pytest.approx(float(whole), abs=1e-6)
            grad = out[f"{metric}/2/{rank}/grad"]
            assert torch.allclose(grad, z.grad[rank::2], atol=1e-9), metric
        # without a group size each process pools its 4 images: another loss than one process's
        pooled = SurrogateLoss(metric, f"asl-voc-{metric}", 5, tolerance=2)(logits, target)
        assert abs(float(out[f"{metric}/None/0/value"]) - float(pooled)) > 1e-4, metric


@pytest.mark.parametrize("world_size,group_size", [(2, 8), (4, 4)])
def test_a_loss_group_spread_over_processes_is_the_one_process_loss(
    tmp_path, world_size, group_size
):
    """8 images dealt by rank stride: on 2 processes one group of 8 holds both processes' images,
    on 4 processes (2 images each) the group {0, 2, 4, 6} spans ranks 0 and 2. Each process
    gathers the per-image sums; the loss and DDP's averaged gradient are one process's."""
    logits = random_logits(8, 5, 16, 16)
    target = blob_target(8, 16, 16, 5)
    target[1::2] = torch.where(target[1::2] == 4, 3, target[1::2])  # class 4 on some ranks only
    out = mp.Manager().dict()
    args = (world_size, tmp_path / "init", logits, target, out, (group_size,))
    mp.spawn(strided_worker, args=args, nprocs=world_size)
    for metric in METRICS:
        loss = SurrogateLoss(metric, f"asl-voc-{metric}", 5, tolerance=2, group_size=group_size)
        z = logits.clone().requires_grad_(True)
        whole = loss(z, target)
        whole.backward()
        for rank in range(world_size):
            value = out[f"{metric}/{group_size}/{rank}/value"]
            assert float(value) == pytest.approx(float(whole), abs=1e-6), metric
            grad = out[f"{metric}/{group_size}/{rank}/grad"]
            assert torch.allclose(grad, z.grad[rank::world_size], atol=1e-9), metric


def test_group_size_pools_groups_of_images_and_one_is_per_image():
    logits, target = random_logits(6, 5, 12, 12), blob_target(6, 12, 12, 5)
    for metric in ("miou", "gacc", "bf1"):
        grouped = SurrogateLoss(metric, "identity", 5, tolerance=1, group_size=2)
        plain = SurrogateLoss(metric, "identity", 5, tolerance=1)
        # batch of 6, groups of 2: images {0, 3}, {1, 4}, {2, 5}
        by_hand = [plain(logits[[k, k + 3]], target[[k, k + 3]]) for k in range(3)]
        assert float(grouped(logits, target)) == pytest.approx(float(sum(by_hand) / 3), abs=1e-6)
        per_image = SurrogateLoss(metric, "identity", 5, tolerance=1, per_image=True)
        one = SurrogateLoss(metric, "identity", 5, tolerance=1, group_size=1)
        assert float(per_image(logits, target)) == float(one(logits, target))
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        SurrogateLoss("miou", "identity", 5, group_size=0)
    with pytest.raises(ValueError, match="sync=True pools"):
        SurrogateLoss("miou", "identity", 5, group_size=8, sync=True)
