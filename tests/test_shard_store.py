"""The sharded safetensors store under the token cache and the latent cache: round trip, spans,
resume after a missing shard, damaged shards named, mismatched manifests refused."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fae.data.shard_store import MANIFEST, ShardStore, differing_key, shard_path, shard_spans
from fae.errors import DataError


def store(folder: Path) -> ShardStore:
    return ShardStore(folder, "test store", DataError, rewrite="re-run the test to write it again",
                      rebuild=f"delete '{folder}'")


def write_all(s: ShardStore, count: int, size: int, skip: tuple[int, ...] = ()) -> dict[int, dict]:
    """Shards of items 0..count-1 (``values`` [m, 2] = item index, ``labels`` [m]); returns what was written."""
    written = {}
    for index, start, stop in shard_spans(count, size):
        if index not in skip:
            items = torch.arange(start, stop)
            written[index] = {"values": items.float().view(-1, 1).repeat(1, 2), "labels": items}
            s.write_shard(index, written[index], metadata={"start": str(start)})
    return written


def test_spans_cover_every_item_once_with_a_partial_last_shard():
    assert shard_spans(10, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert shard_spans(8, 4) == [(0, 0, 4), (1, 4, 8)]
    assert shard_spans(0, 4) == []
    assert shard_path("x", 12) == Path("x/shard-00012.safetensors")  # the names on disk, 5 digits


def test_round_trip_of_manifest_and_shards(tmp_path):
    s = store(tmp_path)
    assert s.read_manifest() is None  # a new folder
    manifest = {"format": "test", "count": 10, "shard_size": 4, "nested": {"a": [1, 2]}}
    s.write_manifest(manifest)
    assert s.read_manifest() == manifest
    assert (tmp_path / MANIFEST).read_text() == json.dumps(manifest, indent=2) + "\n"  # fae.io's format
    written = write_all(s, 10, 4)
    for index, tensors in written.items():
        got = s.read_shard(index)
        assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)
        assert s.rows(index, "labels") == len(tensors["labels"])
        with s.open_shard(index) as f:
            assert f.metadata() == {"start": str(4 * index)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        MANIFEST, "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]


def test_resume_writes_only_the_missing_shard(tmp_path):
    s = store(tmp_path)
    write_all(s, 10, 4, skip=(1,))  # as if the writer was killed while writing shard 1
    assert s.missing(3) == [1] and s.rows(1, "labels") == 0
    with pytest.raises(DataError, match=r"test store shard '.*shard-00001\.safetensors' is missing; re-run"):
        s.read_shard(1)
    before = {i: s.shard_path(i).stat().st_mtime_ns for i in (0, 2)}
    for index, start, stop in shard_spans(10, 4):
        if index in s.missing(3):
            s.write_shard(index, {"labels": torch.arange(start, stop)})
    assert s.missing(3) == [] and torch.equal(s.read_shard(1)["labels"], torch.arange(4, 8))
    assert {i: s.shard_path(i).stat().st_mtime_ns for i in (0, 2)} == before
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_shard_is_named_with_what_to_do(tmp_path, damage):
    s = store(tmp_path)
    write_all(s, 8, 4)
    path = s.shard_path(1)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a safetensors file", "truncated": data[:len(data) // 2], "empty": b""}[damage])
    message = rf"test store shard '{re.escape(str(path))}' is damaged \(.+\); delete it and re-run the test to write it again"
    for read in (lambda: s.read_shard(1), lambda: s.open_shard(1), lambda: s.rows(1, "labels")):
        with pytest.raises(DataError, match=message):
            read()
    assert s.read_shard(0)["labels"].tolist() == [0, 1, 2, 3]  # the others still read


def test_a_shard_without_the_counted_tensor_is_damaged(tmp_path):
    s = store(tmp_path)
    s.write_shard(0, {"other": torch.zeros(3)})
    with pytest.raises(DataError, match=r"shard-00000\.safetensors' is damaged"):
        s.rows(0, "labels")


def test_a_damaged_manifest_is_named_with_what_to_do(tmp_path):
    s = store(tmp_path)
    (tmp_path / MANIFEST).write_text('{"count": ')
    with pytest.raises(DataError, match=rf"'{re.escape(str(tmp_path / MANIFEST))}' is not valid JSON.*test store "
                                        rf"manifest is damaged; delete '{re.escape(str(tmp_path))}'"):
        s.read_manifest()
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(DataError, match="does not hold a JSON object"):
        s.read_manifest()


def test_a_manifest_mismatch_is_refused_naming_the_first_differing_key(tmp_path):
    s = store(tmp_path)
    stored = {"format": "test", "count": 10, "shard_size": 4, "data": {"limit": 10}}
    s.refuse_mismatch(stored, dict(stored), stored, fix="-")  # agreeing manifests pass
    wanted = {**stored, "shard_size": 8, "data": {"limit": 20}}
    assert differing_key(stored, wanted, ["format", "count", "shard_size", "data"]) == "shard_size"
    assert differing_key(stored, wanted, ["format", "count"]) is None  # only the keys asked about
    assert differing_key({"a": None}, {}, ["a"]) is None  # a key that is not there reads as null
    with pytest.raises(DataError, match=rf"test store '{re.escape(str(tmp_path))}' was started with shard_size=4, now 8; "
                                        r"use the old settings"):
        s.refuse_mismatch(stored, wanted, ["format", "count", "shard_size", "data"], fix="use the old settings")
