"""One-line errors for the ``mmkit`` command: jsonargparse's reports condensed, config
files and output directories checked before anything runs or is written."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError

SECTIONS = ("trainer", "model", "data", "checkpoint", "nan_guard")  # mappings in an mmkit config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML
    would silently keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class ConfigError(Exception):
    """A command line or config file that does not parse (one line, exit 2; not a ValueError,
    so that no parsing code on the way up mistakes it for one of its own)."""


def summarize_parse_error(message: str) -> str:
    """jsonargparse's nested, multi-line report as one line: the option's path, the value
    given and what was expected (or the innermost reason)."""
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    keys = [k for line in lines for k in re.findall(r'Parser key "([^"]+)"', line)]
    where = ".".join(keys)
    for line in lines:
        if "is not accepted" in line or "does not accept option" in line:
            return (f"{where + ': ' if where else ''}{line}; check its spelling "
                    "(`mmkit fit --help` lists the options)")
    got = next((m.group(1) for line in lines if not line.startswith("Given value type")
                for m in [re.search(r"(?:Got|Given) value: (.*?)(?:\. Got value:.*)?$", line)] if m), None)
    wanted: list[str] = []
    for line in lines:
        m = re.match(r"Expected an? (.+?)(?:\. Got value:.*)?$", line)
        if m and not any(skip in m.group(1) for skip in ("NoneType", " but ", "dot import")):
            kind = re.sub(r"<class '([\w.]+)'>", r"\1", m.group(1))
            kind = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", kind)
            if kind not in wanted:
                wanted.append(kind)
    if where and wanted and got is not None:
        return (f"invalid value {got!r} for {where}: expected {' or '.join(wanted)}; "
                "fix it in the config or on the command line")
    reason = next((line for line in lines if not re.match(
        r"(Parser key|Does not validate|Subtypes|Errors|Given value|Problem with given class_path)", line)),
        " ".join(lines))
    return f"{where + ': ' if where else ''}{' '.join(reason.split())}"


def check_config_files(args: list[str]) -> None:
    """Every ``-c``/``--config`` file exists and is valid YAML; else one line naming the file."""
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if not os.path.exists(path):
            if re.search(r"\.(ya?ml|json)$", path):
                raise FileNotFoundError(f"config file {path} does not exist; check the path given to -c")
            continue  # jsonargparse also takes inline YAML
        if os.path.isdir(path):
            raise ValueError(f"config {path} is a directory; pass a YAML file with -c")
        try:
            with open(path, encoding="utf-8") as f:
                document = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"config {path} is not valid YAML: {problem}{at}; fix the file "
                             "(indentation, brackets, quotes, a ':' after each key)") from None
        except UnicodeDecodeError:
            raise ValueError(f"config {path} is not UTF-8 text; save it as UTF-8") from None
        for section in SECTIONS:
            value = document.get(section) if isinstance(document, dict) else None
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"config {path}: `{section}` must be a mapping of options (e.g. "
                                 f"`{section}: {{...}}`), got {value!r}")


def check_trainer_values(trainer: Any) -> None:
    """Trainer values that Lightning would take without complaint, or fail on with a traceback."""
    if trainer is None:
        return
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        raise ValueError(f"trainer.val_check_interval must be positive (steps, or a fraction of an epoch), "
                         f"got {interval}; null validates once per epoch")
    clip = trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and clip < 0:
        raise ValueError(f"trainer.gradient_clip_val must be >= 0 (0 or null: no clipping), got {clip}")
    check_logger_packages(trainer.get("logger"))


#: Logger class name -> (the packages any one of which it needs, the mmkit extra that installs one).
LOGGER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tb"),
    "WandbLogger": (("wandb",), "wandb"),
}


def check_logger_packages(logger: Any) -> None:
    """A logger whose package is not installed is one line naming the extra to install."""
    entries = logger if isinstance(logger, list) else [logger]
    for entry in entries:
        class_path = entry.get("class_path") if hasattr(entry, "get") else entry
        if not isinstance(class_path, str):
            continue
        name = class_path.rpartition(".")[2]
        if name not in LOGGER_PACKAGES:
            continue
        packages, extra = LOGGER_PACKAGES[name]
        if not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ValueError(f"the {name} needs the {' or '.join(packages)} package, which is not installed; "
                             f"run `pip install 'mmkit[{extra}]'`")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` exists as a writable directory or can be created: its nearest existing
    ancestor must be a writable directory. Checked before anything is written."""
    if "://" in str(path):
        return  # remote (s3://, gs://): left to fsspec
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot create the output directory {path} ({option}): {probe} is a file, "
                                 f"not a directory; set {option} to a directory you can write to")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to the output directory {path} ({option}): {probe} is not "
                              f"writable; set {option} to a directory you can write to")


def one_line(err: BaseException) -> str:
    """The error as one line; an error re-raised from a DataLoader worker ("Caught ValueError in
    DataLoader worker process 0. Original Traceback ...") keeps only the original message."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    if isinstance(err, ArgumentError) and "\n" in text:
        text = summarize_parse_error(text)
    if isinstance(err, OSError) and err.filename and err.strerror and text.startswith("[Errno"):
        text = f"{err.strerror}: {err.filename}; check that path (each parent must be a usable directory)"
    return " ".join(text.split()) or type(err).__name__
