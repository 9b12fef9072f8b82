"""Image classification data: embedded MNIST-5k, CIFAR-10/100 and ImageFolder.

- ``mnist5k`` (default, offline): 5,000 real digits split by ``split_seed`` into
  train / val / test with ``val_fraction`` and ``test_fraction``.
- ``cifar10`` / ``cifar100``: torchvision's files under ``root``; downloaded when
  online, otherwise a clear error names the expected path. ``val_fraction`` of the
  training set is held out for validation (0: validate on the test set).
- ``imagefolder``: the ImageNet layout ``root/train/<class>/*.jpg``,
  ``root/val/<class>/*.jpg`` and optionally ``root/test``; validation uses ``val``,
  and testing uses ``test`` when present, ``val`` otherwise.

``repeated_aug`` > 1 trains with DeiT's repeated augmentation
(:class:`~mmkit.data.repeated_aug.RepeatedAugSampler`) instead of plain shuffling.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets

from .mnist5k import load_mnist5k
from .repeated_aug import repeated_aug_sampler
from .sharding import RNGNeutralLoader, SeededSamples, ShardSampler, train_sampler
from .transforms import Augment, eval_transform, train_transform

DatasetName = Literal["mnist5k", "cifar10", "cifar100", "imagefolder"]

#: Native size, channels, classes and normalization statistics.
INFO: dict[str, dict] = {
    "mnist5k": dict(size=28, chans=1, classes=10, mean=(0.1307,), std=(0.3081,)),
    "cifar10": dict(size=32, chans=3, classes=10, mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(size=32, chans=3, classes=100, mean=(0.5071, 0.4865, 0.4409),
                     std=(0.2673, 0.2564, 0.2762)),
    "imagefolder": dict(size=224, chans=3, classes=None, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225)),
}
_CIFAR = {"cifar10": (datasets.CIFAR10, "cifar-10-batches-py"),
          "cifar100": (datasets.CIFAR100, "cifar-100-python")}


def load_image(path: str) -> Image.Image:
    """The RGB image at ``path`` (``ImageFolder``'s loader); a file PIL cannot read (corrupt,
    truncated, not an image) is a ``ValueError`` that names it, not a PIL traceback."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(f"cannot read the image {path} ({err}); replace or remove the file") from err


class TensorImages(Dataset):
    """In-memory uint8 images ``[N, C, H, W]`` with labels and a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


class _Transformed(Dataset):
    """A view of ``dataset`` (a torchvision dataset or subset) with its own transform."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        return self.transform(image), label


