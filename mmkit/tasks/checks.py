"""Checks that tie a task's network to its data module.

Each task's ``check_data()`` runs these. The ``mmkit`` command calls it after the data
module's ``setup`` and before the run directory gets its first file, so a model that does
not fit its data is refused with nothing written; the task's own ``setup`` calls it again
for runs outside the command.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule


def check_vocab(task: LightningModule) -> None:
    """``ValueError`` when the data's tokenizer has more tokens than the network embeds."""
    tokenizer = getattr(task.trainer.datamodule, "tokenizer", None)
    if tokenizer is None:
        return
    data_vocab, model_vocab = tokenizer.get_vocab_size(), task.network.vocab_size
    if data_vocab > model_vocab:
        raise ValueError(f"the tokenizer has {data_vocab} tokens but the network's vocab_size "
                         f"is {model_vocab}; set model.network.init_args.vocab_size >= {data_vocab}")


def check_images(task: LightningModule) -> None:
    """``ValueError`` when the data's images or classes do not fit the network (a network
    without ``in_chans``/``img_size`` attributes is checked on its classes only)."""
    data = task.trainer.datamodule
    classes = getattr(data, "num_classes", None)
    if isinstance(classes, int) and classes != task.num_classes:
        raise ValueError(f"the data has {classes} classes but the network outputs "
                         f"{task.num_classes}; set the network's num_classes to {classes}")
    net = task.network
    wanted = (getattr(net, "in_chans", None), getattr(net, "img_size", None))
    given = (getattr(data, "in_chans", None), getattr(data, "img_size", None))
    if all(isinstance(v, int) for v in (*wanted, *given)) and wanted != given:
        shape = (given[0], given[1], given[1])
        expects = f"[B, {wanted[0]}, {wanted[1]}, {wanted[1]}]"
        raise ValueError(f"the data gives images of shape [B, {', '.join(map(str, shape))}], which do "
                         f"not fit this {type(net).__name__}: it expects {expects}; set the model's "
                         "img_size/in_chans or the data's img_size to match")
