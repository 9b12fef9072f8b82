"""The normalizer library: one file per normalizer, one registry.

Build one by registry name or by class path (as YAML configs do)::

    build_normalizer("multimax", order=2)
    build_normalizer("mmkit.normalizers.Entmax", alpha=1.3, learnable=True)

Adding a normalizer takes one new file and one line in :data:`NORMALIZERS`; the
property tests loop over this dict.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Union

from .base import FusedForm, Normalizer
from .entmax import Entmax, entmax_bisect
from .entmax15 import Entmax15, entmax15
from .evsoftmax import EvSoftMax
from .losses import cross_entropy, fenchel_young_loss, tsallis_omega
from .multimax import MultiMax, seglu
from .softmax import SoftMax
from .sparsemax import SparseMax, sparsemax

NORMALIZERS: dict[str, type[Normalizer]] = {
    "softmax": SoftMax,
    "sparsemax": SparseMax,
    "entmax15": Entmax15,
    "entmax": Entmax,
    "multimax": MultiMax,
    "evsoftmax": EvSoftMax,
}
#: The registry names a grid runs when it names none, in registry order (every entry whose
#: class has ``in_default_grid``): softmax, sparsemax, entmax15, entmax, multimax.
GRID_NORMALIZERS: tuple[str, ...] = tuple(name for name, cls in NORMALIZERS.items() if cls.in_default_grid)


def normalizer_class(name: str) -> type[Normalizer]:
    """The class a registry name or ``module.Class`` path names."""
    key = name.lower() if isinstance(name, str) else name
    if key in NORMALIZERS:
        return NORMALIZERS[key]
    if isinstance(name, str) and "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import normalizer class {name!r}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, Normalizer)):
            raise ValueError(f"{name!r} is not a subclass of mmkit.normalizers.Normalizer")
        if cls is Normalizer:
            raise ValueError(f"{name!r} is not a normalizer but their base class, which normalizes nothing; "
                             f"give a subclass, e.g. one of {', '.join(NORMALIZERS)}")
        return cls
    raise ValueError(
        f"unknown normalizer {name!r}; choose one of {', '.join(NORMALIZERS)} "
        "or give a class path such as mmkit.normalizers.MultiMax"
    )


def build_normalizer(name: str, **kwargs: Any) -> Normalizer:
    """Instantiate a normalizer from a registry name or a ``module.Class`` path."""
    if isinstance(name, Normalizer):
        return name
    cls = normalizer_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for normalizer {name!r}: {err}") from None


#: How configs name a normalizer: a registry name or class path (``"multimax"``), or a
#: dict with its arguments, either ``{"name": "entmax", "alpha": 1.3}`` or the
#: jsonargparse form ``{"class_path": ..., "init_args": {...}}``. Models build one
#: instance per layer from it, so every layer learns its own parameters.
NormalizerSpec = Union[str, dict[str, Any]]


def split_spec(spec: NormalizerSpec) -> tuple[str, dict[str, Any]]:
    """A :data:`NormalizerSpec` as ``(name or class path, constructor arguments)``."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict):
        raise ValueError(f"a normalizer is a name or a dict, got {type(spec).__name__}: {spec!r}")
    spec = dict(spec)
    if "class_path" in spec:
        name, kwargs = spec.pop("class_path"), dict(spec.pop("init_args", None) or {})
        if spec:
            raise ValueError(f"unexpected keys {sorted(spec)} next to class_path in {spec!r}")
        return name, kwargs
    if "name" in spec:
        return spec.pop("name"), spec
    raise ValueError(f"a normalizer dict needs a 'name' or 'class_path' key, got {spec!r}")


def make_normalizer(spec: NormalizerSpec, **overrides: Any) -> Normalizer:
    """Build a fresh normalizer from a :data:`NormalizerSpec` (plus ``overrides``)."""
    name, kwargs = split_spec(spec)
    return build_normalizer(name, **kwargs, **overrides)


def describe_normalizer(spec: NormalizerSpec) -> dict[str, Any]:
    """What ``spec`` builds, however it is written: ``{"class": module.Class, <every constructor
    argument, defaults filled in>}``. ``"multimax"``, ``{"name": "multimax"}`` and
    ``{"class_path": "mmkit.normalizers.MultiMax", "init_args": {"order": 2}}`` describe alike."""
    name, kwargs = split_spec(spec)
    cls = normalizer_class(name)
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for normalizer {name!r}: {err}") from None
    bound.apply_defaults()
    arguments = {k: v for k, v in bound.arguments.items()
                 if bound.signature.parameters[k].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                inspect.Parameter.VAR_KEYWORD)}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", **arguments}


__all__ = [
    "NORMALIZERS", "GRID_NORMALIZERS", "FusedForm", "Normalizer", "NormalizerSpec", "build_normalizer",
    "make_normalizer",
    "describe_normalizer", "normalizer_class", "split_spec",
    "SoftMax", "SparseMax", "Entmax15", "Entmax", "MultiMax", "EvSoftMax",
    "sparsemax", "entmax15", "entmax_bisect", "seglu",
    "cross_entropy", "fenchel_young_loss", "tsallis_omega",
]
