"""ImageDataModule: the embedded MNIST-5k split, transforms, and clear errors for
missing data."""

import pytest
import torch
from PIL import Image

from mmkit.data import ImageDataModule, load_mnist5k


def test_mnist5k_is_real_and_balanced():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    assert images.float().mean() > 20 and images.max() == 255  # dark background, bright ink


def test_split_is_seeded_disjoint_and_complete():
    def indices(seed):
        dm = ImageDataModule(split_seed=seed, augment="none")
        dm.setup()
        return [{tuple(x.flatten()[::7].tolist()) for x in s.images}
                for s in (dm.train_set, dm.val_set, dm.test_set)], dm

    (train, val, test), dm = indices(0)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4000, 500, 500)
    assert not (train & val or train & test or val & test)
    (train2, val2, _), _ = indices(0)
    assert val == val2 and train == train2
    assert indices(1)[0][1] != val


@pytest.mark.parametrize("augment", ["none", "light", "deit"])
def test_batches_are_normalized_float_images(augment):
    dm = ImageDataModule(augment=augment, batch_size=16)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, _ = next(iter(dm.val_dataloader()))
    assert abs(xv.mean()) < 0.3 and 0.7 < xv.std() < 1.3  # (x - mean) / std


def test_resizing_to_a_model_size():
    dm = ImageDataModule(img_size=32, augment="light", batch_size=4)
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 32, 32)
    assert next(iter(dm.test_dataloader()))[0].shape == (4, 1, 32, 32)


def test_cifar_offline_error_names_the_expected_path(tmp_path):
    dm = ImageDataModule("cifar10", root=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cifar-10-batches-py")):
        dm.prepare_data()


def test_imagefolder_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*/train/<class>/<image>"):
        ImageDataModule("imagefolder", root=str(tmp_path)).prepare_data()
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                color = (40 * i, 200 if cls == "dog" else 0, 90)
                Image.new("RGB", (40, 30), color).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageDataModule("imagefolder", root=str(tmp_path), img_size=16, batch_size=4)
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and dm.num_classes == 2
    assert dm.test_set is dm.val_set and len(dm.val_set) == 6


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset="svhn"), "unknown dataset 'svhn'"),
    (dict(batch_size=0), "batch sizes must be positive"),
    (dict(val_fraction=0.6, test_fraction=0.5), "sum below 1"),
    (dict(img_size=-3), "img_size must be positive"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageDataModule(**kwargs)


def _folder(root, splits):
    for split, classes in splits.items():
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / cls / "0.png")


def test_imagefolder_splits_must_share_their_classes(tmp_path):
    _folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "cow"]})
    dm = ImageDataModule("imagefolder", root=str(tmp_path), img_size=8)
    with pytest.raises(ValueError, match=r"val split .* other class folders than train/ "
                                         r"\(missing: dog; extra: cow"):
        dm.setup()


def test_imagefolder_symlink_loop_is_refused(tmp_path):
    _folder(tmp_path, {"train": ["cat", "dog"], "val": ["cat", "dog"]})
    (tmp_path / "train" / "cat" / "again").symlink_to(tmp_path / "train")
    with pytest.raises(ValueError, match="symlink loop"):
        ImageDataModule("imagefolder", root=str(tmp_path), img_size=8).prepare_data()
