"""Imports flow one way: kernels <- normalizers <- nn <- models.

Every module under ``mmkit/`` is parsed with :mod:`ast` and its ``mmkit`` imports are
collected: absolute and relative, at module level or inside functions (also under
``TYPE_CHECKING``). The rule, as data in :data:`ALLOWED`:

- ``mmkit/kernels/`` imports nothing of mmkit outside ``mmkit/kernels/``;
- ``mmkit/normalizers/`` imports only kernels and normalizers;
- ``mmkit/nn/`` imports only kernels, normalizers and nn;
- ``mmkit/models/`` imports only kernels, normalizers, nn and models, and no model
  module imports another one: only the helpers in :data:`MODEL_HELPERS` (and the
  package ``__init__``) are shared;
- none of these layers imports Lightning (:data:`LIGHTNING`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "mmkit"

#: Layer (first package under mmkit) -> the mmkit layers its modules may import.
ALLOWED: dict[str, frozenset[str]] = {
    "kernels": frozenset({"kernels"}),
    "normalizers": frozenset({"kernels", "normalizers"}),
    "nn": frozenset({"kernels", "normalizers", "nn"}),
    "models": frozenset({"kernels", "normalizers", "nn", "models"}),
}
#: Modules of mmkit/models/ that every model may import; any other module there is a model.
MODEL_HELPERS = frozenset({"__init__", "sizes", "search"})
#: Top-level packages of Lightning, which none of the layers in ALLOWED may import.
LIGHTNING = frozenset({"lightning", "pytorch_lightning", "lightning_fabric"})


def imported_modules(parts: tuple[str, ...], source: str) -> list[str]:
    """Dotted names imported by the module at ``mmkit/<parts>`` (relative ones resolved).

    ``from pkg import name`` yields ``pkg`` and, for ``from . import name``, ``pkg.name``
    (the name may be a submodule).
    """
    package = ["mmkit", *parts[:-1]]  # the package the module lives in (an __init__ is its own)
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                base = package[: len(package) - up] if up else package
                assert base, f"relative import above mmkit in {'/'.join(parts)}"
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            if node.module:
                names.append(base_name)
            else:
                names.extend(f"{base_name}.{alias.name}" for alias in node.names)
    return names


def violations(parts: tuple[str, ...], source: str) -> list[str]:
    """The import-direction rules broken by the module at ``mmkit/<parts>``."""
    layer = parts[0] if len(parts) > 1 else None
    if layer not in ALLOWED:
        return []
    where = "mmkit/" + "/".join(parts)
    found = []
    for name in imported_modules(parts, source):
        top, *rest = name.split(".")
        if top in LIGHTNING:
            found.append(f"{where} imports {name} (no Lightning in {layer}/)")
        if top != "mmkit":
            continue
        target = rest[0] if rest else ""
        if target not in ALLOWED[layer]:
            found.append(f"{where} imports {name}: {layer}/ may import only {sorted(ALLOWED[layer])}")
        module = parts[-1].removesuffix(".py")
        if layer == "models" == target and module not in MODEL_HELPERS and len(rest) > 1:
            other = rest[1]
            if other not in MODEL_HELPERS and other != module:
                found.append(f"{where} imports {name}: a model module imports another model module")
    return found


def _modules() -> list[tuple[str, ...]]:
    return sorted(p.relative_to(ROOT).parts for p in ROOT.rglob("*.py"))


def test_the_layers_import_one_way():
    modules = _modules()
    assert ("kernels", "__init__.py") in modules and ("models", "vit.py") in modules
    found = [v for parts in modules for v in violations(parts, ROOT.joinpath(*parts).read_text())]
    assert not found, "\n".join(found)


def test_every_model_module_is_checked_against_the_others():
    models = {p.stem for p in (ROOT / "models").glob("*.py")} - MODEL_HELPERS
    assert {"vit", "transformer_xl", "seq2seq"} <= models
    assert MODEL_HELPERS - {"__init__"} <= {p.stem for p in (ROOT / "models").glob("*.py")}


@pytest.mark.parametrize(("parts", "source"), [
    (("kernels", "x.py"), "def f():\n    from ..normalizers import MultiMax\n"),
    (("kernels", "flash", "x.py"), "from ...nn import attend\n"),
    (("kernels", "x.py"), "import mmkit.nn.attention\n"),
    (("normalizers", "x.py"), "from ..nn.masks import merge_masks\n"),
    (("nn", "x.py"), "from mmkit.models.vit import VisionTransformer\n"),
    (("nn", "x.py"), "import lightning.pytorch as pl\n"),
    (("models", "x.py"), "from ..tasks import LanguageModelingTask\n"),
    (("models", "seq2seq.py"), "from .transformer_xl import sinusoid\n"),
    (("models", "vit.py"), "from . import seq2seq\n"),
    (("models", "vit.py"), "def f():\n    from mmkit.models.transformer_xl import TransformerXL\n"),
])
def test_the_checker_catches_a_violation(parts, source):
    assert violations(parts, source)


@pytest.mark.parametrize(("parts", "source"), [
    (("kernels", "flash", "__init__.py"), "from ..switches import enabled\nfrom . import multimax_flash\n"),
    (("normalizers", "multimax.py"), "from .. import kernels\nfrom ..kernels.rows import to_rows\n"),
    (("nn", "attention.py"), "from ..kernels import flash\nfrom ..normalizers import SoftMax\n"),
    (("models", "vit.py"), "from ..nn import Block\nfrom .sizes import resolve_size\n"),
    (("models", "__init__.py"), "from .vit import VisionTransformer\nfrom .seq2seq import PRESETS\n"),
    (("tasks", "x.py"), "import lightning.pytorch as pl\nfrom ..models import VisionTransformer\n"),
])
def test_the_checker_accepts_allowed_imports(parts, source):
    assert violations(parts, source) == []
