"""Files that are whole or absent, and checkpoints read one way.

- :func:`atomic_open` (and :func:`write_text_atomic`, :func:`write_json_atomic`): write to a
  temporary file beside the target, fsync, then rename it over the target, so a reader (or a
  rerun after a kill) sees the old file or the new one, never half of one. Temporary files
  are named ``.mmkit-partial-<pid>-<hex>.tmp``; :func:`remove_stale_partials` deletes those
  whose process is gone.
- :func:`read_checkpoint`: a checkpoint loaded memory-mapped on the CPU with torch's safe
  loader, or one clear ``ValueError`` saying what is wrong with the file.
- :func:`resolve_config`: ``configs/...`` paths that are not found from the working directory
  are the configs shipped inside the package (so the README's commands work after ``pip
  install``, from any directory).

This module imports nothing of mmkit: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
TEMP_PREFIX = ".mmkit-partial-"  # never contains "hpc_ckpt_", "last" or ".ckpt": no glob mistakes it
PARTIAL_NAME = re.compile(r"^\.mmkit-partial-(\d+)-[0-9a-f]+\.tmp$")


def temp_path(directory: str | os.PathLike) -> str:
    """A fresh temporary file name in ``directory`` (see :data:`PARTIAL_NAME`)."""
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_partials(directory: str | os.PathLike, min_age_s: float = 60.0) -> list[str]:
    """Delete the temporary files of writes that never finished (the process that wrote them
    is gone, e.g. killed mid-write, and the file is older than ``min_age_s``); returns their
    names."""
    removed = []
    now = time.time()
    for entry in os.scandir(directory):
        found = PARTIAL_NAME.match(entry.name)
        if not found or pid_alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime >= min_age_s:
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing whose result appears at ``path`` only when the block
    ends without an error (then flushed, fsynced and renamed over ``path``; a symlink there
    is replaced, not followed). On an error the temporary file is removed and ``path`` is
    untouched. The parent folder is created; text modes default to UTF-8."""
    if not any(m in mode for m in "wx") or "+" in mode:
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w' or 'wb', got {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = temp_path(directory)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, like open()
    try:
        with os.fdopen(fd, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(directory)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_open`)."""
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def read_checkpoint(path: str | os.PathLike, trust: bool = False, lightning: bool = True) -> dict[str, Any]:
    """Load a checkpoint memory-mapped on the CPU (tensors are not read into memory) with
    torch's safe loader, which runs no code from the file; raise one clear ``ValueError``
    when it is missing, truncated, corrupt, not a checkpoint, or holds objects the safe loader
    refuses. ``trust`` (``--weights_only false``) uses the full unpickler, for a file the user
    trusts. With ``lightning`` the file must be a Lightning checkpoint (a ``state_dict`` key);
    without, any dict (e.g. a plain state dict) is returned."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    what = f"checkpoint {path} is unreadable"
    todo = ("it is probably truncated or corrupt (a crash or a copy cut short); "
            "use another checkpoint, e.g. an earlier epoch=*.ckpt, or copy it again")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what}: the file is empty; {todo}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=not trust, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=not trust)  # legacy (non-zip) format
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad bytes
        if "Weights only load failed" in str(err) and "GLOBAL" in str(err):
            raise ValueError(unsafe_checkpoint_message(path, err)) from None
        reason = " ".join(str(err).split()).split(". ")[0][:120] or type(err).__name__
        raise ValueError(f"{what} ({type(err).__name__}: {reason}); {todo}") from err
    if lightning and not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)):
        got = f"keys {few(sorted(map(str, ckpt)))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict'; it holds "
                         f"{got}); pass a .ckpt file saved by `mmkit fit`")
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of tensors")
    return ckpt


def few(names: list[str], shown: int = 4) -> str:
    """The first ``shown`` of ``names``, and how many more there are."""
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def unsafe_checkpoint_message(path: str | os.PathLike, err: BaseException) -> str:
    """Why the safe loader refused ``path``: the Python object it would have had to create."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" ({found.group(1)})" if found else ""
    return (f"checkpoint {path} holds Python objects{what} that the safe loader refuses to create, so "
            "nothing in it was run; mmkit's own checkpoints never need them. If you trust the file "
            "(e.g. one an older tool wrote for you), load it with --weights_only false")


def resolve_config(path: str) -> str:
    """``path`` when it exists from the working directory; else, for ``configs/<rest>``, the
    file or folder of that name shipped with mmkit when there is one; else ``path`` as given
    (so the caller's own error names what the user typed)."""
    if os.path.exists(path):
        return path
    parts = Path(path).parts
    if len(parts) > 1 and parts[0] == "configs":
        shipped = SHIPPED_CONFIGS.joinpath(*parts[1:])
        if shipped.exists():
            return str(shipped)
    return path


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``-c``/``--config`` file resolved by :func:`resolve_config`."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out
