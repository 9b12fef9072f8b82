"""Row helpers of the kernels: check a ``dim`` and view a tensor as ``[M, N]`` rows."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def check_dim(scores: Tensor, dim: int) -> int:
    """Return ``dim`` as a non-negative index, with a clear error when out of range."""
    if not -scores.ndim <= dim < max(scores.ndim, 1):
        raise ValueError(f"dim={dim} is out of range for scores with {scores.ndim} dims")
    return dim % max(scores.ndim, 1)


def to_rows(x: Tensor, dim: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Move ``dim`` last and flatten to ``[M, N]``; return a function that undoes it.

    ``dim`` already last (the usual case) skips the two ``movedim`` calls: at short rows
    the host time per op is most of the cost.
    """
    if dim % max(x.ndim, 1) == x.ndim - 1:
        shape = x.shape

        def back_last(r: Tensor) -> Tensor:
            return r.reshape(shape)

        return x.reshape(-1, shape[-1]), back_last  # [M, N]
    moved = x.movedim(dim, -1)
    shape = moved.shape
    rows = moved.reshape(-1, shape[-1])  # [M, N]

    def back(r: Tensor) -> Tensor:
        return r.reshape(shape).movedim(-1, dim)

    return rows, back
