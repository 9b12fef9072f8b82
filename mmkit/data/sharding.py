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
- **Resume.** :class:`ResumableSampler` skips the batches a run resumed mid-epoch has
  already trained on, and (with :class:`SeededSamples`) seeds each sample's augmentation
  by (seed, epoch, index) instead of drawing it from the global RNG.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def rank_and_world(trainer: Any) -> tuple[int, int]:
    """``(global_rank, world_size)`` of ``trainer``; ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def global_seed() -> int:
    """The seed Lightning's own distributed sampler uses (``seed_everything``'s, or 0)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def train_sampler(dataset: Sized, trainer: Any, seed: int | None = None,
                  drop_last: bool = False, seeded_samples: bool = False) -> ResumableSampler:
    """A seeded shuffling sampler for this rank, reshuffled each epoch by Lightning
    (``set_epoch``); the global order does not depend on the number of processes.
    ``seeded_samples`` makes it yield ``(index, seed)`` pairs for :class:`SeededSamples`."""
    rank, world = rank_and_world(trainer)
    return ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                            seed=global_seed() if seed is None else seed, drop_last=drop_last,
                            seeded_samples=seeded_samples)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the random augmentation of sample ``index`` in ``epoch``."""
    return hash((seed, epoch, index)) & (2**63 - 1)  # int tuples hash the same in every process


class ResumableSampler(DistributedSampler):
    """The seeded training sampler, resumable mid-epoch and independent of the global RNG.

    - :meth:`skip_batches` drops the first batches of the next ``__iter__`` only (a run
      resumed mid-epoch continues with the batches it has not seen; see
      :class:`mmkit.cli.resume.ExactResume`).
    - With ``seeded_samples`` it yields ``(index, seed)`` pairs: :class:`SeededSamples`
      draws the sample's random augmentation from ``seed`` = :func:`sample_seed` (sampler
      seed, epoch, index), so loading data (in the main process or in workers, with or
      without prefetching) never consumes the global RNG that dropout and MixUp use.
    """

    def __init__(self, *args: Any, seeded_samples: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeded_samples = seeded_samples
        self._skip = 0

    def skip_batches(self, batches: int, batch_size: int | None) -> None:
        """Start the next ``__iter__`` after ``batches`` batches of ``batch_size`` indices
        (``None``: each index is a batch, as with ``DataLoader(batch_size=None)``)."""
        size = 1 if batch_size is None else batch_size
        if batches < 0 or size <= 0:
            raise ValueError(f"cannot skip {batches} batches of size {batch_size}")
        self._skip = batches * size

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        indices = list(super().__iter__())[skip:]
        if not self.seeded_samples:
            return iter(indices)
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])


class SeededSamples(Dataset):
    """A view of ``dataset`` indexed by ``(index, seed)``: ``dataset[index]`` runs with the
    CPU RNG seeded by ``seed`` and the global RNG state left as it was; a plain ``index``
    reads ``dataset[index]`` directly."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the CPU RNG is restored on exit
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


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


class RNGNeutralLoader(DataLoader):
    """A ``DataLoader`` whose ``iter()`` leaves the global CPU RNG as it was (PyTorch draws each
    iterator's worker base seed from it). Lightning creates iterators at points a resumed run
    does not repeat (the validation of an epoch finished before the checkpoint), so each
    draw would shift dropout's random stream; with this, data loading draws nothing from it."""

    def __iter__(self) -> Any:
        with torch.random.fork_rng(devices=[]):
            return super().__iter__()