class ImageDataModule(LightningDataModule):
    """Images and labels for :class:`~mmkit.tasks.ImageClassification`.

    Args:
        dataset: which dataset (see the module docstring).
        root: data directory for cifar10/cifar100/imagefolder.
        img_size: side length fed to the model (default: the dataset's native size;
            imagefolder resizes and center-crops for evaluation).
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: share of the training data held out for validation.
        test_fraction: share of MNIST-5k held out for testing.
        split_seed: seed of the train/val/test split (fixed across runs and seeds).
        augment: training augmentation, ``none``, ``light`` (random crop, plus flips
            except for digits) or ``deit`` (random resized crop, flip, RandAugment,
            random erasing).
        download: try to download CIFAR when it is missing.
        repeated_aug: DeiT's repeated augmentation: each training sample appears this many
            times per epoch (each copy augmented on its own, on another process), and the
            epoch stops after about one dataset's worth of samples. 1 (default): plain
            seeded shuffling; DeiT uses 3.
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist5k",
        root: str = "data",
        img_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        augment: Augment = "light",
        download: bool = True,
        repeated_aug: int = 1,
    ) -> None:
        super().__init__()
        if dataset not in INFO:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(INFO)}")
        if batch_size <= 0 or (eval_batch_size is not None and eval_batch_size <= 0):
            raise ValueError(f"batch sizes must be positive, got {batch_size}, {eval_batch_size}")
        if img_size is not None and img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(repeated_aug, bool) or not isinstance(repeated_aug, int) or repeated_aug < 1:
            raise ValueError(f"repeated_aug must be an integer >= 1 (1: off; DeiT uses 3), "
                             f"got {repeated_aug!r}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1, "
                             f"got {val_fraction} and {test_fraction}")
        self.save_hyperparameters()
        self.dataset, self.root = dataset, Path(root).expanduser()
        self.info = INFO[dataset]
        self.img_size = img_size or self.info["size"]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.augment, self.download = num_workers, augment, download
        self.repeated_aug = repeated_aug
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_classes(self) -> int | None:
        return self.info["classes"]

    @property
    def in_chans(self) -> int:
        return self.info["chans"]

    # ---------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        if self.dataset in _CIFAR:
            self._cifar(train=True, fetch=True)
        elif self.dataset == "imagefolder":
            self._folder("train")
            self._folder("val")

    def _cifar(self, train: bool, fetch: bool = False) -> Dataset:
        cls, folder = _CIFAR[self.dataset]
        try:
            return cls(str(self.root), train=train, download=False)
        except RuntimeError:
            if not (fetch and self.download):
                raise FileNotFoundError(self._cifar_missing(folder, "download=False")) from None
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            return cls(str(self.root), train=train, download=True)
        except Exception as err:  # offline: URLError, timeouts, ...
            raise FileNotFoundError(self._cifar_missing(folder, f"download failed: {err}")) from None
        finally:
            socket.setdefaulttimeout(old)

    def _cifar_missing(self, folder: str, why: str) -> str:
        return (f"{self.dataset} not found: expected the extracted python version at "
                f"{self.root / folder} ({why}); set data.root to the directory that holds it")

    def _folder(self, split: str) -> Path:
        path = self.root / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"imagefolder data not found: expected {path}/<class>/<image> (the ImageNet "
                f"layout with train/ and val/ under data.root={self.root})")
        _check_no_symlink_loop(path)
        return path

    # ---------------------------------------------------------------- splits
    def _split(self, n: int, fractions: tuple[float, ...]) -> list[torch.Tensor]:
        """Seeded disjoint index sets: one per fraction, then the rest."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        sizes = [round(n * f) for f in fractions]
        parts, start = [], 0
        for size in sizes:
            parts.append(perm[start:start + size])
            start += size
        return parts + [perm[start:]]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        mean, std, digits = self.info["mean"], self.info["std"], self.dataset == "mnist5k"
        native = None if self.dataset == "imagefolder" else self.info["size"]  # folder files: any size
        train_tf = train_transform(self.augment, self.img_size, mean, std, flip=not digits, native=native)
        eval_tf = eval_transform(self.img_size, mean, std, native=native)
        if self.dataset == "mnist5k":
            images, labels = load_mnist5k()
            test, val, train = self._split(len(labels), (self.test_fraction, self.val_fraction))
            self.train_set = TensorImages(images[train], labels[train], train_tf)
            self.val_set = TensorImages(images[val], labels[val], eval_tf)
            self.test_set = TensorImages(images[test], labels[test], eval_tf)
        elif self.dataset in _CIFAR:
            full, test = self._cifar(train=True), self._cifar(train=False)
            val, train = self._split(len(full), (self.val_fraction,))
            self.train_set = _Transformed(Subset(full, train.tolist()), train_tf)
            self.test_set = _Transformed(test, eval_tf)
            self.val_set = (_Transformed(Subset(full, val.tolist()), eval_tf) if len(val)
                            else self.test_set)
        else:
            self.train_set = datasets.ImageFolder(self._folder("train"), transform=train_tf,
                                                  loader=load_image)
            self.val_set = datasets.ImageFolder(self._folder("val"), transform=eval_tf, loader=load_image)
            test_dir = self.root / "test"
            self.test_set = (datasets.ImageFolder(test_dir, transform=eval_tf, loader=load_image)
                             if test_dir.is_dir() else self.val_set)
            self.info = dict(self.info, classes=len(self.train_set.classes))
            for split, folder in (("val", self.val_set), ("test", self.test_set)):
                _check_same_classes(self.train_set.classes, folder.classes, split, self.root)
        for name in ("train_set", "val_set", "test_set"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"the {name.replace('_set', '')} split of {self.dataset} is "
                                 "empty; check val_fraction/test_fraction or the data directory")

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None) -> DataLoader:
        return RNGNeutralLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    # Our own samplers (see mmkit.data.sharding): the same seeded training order on any
    # number of processes, and unpadded evaluation shards (no sample counted twice).
    def train_dataloader(self) -> DataLoader:
        # (index, seed) pairs: each sample's augmentation has its own seeded RNG, so the global
        # RNG (dropout, MixUp) is untouched by data loading and a resumed run is exact.
        if self.repeated_aug > 1:  # each copy of a sample gets its own seed, so its own augmentation
            sampler = repeated_aug_sampler(self.train_set, self.trainer, self.repeated_aug,
                                           seeded_samples=True)
        else:
            sampler = train_sampler(self.train_set, self.trainer, seeded_samples=True)
        return self._loader(SeededSamples(self.train_set), self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, ShardSampler(self.val_set, self.trainer))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, ShardSampler(self.test_set, self.trainer))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, None)  # Lightning shards predict


def _check_same_classes(train: list[str], other: list[str], split: str, root: Path) -> None:
    """Labels are the index of the class folder in sorted order, so every split must have the
    training split's class folders, or a label would name another class."""
    if other == train:
        return
    missing, extra = sorted(set(train) - set(other)), sorted(set(other) - set(train))
    raise ValueError(f"the {split} split under {root} has other class folders than train/ (missing: "
                     f"{', '.join(missing[:5]) or 'none'}; extra: {', '.join(extra[:5]) or 'none'}); labels "
                     "are numbered by sorted folder name, so every split needs the same class folders")


def _check_no_symlink_loop(root: Path) -> None:
    """ImageFolder follows symlinks; one that points back to a folder above it would list the
    same images again and again."""
    seen: set[str] = set()
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            raise ValueError(f"{folder} leads to {real}, which is listed already (a symlink loop, or a "
                             "second link to one folder): ImageFolder would count its images again; remove "
                             "or replace that link")
        seen.add(real)
