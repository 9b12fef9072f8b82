"""DeiT's repeated-augmentation sampler: repeats, spread over ranks, epoch length, seeding,
mid-epoch resume, and its wiring in the image data module."""

import math
from collections import Counter

import pytest
import torch

from mmkit.data import ImageDataModule, RepeatedAugSampler
from mmkit.data.sharding import ResumableSampler, SeededSamples


def samplers(size, world, **kw):
    return [RepeatedAugSampler(range(size), num_replicas=world, rank=r, **kw) for r in range(world)]


@pytest.mark.parametrize("size,world,repeats", [(512, 1, 3), (512, 2, 3), (512, 3, 3), (512, 4, 2),
                                                (10, 4, 3)])
def test_every_index_appears_repeats_times_in_the_untruncated_stream(size, world, repeats):
    shards = [s.epoch_indices(truncate=False) for s in samplers(size, world, repeats=repeats, multiple=1)]
    total = math.ceil(size * repeats / world) * world
    assert {len(shard) for shard in shards} == {total // world}
    counts = Counter(i for shard in shards for i in shard)
    assert set(counts) == set(range(size))
    padding = total - size * repeats  # the stream's head again, as DeiT pads
    assert min(counts.values()) == repeats and sum(c - repeats for c in counts.values()) == padding
    if padding == 0:
        assert set(counts.values()) == {repeats}


def test_copies_of_a_sample_go_to_different_ranks():
    """With as many ranks as repeats, each rank's untruncated shard is a permutation."""
    for shard in samplers(300, 3, repeats=3, multiple=1):
        assert sorted(shard.epoch_indices(truncate=False)) == list(range(300))


@pytest.mark.parametrize("size,world", [(1000, 1), (1000, 3), (1281, 8), (256, 2)])
def test_epoch_length_is_deits_truncation_and_equal_on_every_rank(size, world):
    expected = math.floor((size // 256) * 256 / world)  # DeiT's num_selected_samples
    shards = samplers(size, world, repeats=3)
    assert [len(s) for s in shards] == [expected] * world
    assert [len(list(iter(s))) for s in shards] == [expected] * world


def test_order_matches_deits_construction():
    """Re-derived as DeiT writes it: the seeded permutation, each index repeated in a row,
    padded with the head, dealt out round-robin, truncated per rank."""
    size, world, repeats, seed, epoch = 600, 4, 3, 7, 2
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    stream = [i for i in perm for _ in range(repeats)]
    total = -(-size * repeats // world) * world
    stream += stream[:total - len(stream)]
    for rank, sampler in enumerate(samplers(size, world, repeats=repeats, seed=seed)):
        sampler.set_epoch(epoch)
        assert list(sampler) == stream[rank:total:world][:(size // 256 * 256) // world]


def test_global_order_does_not_depend_on_the_world_size():
    one = list(samplers(1024, 1, repeats=3, seed=3)[0])
    two = [list(s) for s in samplers(1024, 2, repeats=3, seed=3)]
    assert [x for pair in zip(*two) for x in pair] == one


def test_deterministic_per_epoch_and_different_across_epochs_and_seeds():
    a, b = samplers(512, 2, repeats=3, seed=1)[1], samplers(512, 2, repeats=3, seed=1)[1]
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) == list(a)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(a) != list(samplers(512, 2, repeats=3, seed=2)[1])  # both at epoch 0


@pytest.mark.parametrize("seeded", [False, True])
def test_resume_mid_epoch_equals_the_uninterrupted_epoch(seeded):
    full = samplers(777, 3, repeats=3, seed=5, seeded_samples=seeded)[2]
    full.set_epoch(3)
    uninterrupted = list(full)
    resumed = samplers(777, 3, repeats=3, seed=5, seeded_samples=seeded)[2]
    resumed.set_epoch(3)
    resumed.skip_batches(5, 16)
    assert list(resumed) == uninterrupted[5 * 16:]
    assert list(resumed) == uninterrupted  # the skip applies to one epoch only


def test_each_copy_gets_its_own_augmentation_seed():
    pairs = list(samplers(512, 1, repeats=3, seeded_samples=True)[0])
    assert Counter(index for index, _ in pairs).most_common(1)[0][1] == 3
    assert len(set(pairs)) == len(pairs)  # the copies of one index have distinct seeds
    two = [list(s) for s in samplers(512, 2, repeats=3, seeded_samples=True)]
    assert [x for pair in zip(*two) for x in pair] == pairs  # same seeds at any world size


@pytest.mark.parametrize("kwargs,match", [
    (dict(repeats=0), "repeats must be an integer >= 1"),
    (dict(repeats=2.5), "repeats must be an integer >= 1"),
])
def test_bad_repeats(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RepeatedAugSampler(range(512), **kwargs)


def test_too_small_a_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 256 training samples on 2 process\(es\).*got 200"):
        RepeatedAugSampler(range(200), num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"at least 512 training samples on 300 process\(es\)"):
        RepeatedAugSampler(range(500), num_replicas=300, rank=0)
    assert len(RepeatedAugSampler(range(256), num_replicas=2, rank=1)) == 128


def test_image_data_module_option():
    dm = ImageDataModule(batch_size=6, repeated_aug=3, augment="light")
    dm.setup()
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, RepeatedAugSampler) and sampler.repeats == 3
    assert len(sampler) == len(dm.train_set) // 256 * 256
    x, y = next(iter(loader))
    assert torch.equal(y[:3], y[:1].expand(3)) and torch.equal(y[3:], y[3:4].expand(3))
    assert not torch.equal(x[0], x[1]) or not torch.equal(x[1], x[2])  # copies augmented apart
    assert isinstance(loader.dataset, SeededSamples)
    plain = ImageDataModule(batch_size=6)
    plain.setup()
    assert type(plain.train_dataloader().sampler) is ResumableSampler  # off by default


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_repeated_aug_option(value):
    with pytest.raises(ValueError, match="repeated_aug must be an integer >= 1"):
        ImageDataModule(repeated_aug=value)
