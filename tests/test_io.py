"""fae.io's atomic writes: a failed write leaves the old file and no temp file, and a new file gets
the mode a plain ``open()`` would give it (not mkstemp's 0600: results must be readable by others)."""
from __future__ import annotations

import hashlib
import os
import tracemalloc

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from fae.io import atomic_save_json, atomic_save_safetensors, atomic_write, safetensors_chunks, safetensors_sha256


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = atomic_save_json({"a": 1}, tmp_path / "results.json")

    def half_then_crash(f):
        f.write("{\"a\": ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_crash, mode="w")
    assert path.read_text() == "{\n  \"a\": 1\n}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        written = atomic_save_json({}, tmp_path / "out.json")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def _mixed_tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(5, 3, generator=g), "b.half": torch.randn(7, generator=g).half(),
            "a.bf16": torch.randn(2, 2, generator=g).bfloat16(), "steps": torch.tensor(3),
            "mask": torch.rand(6, generator=g) > 0.5, "pixels": torch.randint(0, 256, (3,), dtype=torch.uint8, generator=g),
            "empty": torch.zeros(0, 4), "double": torch.randn(3, generator=g).double(),
            "view": torch.arange(12.0).reshape(3, 4).t()}  # not contiguous


# one metadata key: safetensors writes several in a random order (a Rust HashMap); ours keep the dict's
@pytest.mark.parametrize("metadata", [None, {"note": "quote \" newline \n é /"}])
def test_safetensors_bytes_are_those_of_safetensors_save(tmp_path, metadata):
    """Exports and caches are streamed by our writer; the file must be what safetensors itself
    writes (content keys hash these bytes, and other tools read them)."""
    tensors = _mixed_tensors()
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    expected = save(contiguous, metadata=metadata)
    path = atomic_save_safetensors(tensors, tmp_path / "model.safetensors", metadata=metadata)
    assert path.read_bytes() == expected
    assert b"".join(bytes(c) for c in safetensors_chunks(tensors, metadata)) == expected
    assert safetensors_sha256(tensors) == hashlib.sha256(save(contiguous)).hexdigest()
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_safetensors_metadata_of_several_keys_is_written_in_a_fixed_order(tmp_path):
    metadata = {"format": "fae-v1", "key": "abc", "count": "3"}
    first = atomic_save_safetensors(_mixed_tensors(), tmp_path / "a.safetensors", metadata=metadata).read_bytes()
    again = atomic_save_safetensors(_mixed_tensors(), tmp_path / "b.safetensors", metadata=metadata).read_bytes()
    assert first == again
    with safe_open(tmp_path / "a.safetensors", framework="pt") as f:
        assert f.metadata() == metadata


def test_safetensors_writing_keeps_no_copy_of_the_weights_in_memory(tmp_path):
    """A full-size export must not hold the weights twice (safetensors' save does: bytes per
    tensor plus the whole file): Python allocations while writing 32 MB stay under 1 MB."""
    tensors = {f"layer{i}": torch.ones(1024, 1024) for i in range(8)}  # 32 MiB
    tracemalloc.start()
    try:
        save(tensors)
        _, theirs = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        atomic_save_safetensors(tensors, tmp_path / "big.safetensors")
        safetensors_sha256(tensors)
        _, ours = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert theirs > 32 * 2**20  # what the streaming avoids
    assert ours < 2**20, ours


def test_safetensors_writer_refuses_tied_weights_and_unknown_dtypes(tmp_path):
    weight = torch.randn(4, 4)
    with pytest.raises(ValueError, match="'decoder.weight' and 'encoder.weight' share memory"):
        atomic_save_safetensors({"encoder.weight": weight, "decoder.weight": weight}, tmp_path / "tied.safetensors")
    with pytest.raises(ValueError, match="tensor 'z': dtype torch.complex64"):
        atomic_save_safetensors({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "complex.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    # a transposed view is written from a copy of its own, as safetensors' save sees it: allowed
    path = atomic_save_safetensors({"w": weight, "w_t": weight.t()}, tmp_path / "views.safetensors")
    assert torch.equal(load_file(path)["w_t"], weight.t())
