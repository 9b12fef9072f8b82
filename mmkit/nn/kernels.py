"""The fused attention kernels, as public API of :mod:`mmkit.nn` (a thin re-export).

The kernels live in the bottom layer, :mod:`mmkit.kernels` (here: :mod:`mmkit.kernels.flash`);
this module keeps the documented names working, e.g.
``with mmkit.nn.kernels.use_fused_backward():`` and
``mmkit.nn.kernels.multimax_flash_attention(q, k, v, ranges, ts)``. The dispatch that
reads a normalizer's fused form is :func:`mmkit.nn.attend`; kernels are switched on
and off with :func:`mmkit.kernels.disabled` (``use_multimax_kernel`` and
``use_fused_backward`` set its ``"flash"`` and ``"fused_backward"`` switches).
"""

from __future__ import annotations

from ..kernels.flash import (
    multimax_attention,
    multimax_flash_attention,
    multimax_kernel_enabled,
    set_multimax_kernel,
    use_fused_backward,
    use_multimax_kernel,
)

__all__ = [
    "multimax_attention",
    "multimax_flash_attention",
    "multimax_kernel_enabled",
    "set_multimax_kernel",
    "use_fused_backward",
    "use_multimax_kernel",
]
