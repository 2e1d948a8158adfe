"""Caption data: image folder + JSONL / CSV captions, WebDataset tar shards read by index, and the
WebDataset stream resuming at the same sample after a SIGKILL."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fae.data.datasets import DataConfig, build_dataset
from fae.data.webdataset_shards import CaptionShardStream
from fae.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, shards: int = 4, per_shard: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{s}_{i:03d}"
                for ext, data in (("png", png_bytes(10 * s + i)), ("txt", f"caption {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_caption_folder_reads_jsonl_and_csv(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"file": f"{i}.png", "caption": f"cap {i}"}) + "\n"
                                              for i in range(3)))
    (tmp_path / "c.csv").write_text("file,caption\n2.png,\"two, a comma\"\n0.png,zero\n")
    jsonl = build_dataset(DataConfig(name="captions", root=str(tmp_path), captions=str(tmp_path / "c.jsonl")))
    image, label, caption = jsonl[1]
    assert image.shape == (3, 6, 6) and int(image[0, 0, 0]) == 1 and label == -1 and caption == "cap 1"
    csv = build_dataset(DataConfig(name="captions", root=str(tmp_path), captions=str(tmp_path / "c.csv")))
    assert [csv[i][2] for i in range(2)] == ["two, a comma", "zero"] and csv.captioned
    (tmp_path / "bad.jsonl").write_text('{"file": "0.png"}\n')
    with pytest.raises(DataError, match="line 1"):
        build_dataset(DataConfig(name="captions", root=str(tmp_path), captions=str(tmp_path / "bad.jsonl")))
    with pytest.raises(ConfigError, match="data.captions"):
        DataConfig(name="captions", root=str(tmp_path))


def test_webdataset_by_index_matches_the_tar_contents(tmp_path):
    write_shards(tmp_path / "wds", shards=2, per_shard=3)
    ds = build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "wds") + "/{00000..00001}.tar"))
    assert len(ds) == 6 and ds.captioned
    image, label, caption = ds[4]
    assert caption == "caption s1_001" and int(image[0, 0, 0]) == 11 and label == -1
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(name="webdataset", root=str(tmp_path / "wds") + "/{00000..00003}.tar"))


def test_stream_order_is_seeded_and_ranks_split_the_shards(tmp_path):
    shards = str(write_shards(tmp_path / "wds"))
    one = [k for k, _, _ in CaptionShardStream(shards, seed=3, epochs=2)]
    assert len(one) == 40 and sorted(one[:20]) == sorted(one[20:]) and one[:20] != one[20:]
    assert one == [k for k, _, _ in CaptionShardStream(shards, seed=3, epochs=2)]
    ranks = [[k for k, _, _ in CaptionShardStream(shards, rank=r, world_size=2, seed=3, epochs=1)] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 20


WORKER = textwrap.dedent("""
    import json, os, sys
    from fae.data.webdataset_shards import CaptionShardStream
    shards, state_file, log_file, rank, kill_at = sys.argv[1:6]
    stream = CaptionShardStream(shards, rank=int(rank), world_size=2, seed=7, epochs=3)
    if os.path.exists(state_file):
        stream.load_state_dict(json.load(open(state_file)))
    with open(log_file, "a") as log:
        for n, (key, image, caption) in enumerate(stream):
            log.write(key + "\\n"); log.flush()
            tmp = state_file + ".tmp"
            json.dump(stream.state_dict(), open(tmp, "w")); os.replace(tmp, state_file)
            if n + 1 == int(kill_at):
                os.kill(os.getpid(), 9)  # SIGKILL: no clean-up, like a killed torchrun worker
""")


@pytest.mark.parametrize("rank", [0, 1])
def test_stream_resumes_at_the_same_sample_after_a_kill(tmp_path, rank):
    shards = str(write_shards(tmp_path / "wds"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(tag: str, kill_at: int) -> int:
        return subprocess.run([sys.executable, str(script), shards, str(tmp_path / f"{tag}.json"),
                               str(tmp_path / f"{tag}.log"), str(rank), str(kill_at)], env=env,
                              timeout=120).returncode

    assert run("full", 0) == 0
    assert run("killed", 7) == -signal.SIGKILL
    assert run("killed", 13) == -signal.SIGKILL  # killed again, mid-epoch 2
    assert run("killed", 0) == 0
    full = (tmp_path / "full.log").read_text().split()
    assert (tmp_path / "killed.log").read_text().split() == full and len(full) == 30
