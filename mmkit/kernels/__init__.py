"""The bottom layer: kernels that take tensors and return tensors.

Nothing here imports a normalizer, a layer or a model; the layers above read a
normalizer's :meth:`~mmkit.normalizers.Normalizer.fused_form` and hand its tensors in.

- :mod:`.flash`: the Triton MultiMax flash attention (``attend`` uses it on CUDA);
- :mod:`.sparse_triton` (:mod:`.sparse_triton_kernels`): the Triton rows of sparsemax,
  1.5-entmax and α-entmax;
- :mod:`.multimax_rows`: the fused, row-chunked MultiMax forward/backward on CPU;
- :mod:`.lm_head_chunk`: the per-chunk maths of the fused LM head;
- :mod:`.rows`: row helpers (``dim`` checks, ``[M, N]`` row views).

Triton is imported lazily: mmkit works without it.

**Switches.** One API turns kernels off (their callers then take the reference path)::

    with mmkit.kernels.disabled("flash", "sparse_triton"):
        ...
    mmkit.kernels.enabled("flash")  # -> bool

The switches (:data:`SWITCHES`) are ``"flash"``, ``"sparse_triton"``,
``"multimax_rows"``, ``"lm_head_chunk"`` (all on by default) and ``"fused_backward"``
(the flash kernel's one-pass backward, off by default; :func:`switched` turns it on,
as :func:`mmkit.nn.kernels.use_fused_backward` does). ``disabled()`` with no names
turns every switch off. An unknown name raises ``ValueError``. The state lives in a
``ContextVar``: a ``with`` block affects only its own thread (or asyncio task) and is
restored on exit.
"""

from __future__ import annotations

from .switches import SWITCHES, disabled, enabled, set_switch, switched

__all__ = ["SWITCHES", "disabled", "enabled", "set_switch", "switched"]
