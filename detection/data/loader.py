"""Data loaders: sharded shuffling whose order is a function of (seed, epoch), aspect-ratio grouped batches,
collation to lists (images keep their own sizes; the model pads).

Training batches are never smaller than requested: batch-statistics BatchNorm cannot train on one image, so the
last batch of an epoch is completed with images from the start of the epoch's order, and an unreadable image is
replaced by the next readable one (both counted and logged by the trainer).
"""

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share an aspect-ratio group (landscape / portrait), so padding wastes little.

    Indices arrive in the order of `sampler`; each group fills its own buffer and a batch is emitted when a buffer
    holds `batch_size` indices. Leftovers of all groups are emitted last, in sampler order, in chunks of
    `batch_size`; so the number of batches is always ceil(len(sampler) / batch_size), the same on every rank.
    With `fill_last`, a last chunk shorter than `batch_size` is completed with the first indices of the epoch's
    order (`filled_per_epoch` of them), so every batch has `batch_size` images.
    """

    def __init__(self, sampler: Sampler[int], group_ids: list[int], batch_size: int, fill_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size
        self.fill_last = fill_last
        self.start_batch = 0  # batches of this epoch to skip (a run resumed in the middle of an epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for position, batch in enumerate(self._batches()):
            if position >= self.start_batch:
                yield batch

    def _batches(self) -> Iterator[list[int]]:
        buffers: dict[int, list[tuple[int, int]]] = {}  # group -> [(position in sampler order, index)]
        order = list(self.sampler)
        for position, index in enumerate(order):
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append((position, index))
            if len(buffer) == self.batch_size:
                yield [i for _, i in buffer]
                buffer.clear()
        leftovers = [i for _, i in sorted(pair for buffer in buffers.values() for pair in buffer)]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start:start + self.batch_size]
            if self.fill_last and len(batch) < self.batch_size:
                batch += [order[k % len(order)] for k in range(self.batch_size - len(batch))]
            yield batch

    def __len__(self) -> int:
        """Batches left in this epoch (all of them unless it starts at start_batch)."""
        return max(self.num_batches() - self.start_batch, 0)

    def num_batches(self) -> int:
        """Batches in a whole epoch."""
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def filled_per_epoch(self) -> int:
        """Indices repeated from the start of the epoch to complete its last batch (0 without fill_last)."""
        return (-len(self.sampler)) % self.batch_size if self.fill_last else 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class ReplaceUnreadable(Dataset):
    """Training view of a dataset whose samples may be None (an unreadable image): such a sample is replaced by the
    next readable one in index order (at most `max_tries` looked at), so batches keep their size. Samples become
    (image, target, number of unreadable images replaced), or None when no readable image was found."""

    def __init__(self, dataset, max_tries: int = 16):
        self.dataset = dataset
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        count = len(self.dataset)
        for offset in range(min(count, self.max_tries)):
            sample = self.dataset[(index + offset) % count]
            if sample is not None:
                return (*sample, offset)
        return None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def aspect_groups(self) -> list[int]:
        return self.dataset.aspect_groups()


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict], int]:
    """Drop unreadable samples (None) and return (images, targets, number of unreadable images dropped or
    replaced). Samples are (image, target) or ReplaceUnreadable's (image, target, replaced)."""
    kept = [sample for sample in batch if sample is not None]
    images = [sample[0] for sample in kept]
    targets = [sample[1] for sample in kept]
    replaced = sum(sample[2] for sample in kept if len(sample) > 2)
    return images, targets, len(batch) - len(kept) + replaced


def build_train_loader(dataset, images_per_gpu: int, workers: int, seed: int, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """Shuffled, sharded (one shard per rank; the shuffle is seeded with seed + epoch), aspect-ratio grouped, full
    batches only (the last one completed, unreadable images replaced). Call `set_loader_epoch(loader, epoch)`
    before iterating each epoch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    batch_sampler = GroupedBatchSampler(sampler, dataset.aspect_groups(), images_per_gpu, fill_last=True)
    return DataLoader(ReplaceUnreadable(dataset), batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)


def build_test_loader(dataset, images_per_gpu: int, workers: int, rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    """In-order shards; DistributedSampler pads with repeated images, which evaluation de-duplicates by image id."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=images_per_gpu, sampler=sampler, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0), pin_memory=pin_memory)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Make the shuffle and the per-sample augmentation of this epoch a function of (seed, epoch), and start the
    epoch at batch `start_batch` (the batches before it are skipped without being loaded).

    The loader's generator (worker base seeds) is reseeded too, so creating the iterator never touches the global
    torch RNG and any worker-side randomness repeats on resume."""
    if not 0 <= start_batch <= loader.batch_sampler.num_batches():
        raise ValueError(f"start_batch: expected 0..{loader.batch_sampler.num_batches()}, got {start_batch}")
    loader.batch_sampler.start_batch = start_batch
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    loader.generator.manual_seed(loader.batch_sampler.sampler.seed * 100003 + epoch)
