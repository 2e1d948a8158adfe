"""Atomic file writes: write to a temp name in the same folder, fsync, rename.

A crash mid-write leaves either the old file or the new one, never a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

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


# The safetensors format's dtype names, in the order its writer lays tensors out (widest first, so
# every tensor starts at a multiple of its item size; ties by name).
SAFETENSORS_DTYPES = {torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32",
                      torch.uint32: "U32", torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.uint16: "U16", torch.int16: "I16", torch.float8_e4m3fn: "F8_E4M3",
                      torch.float8_e5m2: "F8_E5M2", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_LAYOUT_RANK = {dtype: rank for rank, dtype in enumerate(SAFETENSORS_DTYPES)}


def safetensors_chunks(tensors: dict[str, torch.Tensor],
                       metadata: dict[str, str] | None = None) -> Iterator[bytes | memoryview]:
    """The bytes of ``tensors`` as a safetensors file, byte for byte what ``safetensors.torch.save``
    returns (an 8-byte little-endian header length; a JSON header of each tensor's dtype, shape and
    byte range, padded with spaces to 8 bytes; the tensors' bytes), as the header and then one
    zero-copy view per tensor: ``save`` first holds a byte copy of every tensor and the whole file
    in memory, twice the weights (a 1.4B STARFlow export ran a 24 GiB machine out of memory in
    bench/rehearse.py)."""
    flat = {name: t.detach() for name, t in tensors.items()}  # to the CPU one at a time, as written
    _refuse_shared(flat)
    order = sorted(flat, key=lambda name: (_layout_rank(name, flat[name]), name))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        size = flat[name].numel() * flat[name].element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[flat[name].dtype], "shape": list(flat[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    yield struct.pack("<Q", len(text)) + text
    for name in order:
        yield memoryview(flat[name].cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """``tensors`` as a safetensors file, streamed tensor by tensor (:func:`safetensors_chunks`)."""

    def write(f) -> None:
        for chunk in safetensors_chunks(tensors, metadata):
            f.write(chunk)

    return atomic_write(path, write)


def safetensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of ``tensors``' safetensors bytes (those of ``safetensors.torch.save``), hashed
    as they stream: no copy of the tensors."""
    digest = hashlib.sha256()
    for chunk in safetensors_chunks(tensors):
        digest.update(chunk)
    return digest.hexdigest()


def _layout_rank(name: str, tensor: torch.Tensor) -> int:
    if tensor.dtype not in _LAYOUT_RANK:
        raise ValueError(f"tensor '{name}': dtype {tensor.dtype} has no safetensors name "
                         f"(one of {', '.join(map(str, SAFETENSORS_DTYPES))})")
    return _LAYOUT_RANK[tensor.dtype]


def _refuse_shared(tensors: dict[str, torch.Tensor]) -> None:
    """Tensors that overlap in memory (tied weights) would load back as separate copies, so they are
    refused, as safetensors refuses them; the error names them. (A non-contiguous view is written
    from a copy of its own, so it shares nothing.)"""
    spans = sorted((t.device.type, t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(),
                    t.numel() * t.element_size(), name)
                   for name, t in tensors.items() if t.numel() and t.is_contiguous())
    for (device, start, size, name), (next_device, next_start, _, next_name) in zip(spans, spans[1:]):
        if device == next_device and next_start < start + size:
            raise ValueError(f"tensors '{name}' and '{next_name}' share memory (tied weights?): save one "
                             "of them, or a clone")


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
