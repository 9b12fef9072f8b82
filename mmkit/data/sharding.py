"""Samplers that shard map-style datasets across DDP ranks with a world-size-free order.

Lightning replaces a DataLoader's default sampler with a padded ``DistributedSampler``
under DDP. That has two costs, which the data modules avoid by passing these
samplers themselves (Lightning leaves any ``DistributedSampler`` instance alone):

- **Evaluation.** Padding repeats samples so every rank gets as many; the repeats are
  counted twice in accuracy and loss. :class:`ShardSampler` gives rank ``r`` the
  indices ``r, r + world, ...`` without padding, so every sample counts once (ranks may
  differ by one batch, which evaluation allows: metrics sync once, at the epoch end).
- **Training.** A single process used to shuffle with the global RNG, DDP with a
  seeded permutation, so 1 and N processes saw different data. :func:`train_sampler`
  uses the seeded permutation at every world size: step ``k`` of a run with global
  batch ``B`` sees the same samples on 1 process as on N processes with ``B/N`` each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

from torch.utils.data import DistributedSampler


def rank_and_world(trainer: Any) -> tuple[int, int]:
    """``(global_rank, world_size)`` of ``trainer``; ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def global_seed() -> int:
    """The seed Lightning's own distributed sampler uses (``seed_everything``'s, or 0)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def train_sampler(dataset: Sized, trainer: Any, seed: int | None = None,
                  drop_last: bool = False) -> DistributedSampler:
    """A seeded shuffling sampler for this rank, reshuffled each epoch by Lightning
    (``set_epoch``); the global order does not depend on the number of processes."""
    rank, world = rank_and_world(trainer)
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                              seed=global_seed() if seed is None else seed, drop_last=drop_last)


class ShardSampler(DistributedSampler):
    """In-order, unpadded shard ``rank::world`` of a dataset (for validation and test)."""

    def __init__(self, dataset: Sized, trainer: Any) -> None:
        rank, world = rank_and_world(trainer)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), world))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
