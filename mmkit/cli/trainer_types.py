"""Keep the Trainer's "an int counts batches, a float is a fraction" options int-first.

Lightning annotates ``limit_val_batches`` and its siblings ``Optional[Union[int, float]]``:
``1`` means one batch and ``1.0`` means all of them. Python caches ``typing.Union`` objects, and
``Union[int, float]`` compares equal to ``Union[float, int]``, so ``Optional[...]`` of either
returns whichever spelling some module created first. When a library imported before Lightning
spelled it float-first (importing ``rich.console`` first is enough), the Trainer's annotation reads
``Union[float, int, None]``, the CLI parser tries ``float`` first, and ``--trainer.limit_val_batches
1`` silently becomes ``1.0``: a full validation pass instead of one batch.
:func:`pin_int_first` rewrites such annotations with the ``int`` ahead of the ``float``, as
Lightning wrote them, before the parser reads them.
"""

from __future__ import annotations

import functools
import operator
import types
import typing
from typing import Any

_UNIONS = (typing.Union, types.UnionType)


def _int_first(annotation: Any) -> Any | None:
    """``annotation`` with ``int`` moved just ahead of ``float``, or ``None`` when it is not a
    union that lists ``float`` before ``int`` (or holds members that ``|`` cannot rebuild)."""
    if typing.get_origin(annotation) not in _UNIONS:
        return None
    members = list(typing.get_args(annotation))
    if int not in members or float not in members or members.index(float) > members.index(int):
        return None
    if not all(isinstance(m, (type, types.GenericAlias)) for m in members):
        return None
    members.remove(int)
    members.insert(members.index(float), int)
    # ``|`` builds a ``types.UnionType``, which keeps its order and bypasses typing's cache.
    return functools.reduce(operator.or_, members)


def pin_int_first(function: Any) -> list[str]:
    """Reorder, in place, every parameter annotation of ``function`` that lists ``float`` before
    ``int``; returns the names of the parameters it changed."""
    annotations = getattr(function, "__annotations__", None) or {}
    changed = []
    for name, annotation in annotations.items():
        fixed = _int_first(annotation)
        if fixed is not None:
            annotations[name] = fixed
            changed.append(name)
    return changed
