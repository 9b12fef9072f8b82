"""Every registry entry, plus the variants with learnable or per-head parameters."""

import pytest
import torch

from mmkit.normalizers import NORMALIZERS, build_normalizer

#: (id, registry name, kwargs): every registry name at its defaults, then variants.
VARIANTS = [(name, name, {}) for name in NORMALIZERS] + [
    ("softmax-learnable-T", "softmax", {"temperature": 0.7, "learnable": True}),
    ("entmax-alpha1.3", "entmax", {"alpha": 1.3}),
    ("entmax-learnable", "entmax", {"alpha": 1.3, "learnable": True}),
    ("multimax-order1", "multimax", {"order": 1}),
    ("multimax-order3", "multimax", {"order": 3}),
    ("multimax-unfused", "multimax", {"fused": False}),
]
#: Per-head variants need scores shaped [..., H, Nq, Nk].
HEADED = [
    ("multimax-per-head", "multimax", {"num_heads": 3}),
    ("entmax-per-head", "entmax", {"alpha": 1.4, "learnable": True, "num_heads": 3}),
]


def make(name, kwargs, dtype=torch.float64, scale=0.5):
    """Build a normalizer; perturb its parameters so the test is not at a trivial point."""
    norm = build_normalizer(name, **kwargs).to(dtype)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(scale * torch.randn_like(p))
    return norm


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def variant(request):
    return request.param


@pytest.fixture(params=VARIANTS + HEADED, ids=[v[0] for v in VARIANTS + HEADED])
def any_variant(request):
    return request.param


def as_spec(variant):
    """A variant as a model would take it: ``(NormalizerSpec dict, per_head)``."""
    _, name, kwargs = variant
    kwargs = dict(kwargs)
    per_head = kwargs.pop("num_heads", None) is not None
    return {"name": name, **kwargs}, per_head
