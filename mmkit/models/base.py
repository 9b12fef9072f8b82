"""The base classes of mmkit's networks, one per task.

A task's ``network`` option accepts a subclass of its base (``--model.help`` and
``--model.network.help`` list mmkit's own). A network of your own is an ordinary
``nn.Module`` that subclasses the base of its task:

- :class:`ImageClassifierNetwork`: ``forward(images [B, C, H, W]) -> logits [B, K]`` and a
  ``num_classes`` attribute (or a last ``Linear`` layer the task can read it from);
- :class:`LanguageModelNetwork`: the interface of :class:`~mmkit.models.TransformerXL`
  (``forward_hidden``, ``head_loss``, ``target_log_prob``, ``vocab_size``);
- :class:`TranslationNetwork`: the interface of :class:`~mmkit.models.Seq2SeqTransformer`
  (``forward``, ``encode``, ``decode``, ``new_caches``, ``log_probs``, the special ids).

The bases add nothing to a module: no parameters, no change to ``state_dict``; they only make
``forward`` abstract.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

from torch import nn


class Network(nn.Module, metaclass=ABCMeta):
    """Base of every mmkit network (abstract: a subclass defines ``forward``)."""

    @abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The network's forward pass."""


class ImageClassifierNetwork(Network):
    """A network for :class:`~mmkit.tasks.ImageClassification`: images to class logits."""


class LanguageModelNetwork(Network):
    """A network for :class:`~mmkit.tasks.LanguageModeling`."""


class TranslationNetwork(Network):
    """A network for :class:`~mmkit.tasks.Translation`."""


__all__ = ["Network", "ImageClassifierNetwork", "LanguageModelNetwork", "TranslationNetwork"]
