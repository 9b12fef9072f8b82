"""Checks that tie a task's network to its data module."""

from __future__ import annotations

from lightning.pytorch import LightningModule


def check_vocab(task: LightningModule) -> None:
    """``ValueError`` when the data's tokenizer has more tokens than the network embeds."""
    data_vocab = getattr(task.trainer.datamodule, "vocab_size", None)
    if isinstance(data_vocab, int) and data_vocab > task.network.vocab_size:
        raise ValueError(f"the tokenizer has {data_vocab} tokens but the network's vocab_size "
                         f"is {task.network.vocab_size}; set model.network.init_args.vocab_size "
                         f">= {data_vocab}")
