"""Translation: a thin LightningModule around :class:`~mmkit.models.Seq2SeqTransformer`.

Loss: the output normalizer's own loss with label smoothing (CE on σ(logits) for
MultiMax, Fenchel-Young for the sparse ones), padding ignored. ``label_smoothing_style``
says how ε is spread: ``"uniform"`` puts ε/V on every class (PyTorch's convention: the
target keeps 1 - ε + ε/V); ``"fairseq"`` puts ε/(V-1) on each of the V-1 other classes
(fairseq's ``label_smoothed_cross_entropy``: the target keeps exactly 1 - ε). Both are one
smoothed target distribution, so every output normalizer's loss takes either.

At the end of each validation/test pass the sources are decoded (greedy or beam search,
cached). With ``remove_bpe`` the subword-nmt ``@@ `` markers are removed from hypotheses
and references first (fairseq's ``--remove-bpe``; :func:`remove_bpe`), also from
``mmkit predict``'s output. The hypotheses and references are written next to the logs
(``hyps.<stage>.txt``, ``refs.<stage>.txt``) and two scores are logged:

- ``<stage>/bleu``: sacreBLEU's corpus score with its default ``13a`` tokenization (its
  signature goes to ``bleu.<stage>.txt``) on detokenized text: raw text as it is, or, with
  ``detokenize="moses"``, Moses-tokenized data (IWSLT'14) detokenized by ``sacremoses`` first
  (fairseq's ``--eval-bleu-detok moses``); with ``"none"`` on such data it scores the
  tokenized text as it stands;
- ``<stage>/bleu_tok``: BLEU with ``tokenize="none"`` on the text as is, i.e. split at
  spaces: fairseq-generate's tokenized BLEU on IWSLT'14 (lowercased, Moses-tokenized
  data, BPE removed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import sacrebleu
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.aggregation import MeanMetric

from ..models.base import TranslationNetwork
from ..models.search import beam_search, greedy_decode
from .checks import check_vocab
from .optim import param_groups


def moses_detokenizer(lang: str) -> Callable[[str], str]:
    """``sacremoses``' detokenizer for ``lang`` (an optional dependency), one line at a time."""
    try:
        from sacremoses import MosesDetokenizer
    except ImportError:
        raise ImportError("detokenize='moses' needs the sacremoses package: pip install sacremoses") from None
    detok = MosesDetokenizer(lang=lang)
    return lambda line: detok.detokenize(line.split())


def remove_bpe(line: str) -> str:
    """Undo subword-nmt: drop every ``"@@ "`` and an ``"@@"`` ending the line, as fairseq's
    ``--remove-bpe`` does (``(line + " ").replace("@@ ", "").rstrip()``); an ``@@`` inside a
    word is left alone."""
    return (line + " ").replace("@@ ", "").rstrip()


