"""Loaders that feed the training engine: `train_loader`, an endless stream addressed by
iteration (resumable exactly, whatever the number of workers), and `eval_loader`, one ordered
pass."""

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


class _SeededItems(Dataset):
    """Items addressed by (index, seed): the random transforms of each sample run under their
    own seed, so a sample's augmentation depends on neither the worker that loads it nor on
    where training was resumed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list:
        """A whole batch (DataLoader's batched fetch) under one fork of the global RNG."""
        samples = []
        with torch.random.fork_rng(devices=[]):
            for index, seed in items:
                # the CPU generator alone: torch.manual_seed also visits every accelerator
                # backend, ~0.1 ms a call, a fifth of a proxy step's data time
                torch.default_generator.manual_seed(seed)
                samples.append(self.dataset[index])
        return samples


class _EndlessBatches:
    """Batches of (index, seed) for iterations start, start + 1, ...: the concatenation of
    per-epoch permutations, each drawn from (seed, epoch), cut into batches. Batch k is the
    same whether training started at 0 or resumed at k."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_iteration: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.start = seed, start_iteration
        self.rank, self.world_size = rank, world_size

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start * self.batch_size
        epoch, offset = divmod(position, self.num_items)
        order = self._permutation(epoch)
        while True:
            batch = []
            for _ in range(self.batch_size):
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._permutation(epoch)
                sample_seed = (self.seed * 1_000_003 + position) % 2**63
                batch.append((order[offset], sample_seed))
                offset, position = offset + 1, position + 1
            yield batch[self.rank :: self.world_size]  # this process's share (DDP)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_iteration: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Endless loader for iteration-based training; deterministic from (seed, iteration).

    Under DDP, batch_size is the global batch: process `rank` of `world_size` gets every
    world_size-th item of it, so the images seen do not depend on the number of processes."""
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split over {world_size} processes")
    return DataLoader(
        _SeededItems(dataset),
        batch_sampler=_EndlessBatches(
            len(dataset), batch_size, seed, start_iteration, rank, world_size
        ),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # its own generator: creating the iterator then leaves the global RNG (dropout) alone,
        # which keeps a resumed run on the same random stream as an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    dataset: Dataset, batch_size: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )
