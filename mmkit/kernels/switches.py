"""Named on/off switches for the kernels, kept in a ``ContextVar``.

:func:`disabled` turns kernels off inside a ``with`` block, :func:`switched` sets one
on or off, :func:`enabled` reads a switch. The state lives in a ``ContextVar`` (as
:func:`mmkit.nn.capture_attention` does), so a block in one thread or task does not
change what other threads see, and every block restores the state it found.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: The switch names and what each one turns off (or, for ``fused_backward``, on).
SWITCHES: dict[str, str] = {
    "flash": "the Triton MultiMax flash attention that attend() uses on CUDA (off: materialized path)",
    "sparse_triton": "the Triton rows of sparsemax, 1.5-entmax and α-entmax on CUDA (off: torch path)",
    "multimax_rows": "the fused row-chunked MultiMax forward/backward on CPU (off: eager SegLU + softmax)",
    "lm_head_chunk": "the chunked fused LM-head loss (off: normalizer.loss on the full logits)",
    "fused_backward": "the one-pass backward of the flash kernel (off by default: two-kernel backward)",
}
_OFF_BY_DEFAULT = frozenset({"fused_backward"})
_OFF: ContextVar[frozenset[str]] = ContextVar("mmkit_kernels_off", default=_OFF_BY_DEFAULT)


def _check(names: Iterable[str]) -> None:
    for name in names:
        if name not in SWITCHES:
            raise ValueError(f"unknown kernel switch {name!r}; valid switches: {', '.join(SWITCHES)}")


def enabled(name: str) -> bool:
    """Whether the kernel switch ``name`` (one of :data:`SWITCHES`) is on here."""
    _check((name,))
    return name not in _OFF.get()


@contextmanager
def _off_set(off: frozenset[str]) -> Iterator[None]:
    token = _OFF.set(off)
    try:
        yield
    finally:
        _OFF.reset(token)


def disabled(*names: str):
    """Turn the named kernels off inside a ``with`` block (no names: every switch).

    Raises:
        ValueError: for a name that is not in :data:`SWITCHES`.
    """
    _check(names)
    return _off_set(_OFF.get() | frozenset(names or SWITCHES))


def switched(name: str, on: bool = True):
    """Set one switch on (``on=True``) or off inside a ``with`` block."""
    _check((name,))
    off = _OFF.get()
    return _off_set(off - {name} if on else off | {name})


def set_switch(name: str, on: bool) -> None:
    """Set one switch for the rest of the current context (thread), with no ``with`` block."""
    _check((name,))
    off = _OFF.get()
    _OFF.set(off - {name} if on else off | {name})
