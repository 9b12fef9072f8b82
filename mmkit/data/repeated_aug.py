"""DeiT's repeated augmentation: every sample is shown ``repeats`` times per epoch, each copy
with its own random augmentation, and the copies land on different processes.

This follows DeiT's ``RASampler`` (``samplers.py`` in facebookresearch/deit):

- the epoch's permutation is repeated element-wise (``i, i, i, j, j, j, ...``), padded at
  the end with its own head to a multiple of the world size, and dealt out round-robin, so
  rank ``r`` takes positions ``r, r + world, ...``: consecutive copies of a sample go to
  consecutive ranks;
- each rank stops after ``(len(dataset) // 256 * 256) // world`` samples, about as many as a
  plain epoch: an epoch sees roughly ``1 / repeats`` of the distinct samples, each ``repeats``
  times (the rest are seen in other epochs).

What mmkit adds, under the contract of :class:`~mmkit.data.sharding.ResumableSampler`:

- the permutation is seeded by ``seed + epoch`` (as ``DistributedSampler`` and mmkit's other
  training samplers; DeiT seeds by the epoch alone), and the global stream does not depend on
  the number of processes: step ``k`` of a run with global batch ``B`` sees the same samples on
  1 process as on N processes with ``B/N`` each (when N divides the truncated length);
- :meth:`skip_batches` resumes mid-epoch, and with ``seeded_samples`` it yields
  ``(index, seed)`` pairs whose seed depends on the stream position too, so the ``repeats``
  copies of one sample get different augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import torch

from .sharding import ResumableSampler, global_seed, rank_and_world

#: DeiT rounds the epoch length down to a multiple of this many samples (before dividing it
#: among the processes).
DEIT_MULTIPLE = 256


def copy_seed(seed: int, epoch: int, index: int, position: int) -> int:
    """A 63-bit augmentation seed for the copy of sample ``index`` at ``position`` of the
    epoch's global stream (int tuples hash the same in every process)."""
    return hash((seed, epoch, index, position)) & (2**63 - 1)


class RepeatedAugSampler(ResumableSampler):
    """DeiT's repeated-augmentation training sampler for rank ``rank`` of ``num_replicas``.

    Args:
        dataset: the training set (only its length is read).
        num_replicas: the number of processes (the world size).
        rank: this process's global rank.
        repeats: copies of each sample in the stream (DeiT: 3); 1 is plain shuffling with
            DeiT's epoch length.
        seed: the base seed of the permutations (the epoch is added).
        seeded_samples: yield ``(index, seed)`` pairs for
            :class:`~mmkit.data.sharding.SeededSamples`.
        multiple: the global epoch length is rounded down to a multiple of this (DeiT: 256).
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, *, repeats: int = 3,
                 seed: int = 0, seeded_samples: bool = False, multiple: int = DEIT_MULTIPLE) -> None:
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1 (DeiT uses 3), got {repeats!r}")
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False, seeded_samples=seeded_samples)
        self.repeats, self.multiple = repeats, multiple
        size = len(dataset)
        self.total_size = math.ceil(size * repeats / num_replicas) * num_replicas  # padded stream
        self.num_samples = (size // multiple * multiple) // num_replicas  # what each rank yields
        if self.num_samples == 0:
            least = multiple * math.ceil(num_replicas / multiple)
            raise ValueError(
                f"repeated augmentation needs at least {least} training samples on {num_replicas} "
                f"process(es) (DeiT keeps len // {multiple} * {multiple} per epoch), got {size}; "
                "set data.repeated_aug=1")

    def global_stream(self) -> list[int]:
        """The epoch's untruncated global stream: the seeded permutation with every index repeated
        ``repeats`` times in a row, padded with its own head to ``total_size``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)  # type: ignore[arg-type]
        stream = order.repeat_interleave(self.repeats).tolist()
        padding = self.total_size - len(stream)
        cycles = math.ceil(padding / len(stream)) if stream else 0
        return stream + (stream * cycles)[:padding]

    def positions(self, truncate: bool = True) -> range:
        """This rank's positions in :meth:`global_stream` (the first ``len(self)`` with
        ``truncate``)."""
        mine = range(self.rank, self.total_size, self.num_replicas)
        return mine[:self.num_samples] if truncate else mine

    def epoch_indices(self, truncate: bool = True) -> list[int]:
        """This rank's sample indices for the current epoch, ignoring any pending skip."""
        stream = self.global_stream()
        return [stream[p] for p in self.positions(truncate)]

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        stream, positions = self.global_stream(), self.positions()[skip:]
        if not self.seeded_samples:
            return iter([stream[p] for p in positions])
        return iter([(stream[p], copy_seed(self.seed, self.epoch, stream[p], p)) for p in positions])

    def __len__(self) -> int:
        return self.num_samples


def repeated_aug_sampler(dataset: Sized, trainer: Any, repeats: int, seed: int | None = None,
                         seeded_samples: bool = False) -> RepeatedAugSampler:
    """:class:`RepeatedAugSampler` for this trainer's rank and world size, seeded like
    :func:`~mmkit.data.sharding.train_sampler` (``seed_everything``'s seed by default)."""
    rank, world = rank_and_world(trainer)
    return RepeatedAugSampler(dataset, num_replicas=world, rank=rank, repeats=repeats,
                              seed=global_seed() if seed is None else seed, seeded_samples=seeded_samples)
