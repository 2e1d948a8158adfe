"""The one freshness rule (fae.freshness): an output is fresh when it records the content key of
its settings and of its inputs' bytes; times and paths do not matter, content does."""
from __future__ import annotations

import os

from fae import freshness


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_key_follows_content_not_time_or_place(tmp_path):
    a = _write(tmp_path / "a" / "export" / "model.safetensors", b"weights-1")
    _write(tmp_path / "a" / "export" / "config.json", b"{}")
    key = freshness.content_key({"lr": 1e-4}, [a.parent])
    os.utime(a, (1, 1))  # an older modification time: same bytes, same key
    assert freshness.content_key({"lr": 1e-4}, [a.parent]) == key
    b = tmp_path / "b"
    (tmp_path / "a").rename(b)  # a moved folder with the same files
    assert freshness.content_key({"lr": 1e-4}, [b / "export"]) == key
    assert freshness.content_key({"lr": 2e-4}, [b / "export"]) != key  # other settings
    _write(b / "export" / "model.safetensors", b"weights-2")  # retrained: other bytes
    assert freshness.content_key({"lr": 1e-4}, [b / "export"]) != key
    assert freshness.content_key({"lr": 1e-4}, [tmp_path / "missing"]) != key


def test_claim_skips_fresh_resumes_interrupted_and_deletes_stale_saying_why(tmp_path, capsys):
    out = tmp_path / "cache"
    done = {"complete": False}
    assert freshness.claim(out, "k1", lambda: done["complete"], "latent cache") == "write"
    assert freshness.recorded_key(out) == "k1"  # recorded before writing: an interruption resumes
    _write(out / "shard-0", b"partial")
    assert freshness.claim(out, "k1", lambda: done["complete"], "latent cache") == "write"
    assert (out / "shard-0").exists()  # resumed, not deleted
    done["complete"] = True
    assert freshness.claim(out, "k1", lambda: done["complete"], "latent cache") == "skip"
    assert freshness.claim(out, "k2", lambda: done["complete"], "latent cache") == "rewrite"
    said = capsys.readouterr().out
    assert f"deleting the latent cache {out}" in said and "inputs or settings changed" in said
    assert not (out / "shard-0").exists() and freshness.recorded_key(out) == "k2"


def test_an_output_without_a_record_is_stale(tmp_path, capsys):
    out = _write(tmp_path / "old" / "shard-0", b"from an earlier version").parent
    assert freshness.stale_reason(out, "k") == "it records no inputs"
    assert freshness.claim(out, "k", lambda: True, "latent cache") == "rewrite"
    assert "records no inputs" in capsys.readouterr().out


def test_produce_writes_once_and_says_why_it_rewrites(tmp_path, capsys):
    out, writes = tmp_path / "judge", []

    def write():
        writes.append(1)
        _write(out / "model.pt", b"trained")

    complete = (out / "model.pt").is_file
    assert freshness.produce(out, "k1", complete, write, "judge") == "ran"
    assert freshness.produce(out, "k1", complete, write, "judge") == "skipped (outputs valid)"
    assert freshness.produce(out, "k2", complete, write, "judge") == "restarted (its inputs or settings changed)"
    assert len(writes) == 2 and f"deleting the judge {out}" in capsys.readouterr().out
