"""Imports flow one way: kernels <- normalizers <- nn <- models <- tasks <- cli <- ablation <- entry.

Every module under ``mmkit/`` is parsed with :mod:`ast` and its ``mmkit`` imports are
collected: absolute and relative, at module level or inside functions (also under
``TYPE_CHECKING``). The rule, as data in :data:`ALLOWED`:

- ``mmkit/files.py`` (atomic writes, the checkpoint reader) imports nothing of mmkit, and
  every layer may import it;
- ``mmkit/kernels/`` imports nothing of mmkit outside ``mmkit/kernels/``;
- ``mmkit/normalizers/`` imports only kernels and normalizers;
- ``mmkit/nn/`` imports only kernels, normalizers and nn;
- ``mmkit/models/`` imports only kernels, normalizers, nn and models, and no model
  module imports another one: only the helpers in :data:`MODEL_HELPERS` (and the
  package ``__init__``) are shared;
- ``mmkit/data/`` imports nothing of mmkit outside ``mmkit/data/``; ``mmkit/tasks/`` and
  ``mmkit/analysis/`` sit on the models;
- ``mmkit/cli/`` (the CLI runtime) sits on tasks, data and analysis; ``mmkit/ablation/``
  on the CLI runtime, which is handed to it (the runner imports no ``mmkit.cli.app``);
- the ``mmkit`` command (``entry.py``, ``__main__.py``) is the top, and nothing imports it;
- Lightning (:data:`LIGHTNING`) is imported only by tasks, data, cli, ablation and the
  analysis callback (:data:`LIGHTNING_LAYERS`, :data:`LIGHTNING_MODULES`).

On top of the layer rule, no module imports itself back through others (a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "mmkit"

_CORE = frozenset({"files", "kernels", "normalizers", "nn", "models"})
#: Layer (first package under mmkit) -> the mmkit layers its modules may import.
#: ``__version__`` is the package root's one attribute, which any layer may read.
ALLOWED: dict[str, frozenset[str]] = {
    "files": frozenset(),
    "kernels": frozenset({"files", "kernels"}),
    "normalizers": frozenset({"files", "kernels", "normalizers"}),
    "nn": frozenset({"files", "kernels", "normalizers", "nn"}),
    "models": _CORE | {"__version__"},  # an export records the version
    "data": frozenset({"files", "data"}),
    "tasks": _CORE | {"tasks"},
    "analysis": _CORE | {"analysis"},
    "cli": _CORE | {"data", "tasks", "analysis", "cli", "__version__"},
    "ablation": _CORE | {"data", "tasks", "analysis", "cli", "ablation", "__version__"},
}
#: Modules of mmkit/models/ that every model may import; any other module there is a model.
MODEL_HELPERS = frozenset({"__init__", "base", "sizes", "search", "pretrained", "saving"})
#: Top-level packages of Lightning.
LIGHTNING = frozenset({"lightning", "pytorch_lightning", "lightning_fabric"})
#: The layers that may import Lightning, and the single modules elsewhere that may.
LIGHTNING_LAYERS = frozenset({"tasks", "data", "cli", "ablation"})
LIGHTNING_MODULES = frozenset({("analysis", "callback.py")})
#: The command at the top: no module of mmkit imports these (but each other).
COMMAND = frozenset({"entry", "__main__"})


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
    layer = parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")
    where = "mmkit/" + "/".join(parts)
    found = []
    for name in imported_modules(parts, source):
        top, *rest = name.split(".")
        if top in LIGHTNING and layer not in LIGHTNING_LAYERS and parts not in LIGHTNING_MODULES:
            found.append(f"{where} imports {name} (Lightning only in {sorted(LIGHTNING_LAYERS)} "
                         "and the analysis callback)")
        if top != "mmkit":
            continue
        target = rest[0] if rest else ""
        if target in COMMAND and layer not in COMMAND:
            found.append(f"{where} imports {name}: nothing imports the `mmkit` command")
        if layer == "ablation" and name.startswith("mmkit.cli.app"):
            found.append(f"{where} imports {name}: the ablation runner is handed the CLI")
        if layer in ALLOWED and target not in ALLOWED[layer]:
            found.append(f"{where} imports {name}: {layer}/ may import only {sorted(ALLOWED[layer])}")
        module = parts[-1].removesuffix(".py")
        if layer == "models" == target and module not in MODEL_HELPERS and len(rest) > 1:
            other = rest[1]
            if other not in MODEL_HELPERS and other != module:
                found.append(f"{where} imports {name}: a model module imports another model module")
    return found


def module_graph() -> dict[str, set[str]]:
    """Dotted module name -> the mmkit modules it imports (a name resolved to the module
    that defines it: ``mmkit.nn.attend`` is ``mmkit.nn``)."""
    files = {".".join(["mmkit", *p.relative_to(ROOT).parts]).removesuffix(".py").removesuffix(".__init__"): p
             for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_modules(path.relative_to(ROOT).parts, path.read_text()):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _modules() -> list[tuple[str, ...]]:
    return sorted(p.relative_to(ROOT).parts for p in ROOT.rglob("*.py"))


def test_the_layers_import_one_way():
    modules = _modules()
    assert ("kernels", "__init__.py") in modules and ("models", "vit.py") in modules
    found = [v for parts in modules for v in violations(parts, ROOT.joinpath(*parts).read_text())]
    assert not found, "\n".join(found)


def test_no_module_imports_itself_back():
    graph = module_graph()
    assert {"mmkit.cli.app", "mmkit.ablation.runner", "mmkit.entry"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_layer_is_ruled():
    layers = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert layers | {"files"} == set(ALLOWED), "a new package under mmkit/ needs its line in ALLOWED"


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
    (("data", "x.py"), "from ..tasks import ImageClassification\n"),
    (("tasks", "x.py"), "from ..cli.callbacks import request_stop\n"),
    (("analysis", "figures.py"), "from lightning.pytorch import Trainer\n"),
    (("cli", "x.py"), "def f():\n    from ..ablation.command import main\n"),
    (("cli", "x.py"), "from mmkit.entry import main\n"),
    (("ablation", "runner.py"), "def f():\n    from ..cli.app import MMKitCLI\n"),
    (("ablation", "runner.py"), "from mmkit.cli.app import check_arguments\n"),
    (("loggers.py",), "import lightning\n"),
    (("files.py",), "from .normalizers import MultiMax\n"),
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
    (("analysis", "callback.py"), "import lightning\nfrom ..nn import capture_attention\n"),
    (("cli", "provenance.py"), "from .. import __version__\nfrom ..normalizers import describe_normalizer\n"),
    (("ablation", "runner.py"), "from ..cli.callbacks import Interrupted\nimport lightning\n"),
    (("entry.py",), "from .ablation.command import main\nfrom .cli import run\n"),
    (("__main__.py",), "from .entry import main\n"),
])
def test_the_checker_accepts_allowed_imports(parts, source):
    assert violations(parts, source) == []
