"""Translation: a thin LightningModule around :class:`~mmkit.models.Seq2SeqTransformer`.

Loss: the output normalizer's own loss with label smoothing (CE on σ(logits) for
MultiMax, Fenchel-Young for the sparse ones), padding ignored. At the end of each
validation/test pass the sources are decoded (greedy or beam search, cached), the
hypotheses and references are written next to the logs
(``hyps.<stage>.txt``, ``refs.<stage>.txt``) and two scores are logged:

- ``<stage>/bleu``: sacreBLEU's corpus score on the detokenized text (its signature
  goes to ``bleu.<stage>.txt``);
- ``<stage>/bleu_tok``: BLEU with ``tokenize="none"`` on the text as is, for
  comparison with fairseq's IWSLT'14 protocol (lowercased, Moses-tokenized data).
"""

from __future__ import annotations

import math
from pathlib import Path

import sacrebleu
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.aggregation import MeanMetric

from ..models.search import beam_search, greedy_decode
from .checks import check_vocab
from .optim import param_groups


def inverse_sqrt(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warmup to the base rate, then decay with ``1/sqrt(step)`` (fairseq)."""
    warmup_steps = max(warmup_steps, 1)
    return LambdaLR(optimizer, lambda step: min((step + 1) / warmup_steps,
                                                math.sqrt(warmup_steps / (step + 1))))


class Translation(LightningModule):
    """Train and evaluate a translation model.

    Args:
        network: e.g. :class:`~mmkit.models.Seq2SeqTransformer`.
        optimizer: builds the optimizer from the parameter groups.
        scheduler: an LR scheduler stepped per epoch; by default inverse-sqrt with
            ``warmup_steps`` stepped per optimizer step.
        warmup_steps: warmup of the default schedule.
        label_smoothing: label smoothing of the training loss.
        beam: beam size for evaluation and ``predict`` (1 = greedy).
        len_penalty: length penalty of the beam search.
        max_len_a, max_len_b: outputs are at most ``a · source length + b`` tokens.
    """

    def __init__(self, network: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: LRSchedulerCallable | None = None, warmup_steps: int = 4000,
                 label_smoothing: float = 0.1, beam: int = 5, len_penalty: float = 1.0,
                 max_len_a: float = 1.5, max_len_b: int = 10) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0 or beam < 1 or warmup_steps < 0:
            raise ValueError("need 0 <= label_smoothing < 1, beam >= 1 and warmup_steps >= 0")
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._outputs: list[tuple[int, str]] = []
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()  # per target token

    def setup(self, stage: str) -> None:
        check_vocab(self)

    def _loss(self, batch: dict[str, Tensor], smoothing: float) -> Tensor:
        logits = self.network(batch["src"], batch["tgt_in"])
        return self.network.output_normalizer.loss(logits, batch["tgt_out"], label_smoothing=smoothing,
                                                   ignore_index=self.network.pad_id)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["src"].shape[0])
        return loss

    def translate(self, src: Tensor) -> list[str]:
        hp = self.hparams
        if hp.beam == 1:
            ids = greedy_decode(self.network, src, max_len_a=hp.max_len_a, max_len_b=hp.max_len_b)
        else:
            ids = beam_search(self.network, src, beam=hp.beam, len_penalty=hp.len_penalty,
                              max_len_a=hp.max_len_a, max_len_b=hp.max_len_b)
        return self.trainer.datamodule.tokenizer.decode_batch(ids)

    def _eval_step(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        # The mean over all target tokens of the split: the same for any batching or
        # number of processes (a plain sync_dist mean would weight batches, not tokens).
        mean_loss = getattr(self, f"{stage}_loss")
        tokens = (batch["tgt_out"] != self.network.pad_id).sum()
        mean_loss.update(self._loss(batch, 0.0), weight=tokens)
        self.log(f"{stage}/loss", mean_loss, batch_size=batch["src"].shape[0])
        self._outputs.extend(zip(batch["index"].tolist(), self.translate(batch["src"])))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _score(self, stage: str, split: str) -> None:
        outputs, self._outputs = self._outputs, []
        if dist.is_available() and dist.is_initialized():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        by_index = dict(outputs)  # drops repeats, should a padded sampler have made any
        all_refs = self.trainer.datamodule.references(split)
        order = sorted(by_index)  # all of the split unless limit_*_batches cut it
        hyps, refs = [by_index[i] for i in order], [all_refs[i] for i in order]
        bleu = sacrebleu.BLEU()
        score = bleu.corpus_score(hyps, [refs])
        tok = sacrebleu.BLEU(tokenize="none").corpus_score(hyps, [refs])
        # log_dir is a collective under DDP (a broadcast): every rank must ask for it.
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"hyps.{stage}.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
            (out_dir / f"refs.{stage}.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
            (out_dir / f"bleu.{stage}.txt").write_text(
                f"{score} {bleu.get_signature()}\n{tok} (tokenize=none)\n", encoding="utf-8")
        # Every rank has the same gathered score: log it everywhere (no sync needed), so
        # that a checkpoint monitoring val/bleu works on every rank.
        self.log(f"{stage}/bleu", score.score, prog_bar=True)
        self.log(f"{stage}/bleu_tok", tok.score)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._score("val", "valid")
        self._outputs = []

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_end(self) -> None:
        self._score("test", "test")

    #: ``mmkit predict`` also writes this column to ``predictions.txt``, one line per input.
    prediction_text_column = "translation"

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict]:
        return [{"translation": t} for t in self.translate(batch["src"])]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self.network))
        if self.scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
        schedule = inverse_sqrt(optimizer, self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
