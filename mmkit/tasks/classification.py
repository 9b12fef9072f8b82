"""Image classification: a thin LightningModule around any classifier network.

The network (e.g. :class:`~mmkit.models.VisionTransformer`) owns its attention
normalizers and its ``output_normalizer``; the loss is that normalizer's own
output loss (CE on σ(logits) for MultiMax, Fenchel-Young for SparseMax/EntMax).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ..models.base import ImageClassifierNetwork
from ..models.pretrained import load_weights
from ..normalizers import Normalizer, SoftMax
from .checks import check_images
from .optim import apply_lr_scales, param_groups, warmup_cosine


class ImageClassification(LightningModule):
    """Train and evaluate an image classifier.

    Args:
        network: maps images ``[B, C, H, W]`` to logits, e.g. mmkit's ``VisionTransformer``;
            a network of your own subclasses :class:`mmkit.models.ImageClassifierNetwork`
            (an ``nn.Module``). It may have an ``output_normalizer`` (SoftMax otherwise) and
            ``no_weight_decay()``.
        optimizer: builds the optimizer from the parameter groups (no weight decay
            for norms, biases, position embeddings and normalizer parameters).
        scheduler: an LR scheduler stepped per epoch; by default a per-step linear
            warmup over ``warmup_epochs`` and cosine decay to ``min_lr_ratio``.
        warmup_epochs: warmup length of the default schedule (fractions allowed).
        min_lr_ratio: final learning rate of the default schedule, relative to the base.
        label_smoothing: label smoothing of the output loss.
        mixup_alpha: MixUp Beta(α, α) mixing while training (0 = off).
        cutmix_alpha: CutMix Beta(α, α) mixing while training (0 = off); with both,
            each batch picks one of the two at random (as DeiT does).
        init_weights: start ``fit`` from pretrained weights: an export directory (``mmkit
            export``) or a timm ViT/DeiT weights file (``.safetensors``, ``.pth``, ``.bin``). The
            file is read at setup (not when the config is parsed); positions are resized to the
            network's image size, a head of other classes starts fresh, normalizer parameters
            keep their init. A resumed run (``--ckpt_path``) reads it too, then its checkpoint's
            weights replace it.
        init_timm_model: the timm model name of a timm ``init_weights`` file (e.g.
            ``deit_small_patch16_224``), to check the network's heads, epsilon and pooling
            against it (the weights' shapes cannot say the number of heads).
        init_num_heads: the number of attention heads of a timm ``init_weights`` file, when
            there is no ``init_timm_model`` to read it from (one of the two is required for a
            timm file: its weights do not say how they split into heads).
        layer_decay: layer-wise learning-rate decay (e.g. 0.75): block ``i`` of ``depth`` learns
            at ``lr * layer_decay ** (depth - i)``, the embeddings at ``lr * layer_decay ** (depth
            + 1)``, the head at ``lr``; for networks with ``blocks`` (mmkit's ViT).
        normalizer_lr: a learning rate of its own for the normalizer parameters (MultiMax's
            SegLU scalars, which start fresh when fine-tuning a SoftMax model).
    """

    def __init__(
        self,
        network: ImageClassifierNetwork,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        init_weights: str | None = None,
        init_timm_model: str | None = None,
        init_num_heads: int | None = None,
        layer_decay: float | None = None,
        normalizer_lr: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if warmup_epochs < 0 or mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("warmup_epochs, mixup_alpha and cutmix_alpha must be >= 0")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if normalizer_lr is not None and not normalizer_lr > 0:
            raise ValueError(f"normalizer_lr must be positive, got {normalizer_lr}")
        if (init_timm_model or init_num_heads) and not init_weights:
            raise ValueError("init_timm_model and init_num_heads describe init_weights; set init_weights too")
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.network = network
        self._weights_loaded = False
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.num_classes = _num_classes(network)
        self.mix = _mixing(mixup_alpha, cutmix_alpha, self.num_classes)
        top5 = min(5, self.num_classes)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc1", MulticlassAccuracy(self.num_classes, average="micro"))
            setattr(self, f"{stage}_acc5",
                    MulticlassAccuracy(self.num_classes, top_k=top5, average="micro"))
        for stage in ("val", "test"):  # mean over images, exact under DDP (unequal shards)
            setattr(self, f"{stage}_loss", MeanMetric())

    def setup(self, stage: str) -> None:
        self.check_data()
        self.prepare_network(stage)

    def prepare_network(self, stage: str) -> None:
        """Load ``init_weights`` into the network before ``fit``, once. The CLI calls it before
        the run directory gets its first file, so a bad weights file leaves nothing behind."""
        if stage == "fit" and self.hparams.init_weights and not self._weights_loaded:
            load_weights(self.network, self.hparams.init_weights, self.hparams.init_timm_model,
                         self.hparams.init_num_heads)
            self._weights_loaded = True

    def check_data(self) -> None:
        """Refuse data whose images or classes do not fit the network (see :mod:`.checks`)."""
        check_images(self)

    @property
    def output_normalizer(self) -> Normalizer:
        return getattr(self.network, "output_normalizer", None) or _SOFTMAX

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def _ranking(self, logits: Tensor) -> Tensor:
        """Scores whose order is the output normalizer's order (for top-k accuracy)."""
        return self.output_normalizer.ranking(logits)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, target = batch
        labels = target
        if self.mix is not None:
            images, target = self.mix(images, target)  # target: [B, K] class probabilities
        logits = self(images)
        loss = self.output_normalizer.loss(logits, target,
                                           label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        if self.mix is None:
            self.train_acc1.update(self._ranking(logits.detach()), labels)
        return loss

    def on_train_epoch_end(self) -> None:
        """The epoch's training accuracy (when batches were not mixed), logged here rather than
        from ``training_step`` so that a run resumed from the epoch's last batch logs it too."""
        if self.train_acc1._update_count:
            self.log("train/acc1", self.train_acc1.compute(), sync_dist=False)
            self.train_acc1.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint carries the epoch's running training accuracy, so that after a
        mid-epoch resume ``train/acc1`` still counts the whole epoch, as an uninterrupted
        run's does."""
        acc = self.train_acc1
        checkpoint["train_acc1"] = {"state": {k: v.detach().cpu() for k, v in acc.metric_state.items()},
                                    "updates": acc._update_count}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("train_acc1")
        if saved is not None:
            for name, value in saved["state"].items():
                setattr(self.train_acc1, name, value.to(self.device))
            self.train_acc1._update_count = saved["updates"]

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = self.output_normalizer.loss(logits, labels)
        ranking = self._ranking(logits)
        acc1, acc5 = getattr(self, f"{stage}_acc1"), getattr(self, f"{stage}_acc5")
        acc1(ranking, labels)
        acc5(ranking, labels)
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss, weight=labels.shape[0])
        self.log(f"{stage}/loss", mean_loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc1", acc1, prog_bar=True)
        self.log(f"{stage}/acc5", acc5)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int) -> dict:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(images)
        return {"pred": self._ranking(logits).argmax(-1),
                "probs": self.output_normalizer(logits, dim=-1)}

    @staticmethod
    def prediction_rows(output: dict) -> list[dict]:
        """Rows of ``predictions.csv``: the class and its probability per image."""
        chosen = output["probs"].gather(-1, output["pred"][:, None])[:, 0]
        return [{"pred": p, "prob": f"{q:.6g}"}
                for p, q in zip(output["pred"].tolist(), chosen.tolist())]

    def configure_optimizers(self):
        groups = param_groups(self.network, self.hparams.layer_decay, self.hparams.normalizer_lr)
        optimizer = apply_lr_scales(self.optimizer_factory(groups))
        if self.scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(self.hparams.warmup_epochs * self._steps_per_epoch()) \
            if self.hparams.warmup_epochs > 0 else 0
        schedule = warmup_cosine(optimizer, warmup, total, self.hparams.min_lr_ratio)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (for ``warmup_epochs``). With ``max_steps`` set and no
        ``max_epochs``, Lightning has not loaded the training data yet, so load it here."""
        trainer = self.trainer
        if math.isinf(trainer.num_training_batches):
            trainer.fit_loop.setup_data()
        if math.isinf(trainer.num_training_batches):
            raise ValueError("warmup_epochs needs a training set of known length; "
                             "use a scheduler that counts steps instead")
        return math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)


_SOFTMAX = SoftMax()


def _num_classes(network: nn.Module) -> int:
    num_classes = getattr(network, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError("the network must have an integer attribute num_classes >= 2 "
                         f"(got {num_classes!r})")
    return num_classes


def _mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
