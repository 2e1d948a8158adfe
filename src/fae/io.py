"""Atomic file writes: write to a temp name in the same folder, fsync, rename.

A crash mid-write leaves either the old file or the new one, never a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save


# The dtypes a cache file may store tensors in (token cache, latent cache), by config name.
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def storage_dtype(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16``; anything else is a ValueError naming the choices."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got '{name}'")
    return STORAGE_DTYPES[name]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync it, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp makes 0600; the file gets what open() would give it
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _new_file_mode() -> int:
    """0666 less the process umask: the mode a plain ``open(path, "w")`` creates files with."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    # Streamed into the temp file: a serialised copy in memory first would double the host memory
    # of every checkpoint (SiT-XL's training state is ~13.5 GB; found by bench/rehearse.py).
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))


def atomic_save_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def read_json_object(path: str | os.PathLike, error: type[Exception]) -> dict:
    """The JSON object in ``path``; a file that is not valid JSON, or not an object, raises
    ``error`` naming it (callers say what a missing file means in their own words)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"'{path}' does not hold a JSON object")
    return data
