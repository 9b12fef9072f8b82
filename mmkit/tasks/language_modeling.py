"""Language modeling with memory: a thin LightningModule around a Transformer-XL.

- **Memory.** One memory per stage (train / val / test). It carries from one batch
  to the next, because :class:`~mmkit.data.TextDataModule` yields consecutive
  windows of parallel streams, and it is reset at every epoch start and before each
  validation or test pass. Checkpoints carry the training memory
  (``checkpoint["mmkit_mems"]``), so a run resumed mid-epoch continues with it.
- **Evaluation protocol.** Validation and test run the network in eval mode, so a
  Transformer-XL uses its ``eval_mem_len``/``eval_clamp_len``/``eval_same_length``, on
  the data module's ``eval_tgt_len`` windows (the original's ``eval.py``: 64/640/400/
  same length on WikiText-103). Each lives in one place only, so the two cannot disagree;
  the windows score every target of the evaluated streams exactly once.
- **Loss.** The output normalizer's own loss (CE on σ(logits) for MultiMax,
  Fenchel-Young for the sparse ones). When the network has ``fused_head`` on and the
  output normalizer is SoftMax or a shared MultiMax, training uses the fused chunked
  head (``network.forward_hidden`` + ``network.head_loss``): same loss and gradients,
  no ``[B·T, V]`` logits. Validation and test keep the full logits (per-token NLL).
  A network with an adaptive softmax (``network.adaptive``, Transformer-XL's ``cutoffs``)
  trains with ``network.head_loss`` and evaluates with ``network.target_log_prob``: only
  the targets' clusters, never the full ``[B·T, V]`` scores (see :mod:`mmkit.nn.adaptive`).
- **Metrics.** Over the whole validation/test stream with memory:
  ``ppl = exp(Σ NLL / tokens)`` and bits per byte ``Σ NLL / ln 2 / bytes``, where bytes
  are the evaluated tokens times the split's bytes per token. The NLL is the
  output normalizer's ``-log p(target)``. A sparse normalizer can give the target
  exactly 0, so its probabilities are smoothed first:
  ``p̃ = (p + ε) / (1 + Vε)``, with ``ppl_epsilon`` ε. Softmax-type normalizers
  need no smoothing.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.aggregation import SumMetric

from ..models.base import LanguageModelNetwork
from ..nn.lm_head import supports_fused_head
from ..normalizers import Normalizer
from .checks import check_vocab
from .optim import param_groups, warmup_cosine


class LanguageModeling(LightningModule):
    """Train and evaluate a memory LM (``network(tokens, mems) -> (logits, mems)``).

    Args:
        network: e.g. mmkit's ``TransformerXL``; a network of your own subclasses
            :class:`mmkit.models.LanguageModelNetwork` and has its interface
            (``vocab_size``, ``output_normalizer``, ``forward_hidden``, ``head_loss``, ...).
        optimizer: builds the optimizer from the parameter groups.
        scheduler: an LR scheduler stepped per epoch; by default a per-step linear
            warmup over ``warmup_steps`` and cosine decay to ``min_lr_ratio``.
        warmup_steps: warmup length of the default schedule.
        min_lr_ratio: final learning rate of the default schedule, relative to the base.
        label_smoothing: label smoothing of the training loss.
        ppl_epsilon: smoothing of sparse output probabilities for perplexity.
        max_new_tokens, temperature, top_k, greedy: generation settings of ``predict``,
            which continues each prompt of the data module with cached memory.
    """

    def __init__(self, network: LanguageModelNetwork, optimizer: OptimizerCallable = torch.optim.AdamW,
                 scheduler: LRSchedulerCallable | None = None, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.0, label_smoothing: float = 0.0,
                 ppl_epsilon: float = 1e-6, max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = 50, greedy: bool = False) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0 or ppl_epsilon <= 0 or warmup_steps < 0:
            raise ValueError("need 0 <= label_smoothing < 1, ppl_epsilon > 0, warmup_steps >= 0")
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.mems: dict[str, list[Tensor] | None] = {"train": None, "val": None, "test": None}
        for stage in ("val", "test"):
            setattr(self, f"{stage}_nll", SumMetric())
            setattr(self, f"{stage}_tokens", SumMetric())
            setattr(self, f"{stage}_bytes", SumMetric())

    @property
    def output_normalizer(self) -> Normalizer:
        return self.network.output_normalizer

    @property
    def fused_training_loss(self) -> bool:
        """``True`` when training uses the network's fused head (its ``fused_head`` is on
        and the output normalizer supports it)."""
        fused = bool(getattr(self.network, "fused_head", False))
        return fused and supports_fused_head(self.output_normalizer)

    @property
    def adaptive_head(self) -> bool:
        """``True`` when the network has an adaptive softmax (``network.adaptive``)."""
        return bool(getattr(self.network, "adaptive", False))

    def setup(self, stage: str) -> None:
        self.check_data()

    def check_data(self) -> None:
        """Refuse a tokenizer larger than the network's vocabulary (see :mod:`.checks`)."""
        check_vocab(self)

    def forward(self, tokens: Tensor, mems: list[Tensor] | None = None):
        return self.network(tokens, mems)

    def on_train_epoch_start(self) -> None:
        self.mems["train"] = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the training memory, unless the epoch has just ended (the next one starts
        empty, and Lightning skips ``on_train_epoch_start`` after a restart on the last batch)."""
        mems = self.mems["train"]
        loop = self._trainer.fit_loop.epoch_loop if self._trainer is not None else None
        if loop is not None and loop.batch_progress.is_last_batch:
            mems = None
        checkpoint["mmkit_mems"] = None if mems is None else [m.detach().cpu() for m in mems]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        mems = checkpoint.get("mmkit_mems")
        self.mems["train"] = None if mems is None else [m.to(self.device) for m in mems]

    def on_train_start(self) -> None:
        mems = self.mems["train"]  # restored on the CPU before the model moved to its device
        if mems is not None:
            self.mems["train"] = [m.to(self.device) for m in mems]

    def on_validation_epoch_start(self) -> None:
        self.mems["val"] = None

    def on_test_epoch_start(self) -> None:
        self.mems["test"] = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        tokens, targets = batch
        smoothing = self.hparams.label_smoothing
        if self.fused_training_loss or self.adaptive_head:
            hidden, self.mems["train"] = self.network.forward_hidden(tokens, self.mems["train"])
            loss = self.network.head_loss(hidden, targets, label_smoothing=smoothing)
        else:
            logits, self.mems["train"] = self(tokens, self.mems["train"])
            loss = self.output_normalizer.loss(logits, targets, label_smoothing=smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def token_nll(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``-log p(target)`` per token under the output normalizer (smoothed if sparse)."""
        norm = self.output_normalizer
        logits = logits.float()
        if norm.modulated_softmax():
            logp = norm.log_probs(logits)
        else:
            eps = self.hparams.ppl_epsilon
            p = norm(logits, dim=-1)
            logp = torch.log((p + eps) / (1.0 + eps * logits.shape[-1]))
        return -logp.gather(-1, targets[..., None])[..., 0]

    def target_nll(self, log_prob: Tensor) -> Tensor:
        """``-log p(target)`` from the exact ``log p(target)``, smoothed as :meth:`token_nll`
        when the output normalizer is not a modulated softmax."""
        if self.output_normalizer.modulated_softmax():
            return -log_prob
        eps = self.hparams.ppl_epsilon
        return -torch.log((log_prob.exp() + eps) / (1.0 + eps * self.network.vocab_size))

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        tokens, targets = batch
        if self.adaptive_head:  # only the targets' clusters, never [B, T, V] scores
            hidden, self.mems[stage] = self.network.forward_hidden(tokens, self.mems[stage])
            nll = self.target_nll(self.network.target_log_prob(hidden, targets))
            loss = self.network.head_loss(hidden, targets)
        else:
            logits, self.mems[stage] = self(tokens, self.mems[stage])
            nll, loss = self.token_nll(logits, targets), self.output_normalizer.loss(logits, targets)
        split = "valid" if stage == "val" else "test"
        per_token = getattr(self.trainer.datamodule, "bytes_per_token", {}).get(split, math.nan)
        getattr(self, f"{stage}_nll").update(nll.sum())
        getattr(self, f"{stage}_tokens").update(nll.numel())
        getattr(self, f"{stage}_bytes").update(nll.numel() * per_token)
        self.log(f"{stage}/loss", loss, sync_dist=True)

    def _log_perplexity(self, stage: str) -> None:
        nll, tokens = getattr(self, f"{stage}_nll").compute(), getattr(self, f"{stage}_tokens").compute()
        num_bytes = getattr(self, f"{stage}_bytes").compute()
        self.log(f"{stage}/ppl", torch.exp(nll / tokens), prog_bar=True)
        self.log(f"{stage}/bpb", nll / math.log(2) / num_bytes)
        for name in ("nll", "tokens", "bytes"):
            getattr(self, f"{stage}_{name}").reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> list[dict]:
        """Continue the prompt ``[1, T0]`` with the cached-memory generator."""
        hp = self.hparams
        out = self.network.generate(batch, hp.max_new_tokens, temperature=hp.temperature,
                                    top_k=hp.top_k, greedy=hp.greedy)
        decode = self.trainer.datamodule.tokenizer.decode
        return [{"prompt": decode(batch[i].tolist()),
                 "continuation": decode(out[i, batch.shape[1]:].tolist())}
                for i in range(out.shape[0])]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self.network))
        if self.scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
        total = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(optimizer, self.hparams.warmup_steps, total,
                                 self.hparams.min_lr_ratio)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
