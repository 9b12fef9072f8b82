"""What ``mmkit --help`` and ``mmkit ... --<...>normalizer.help NAME`` print.

``--model.network.normalizer`` takes a spec, not a class, so jsonargparse cannot show its
help; :func:`normalizer_help` answers those flags from the normalizer registry instead.
"""

from __future__ import annotations

import inspect
import re

from .. import __version__
from ..normalizers import GRID_NORMALIZERS, NORMALIZERS, normalizer_class

COMMANDS: dict[str, str] = {
    "fit": "train a model from a config (`-c configs/vit/mnist.yaml`); `--ckpt_path last` resumes",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "write predictions.csv (and .txt for translation) for a checkpoint",
    "ablate": "run a normalizer x seed x config grid: a results table, a summary and a plot",
    "figures": "draw the analysis figures: simplex, pareto, sigma, attention, alignment, layers, ...",
    "export": "write a checkpoint's network as model.safetensors + config.json (no Lightning to load)",
    "demo": "print every normalizer on the MultiMax paper's Figure 1 input",
}
NORMALIZER_HELP = re.compile(r"^--(?:[\w]+\.)*\w*normalizer\.help(?:=(.*))?$")


def version_text() -> str:
    return f"mmkit {__version__}\n"


def main_help() -> str:
    width = max(*map(len, COMMANDS), len("-h, --help"))
    lines = [
        "usage: mmkit <command> [options]",
        "",
        f"mmkit {__version__}: train and evaluate models with a pluggable attention and output "
        f"normalizer ({', '.join(GRID_NORMALIZERS)}, ...).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}  show this help and exit",
        f"  {'--version':<{width}}  show mmkit's version and exit",
        "",
        "`mmkit <command> --help` shows a command's options. A config named configs/... is read",
        "from the working directory, or else from the configs shipped with mmkit.",
    ]
    return "\n".join(lines) + "\n"


def demo_help() -> str:
    return ("usage: mmkit demo\n\nPrint every normalizer on the MultiMax paper's Figure 1 input "
            "v = (10, 8, -1): its probabilities, sparsity S and multi-modality M. No options.\n")


def normalizer_help(args: list[str]) -> str | None:
    """The help a ``--...normalizer.help [NAME]`` flag in ``args`` asks for, or ``None``."""
    for i, arg in enumerate(args):
        found = NORMALIZER_HELP.match(arg)
        if not found:
            continue
        name = found.group(1)
        if name is None and i + 1 < len(args) and not args[i + 1].startswith("-"):
            name = args[i + 1]
        return _one_normalizer(name) if name else _registry()
    return None


def _public_path(cls: type) -> str:
    """``mmkit.normalizers.MultiMax`` rather than ``mmkit.normalizers.multimax.MultiMax``."""
    package = cls.__module__.rpartition(".")[0]
    module = package if package == "mmkit.normalizers" else cls.__module__
    return f"{module}.{cls.__name__}"


def _registry() -> str:
    rows = [f"  {name:<10} {_public_path(cls)}: {_summary(cls)}" for name, cls in NORMALIZERS.items()]
    lines = ["A normalizer option takes a registry name, a class path, or a dict with its options:", "",
             *rows, "",
             "  e.g. --model.network.normalizer multimax",
             "       --model.network.normalizer '{name: entmax, alpha: 1.3}'",
             "       --model.network.normalizer '{class_path: mmkit.normalizers.MultiMax, "
             "init_args: {order: 3}}'",
             "",
             "`--model.network.normalizer.help NAME` shows one normalizer's options."]
    return "\n".join(lines) + "\n"


def _one_normalizer(name: str) -> str:
    cls = normalizer_class(name)  # a ValueError naming the choices for an unknown name
    label = next((key for key, value in NORMALIZERS.items() if value is cls), _public_path(cls))
    params = list(inspect.signature(cls).parameters.values())
    lines = [f"{label}: {_public_path(cls)}", "", inspect.getdoc(cls) or "", "", "options:"]
    for param in params:
        default = "" if param.default is inspect.Parameter.empty else f" (default: {param.default!r})"
        annotation = param.annotation
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        lines.append(f"  {param.name}: {kind}{default}")
    if not params:
        lines.append("  (none)")
    example = next((f", {p.name}: {p.default!r}" for p in params
                    if p.default is not inspect.Parameter.empty and p.default is not None), "")
    lines += ["", f"e.g. --model.network.normalizer '{{name: {label}{example}}}'"]
    return "\n".join(lines) + "\n"


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n", 1)[0].rstrip(".")
