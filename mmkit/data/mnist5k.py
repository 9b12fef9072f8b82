"""The embedded image dataset: 5,000 real MNIST digits (500 per class).

The table ships inside the package (``mmkit/data/embedded/mnist5k.u8.xz``, 0.7 MB): 5,000
rows of 785 bytes, the 784 pixels of a 28×28 digit and then its label. See
``mmkit/data/embedded/README.md`` for its source and licence.
"""

from __future__ import annotations

import lzma
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NUM_IMAGES, SIDE = 5000, 28
EMBEDDED = Path(__file__).parent / "embedded"


def mnist5k_path() -> Path:
    """Where the table is, with a clear error when the installation lacks it."""
    path = EMBEDDED / "mnist5k.u8.xz"
    if not path.is_file():
        raise FileNotFoundError(f"the embedded MNIST-5k ({path}) is missing from this installation of "
                                "mmkit; reinstall it (`pip install --force-reinstall mmkit`)")
    return path


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[Tensor, Tensor]:
    """``(images uint8 [5000, 1, 28, 28], labels int64 [5000])``."""
    table = np.frombuffer(lzma.decompress(mnist5k_path().read_bytes()), dtype=np.uint8)
    if table.size != NUM_IMAGES * (SIDE * SIDE + 1):
        raise ValueError(f"the embedded MNIST-5k holds {table.size} bytes, not {NUM_IMAGES} rows of "
                         f"{SIDE * SIDE + 1}; reinstall mmkit")
    table = table.reshape(NUM_IMAGES, SIDE * SIDE + 1)  # [N, 785]
    images = torch.from_numpy(table[:, :-1].copy()).view(-1, 1, SIDE, SIDE)  # [N, 1, 28, 28]
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels
