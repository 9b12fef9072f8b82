"""``AttentionStatistics``: log per-layer attention statistics and learned σ at validation.

Add it to a run with the overlay ``-c configs/callbacks/attention_stats.yaml`` or with
``--trainer.callbacks+=mmkit.analysis.AttentionStatistics``. At the end of every
validation epoch it logs, for every attention layer (the normalizer's qualified
name without ``network.`` and ``.normalizer``, e.g. ``blocks.0.attn``):

- ``attn/<layer>/S``, ``attn/<layer>/M``, ``attn/<layer>/entropy``,
  ``attn/<layer>/frac_small`` over the first ``num_batches`` validation batches
  (see :mod:`mmkit.analysis.stats`);
- ``sigma/<layer>/<b1|d1|tb1|td1|...>``: the SegLU parameters of every MultiMax,
  attention and output (``output_normalizer``) alike; per-head ones are averaged
  over heads (each head too with ``per_head=True``);
- ``param/<layer>/temperature`` / ``alpha`` of learnable SoftMax / EntMax.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from ..nn.attention import capture_attention
from ..normalizers import MultiMax, Normalizer
from .stats import SUM_FIELDS, attention_sums, layer_name, sigma_names, summarize

#: Attention calls whose normalizer is not a submodule of the LightningModule.
OTHER = "other"


def normalizer_parameters(name: str, module: Normalizer, per_head: bool = False) -> dict[str, float]:
    """The logged learnable parameters of one normalizer (empty when it has none)."""
    out: dict[str, float] = {}
    if isinstance(module, MultiMax):
        for names, values in zip(sigma_names(module.order), (module.ranges, module.ts)):
            table = values.detach().float().reshape(-1, len(names))  # [H or 1, 2N]
            for j, key in enumerate(names):
                out[f"sigma/{name}/{key}"] = float(table[:, j].mean())
                if per_head and module.num_heads:
                    out.update({f"sigma/{name}/h{h}/{key}": float(v) for h, v in enumerate(table[:, j])})
    elif getattr(module, "learnable", False):
        for attr in ("temperature", "alpha"):
            value = getattr(module, attr, None)
            if isinstance(value, Tensor):
                out[f"param/{name}/{attr}"] = float(value.detach().float().mean())
    return out


class AttentionStatistics(Callback):
    """Log the paper's S and M, entropy and small-weight fraction per attention layer,
    and the learned normalizer parameters, at the end of every validation epoch.

    While one of the first ``num_batches`` validation batches (of the first
    dataloader) runs, attention takes its materialized path and every call is
    reduced to per-layer totals at once; no attention map is kept. Sanity-check
    batches are skipped. Under DDP every rank captures its own batches and the
    totals are summed over ranks before logging, so the logged means cover
    ``num_batches × world_size`` batches and are the same on every rank.

    Args:
        num_batches: validation batches to capture per epoch (0: only parameters).
        eps: fixed relevance threshold ε for S and M; ``None`` (default): per query
            row, the mean of its unmasked scores (splits v = (10, 8, -1) as the paper's
            Figure 1 does). Scores are the normalizer's input, q·kᵀ/√d (+ bias).
        small: the threshold of ``frac_small``.
        per_head: also log each head's σ parameters of per-head MultiMax.
    """

    def __init__(self, num_batches: int = 1, eps: float | None = None, small: float = 1e-3,
                 per_head: bool = False) -> None:
        super().__init__()
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        if not small > 0:
            raise ValueError(f"small must be > 0, got {small}")
        self.num_batches, self.eps, self.small, self.per_head = num_batches, eps, small, per_head
        self._names: dict[int, str] = {}
        self._layers: list[str] = []
        self._totals: Tensor | None = None
        self._captured = 0
        self._stack: ExitStack | None = None

    # -------------------------------------------------------------- capture
    def _record(self, normalizer: Normalizer, scores: Tensor, probs: Tensor, keep: Tensor | None) -> None:
        row = self._layers.index(self._names.get(id(normalizer), OTHER))
        sums = attention_sums(scores, probs, keep, eps=self.eps, small=self.small)
        if self._totals is None:
            self._totals = torch.zeros(len(self._layers), len(SUM_FIELDS), dtype=torch.float64,
                                       device=sums.device)
        self._totals[row] += sums.to(self._totals.device)

    def _stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        named = [(layer_name(n), m) for n, m in pl_module.named_modules() if isinstance(m, Normalizer)]
        self._names = {id(m): n for n, m in named}
        self._layers = [n for n, _ in named] + [OTHER]
        self._totals, self._captured = None, 0

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stop()
        if trainer.sanity_checking or dataloader_idx != 0 or self._captured >= self.num_batches:
            return
        self._stack = ExitStack()
        self._stack.enter_context(capture_attention(self._record))
        self._captured += 1

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object,
                                batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop()

    # -------------------------------------------------------------- logging
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop()
        if trainer.sanity_checking:
            return
        metrics: dict[str, float] = {}
        if self.num_batches > 0:
            totals = self._totals
            if totals is None:  # nothing captured here; other ranks may have captured
                totals = torch.zeros(len(self._layers), len(SUM_FIELDS), dtype=torch.float64)
            totals = totals.to(pl_module.device)
            if trainer.world_size > 1:
                totals = trainer.strategy.reduce(totals, reduce_op="sum")
            for layer, row in zip(self._layers, totals.cpu()):
                metrics.update({f"attn/{layer}/{k}": v for k, v in summarize(row).items()})
        for name, module in pl_module.named_modules():
            if isinstance(module, Normalizer):
                metrics.update(normalizer_parameters(layer_name(name), module, self.per_head))
        if metrics:
            # Already equal on every rank; sync_dist (a mean of equal values) only keeps
            # Lightning from warning that epoch-level values are not synced.
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1,
                               add_dataloader_idx=False)
        self._totals = None