def inverse_sqrt(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warmup to the base rate, then decay with ``1/sqrt(step)`` (fairseq)."""
    warmup_steps = max(warmup_steps, 1)
    return LambdaLR(optimizer, lambda step: min((step + 1) / warmup_steps,
                                                math.sqrt(warmup_steps / (step + 1))))


class Translation(LightningModule):
    """Train and evaluate a translation model.

    Args:
        network: e.g. mmkit's ``Seq2SeqTransformer``; a network of your own subclasses
            :class:`mmkit.models.TranslationNetwork` and has its interface.
        optimizer: builds the optimizer from the parameter groups.
        scheduler: an LR scheduler stepped per epoch; by default inverse-sqrt with
            ``warmup_steps`` stepped per optimizer step.
        warmup_steps: warmup of the default schedule.
        label_smoothing: label smoothing ε of the training loss.
        label_smoothing_style: ``"uniform"`` (ε/V on every class, PyTorch's) or
            ``"fairseq"`` (ε/(V-1) on every non-target class, fairseq's).
        remove_bpe: remove subword-nmt ``@@ `` markers from hypotheses and references
            before scoring, and from predictions (fairseq's ``--remove-bpe``).
        detokenize: ``moses`` detokenizes hypotheses and references (after ``remove_bpe``) for
            ``<stage>/bleu`` with sacremoses in the data's target language; ``none`` scores the
            text as it is. ``<stage>/bleu_tok`` always scores the tokenized text.
        beam: beam size for evaluation and ``predict`` (1 = greedy).
        len_penalty: length penalty of the beam search.
        max_len_a, max_len_b: outputs are at most ``a · source length + b`` tokens.
    """

    def __init__(self, network: TranslationNetwork, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: LRSchedulerCallable | None = None, warmup_steps: int = 4000,
                 label_smoothing: float = 0.1, beam: int = 5, len_penalty: float = 1.0,
                 max_len_a: float = 1.5, max_len_b: int = 10,
                 label_smoothing_style: Literal["uniform", "fairseq"] = "uniform",
                 remove_bpe: bool = False, detokenize: Literal["none", "moses"] = "none") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0 or beam < 1 or warmup_steps < 0:
            raise ValueError("need 0 <= label_smoothing < 1, beam >= 1 and warmup_steps >= 0")
        if label_smoothing_style not in ("uniform", "fairseq"):
            raise ValueError("label_smoothing_style must be uniform or fairseq, "
                             f"got {label_smoothing_style!r}")
        if detokenize not in ("none", "moses"):
            raise ValueError(f"detokenize must be none or moses, got {detokenize!r}")
        if detokenize == "moses":
            moses_detokenizer("en")  # fail now, not after the first epoch, without sacremoses
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._outputs: list[tuple[int, str]] = []
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()  # per target token

    def setup(self, stage: str) -> None:
        self.check_data()

    def check_data(self) -> None:
        """Refuse a tokenizer larger than the network's vocabulary (see :mod:`.checks`); with
        separate dictionaries, the target ids must fit the output layer and all ids the
        network's own source embedding; the decoder must start from the data's start token."""
        data, net = self.trainer.datamodule, self.network
        start = getattr(data, "decoder_start_id", None)
        if isinstance(start, int) and start != getattr(net, "bos_id", start):
            raise ValueError(f"the data starts the decoder with token id {start} but the network's bos_id "
                             f"is {net.bos_id}; set model.network.init_args.bos_id: {start} (fairseq's "
                             "boundaries start from </s>)")
        target = getattr(data, "target_vocab_size", None)
        if getattr(data, "tokenizer", None) is None or target is None or target == data.vocab_size:
            check_vocab(self)
            return
        if target > net.vocab_size:
            raise ValueError(f"the target dictionary has {target} tokens but the network's vocab_size is "
                             f"{net.vocab_size}; set model.network.init_args.vocab_size >= {target}")
        src_embed = getattr(net, "src_embed", None)
        rows = net.vocab_size if src_embed is None else src_embed.num_embeddings
        if data.vocab_size > rows:
            raise ValueError(f"the source side uses {data.vocab_size} token ids but the network's source "
                             f"embedding has {rows}; set model.network.init_args.share_all_embeddings=false "
                             f"and src_vocab_size >= {data.vocab_size}")

    def _loss(self, batch: dict[str, Tensor], smoothing: float) -> Tensor:
        logits = self.network(batch["src"], batch["tgt_in"])
        if self.hparams.get("label_smoothing_style") == "fairseq" and smoothing > 0:
            # ε/(V-1) on each other class is PyTorch's ε' = ε·V/(V-1) (ε'/V each, 1-ε on the target)
            vocab = logits.shape[-1]
            smoothing = smoothing * vocab / (vocab - 1)
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
        texts = self.trainer.datamodule.tokenizer.decode_batch(ids)
        return [remove_bpe(t) for t in texts] if self.hparams.get("remove_bpe") else texts

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
        if self.hparams.get("remove_bpe"):  # the hypotheses lost theirs in translate()
            refs = [remove_bpe(r) for r in refs]
        tok = sacrebleu.BLEU(tokenize="none").corpus_score(hyps, [refs])
        detok_hyps, detok_refs = hyps, refs
        if self.hparams.get("detokenize") == "moses":
            lang = getattr(getattr(self.trainer.datamodule, "hparams", None), "tgt_lang", None) or "en"
            detok = moses_detokenizer(lang)
            detok_hyps, detok_refs = [detok(h) for h in hyps], [detok(r) for r in refs]
        bleu = sacrebleu.BLEU()
        score = bleu.corpus_score(detok_hyps, [detok_refs])
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
