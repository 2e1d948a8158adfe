"""The token cache: each image passes the backbone once, across counts, limits, stages and ranks.

This file is also the two-rank worker: ``torchrun --nproc_per_node=2 tests/test_token_cache.py OUT``
fills a cache on rank 0 only and checks that both ranks read the same tokens.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fae.backbones import Backbone, BackboneConfig, TokenCache, load_backbone
from fae.config import SHIPPED_CONFIGS
from fae.data.datasets import DataConfig, build_dataset
from fae.errors import ConfigError, DataError

FASHION = DataConfig(name="fashion-mnist", limit=40)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Counting(Backbone):
    """A backbone that counts the images it is asked to encode."""

    def __init__(self, inner: Backbone):
        super().__init__()
        self.inner, self.info, self.images = inner, inner.info, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return self.inner(images)


def counting() -> Counting:
    return Counting(load_backbone("tiny-vit"))


def test_each_image_passes_the_backbone_once_across_counts_limits_and_caches(tmp_path):
    backbone = counting()
    cache = TokenCache(tmp_path, backbone, shard_size=16, batch_size=8)
    first, labels10 = cache.tokens(FASHION, count=10, progress=False)  # shard 0, partial
    assert backbone.images == 10 and first.shape == (10, 16, 64) and first.dtype == torch.float16
    everything, labels = cache.tokens(FASHION, progress=False)  # shard 0 grows, shards 1-2 are new
    assert backbone.images == 40 and everything.shape[0] == 40
    assert torch.equal(everything[:10], first) and torch.equal(labels[:10], labels10)
    # Fashion-MNIST's limit keeps the first items: every limit shares the one cache
    fewer, _ = cache.tokens(replace(FASHION, limit=25), progress=False)
    assert backbone.images == 40 and torch.equal(fewer, everything[:25])
    # another stage or run (a new cache object, a new backbone instance) on the same folder
    other = counting()
    more, _ = TokenCache(tmp_path, other, shard_size=16).tokens(replace(FASHION, limit=48), progress=False)
    assert other.images == 8 and torch.equal(more[:40], everything)
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]


def test_cached_tokens_are_the_backbones_tokens(tmp_path):
    backbone = load_backbone("tiny-vit")
    dataset = build_dataset(FASHION)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    expected = backbone(images)  # [40, 16, 64] float32, one batch
    half, labels = TokenCache(tmp_path / "fp16", backbone, batch_size=7).tokens(FASHION, progress=False)
    torch.testing.assert_close(half.float(), expected, rtol=2 ** -10, atol=1e-6)  # fp16 rounding only
    assert torch.equal(labels, dataset.labels)
    full, _ = TokenCache(tmp_path / "fp32", backbone, dtype=torch.float32, batch_size=40).tokens(
        FASHION, progress=False)
    assert torch.equal(full, expected)


def test_the_key_covers_backbone_dtype_and_flip(tmp_path):
    tiny = load_backbone("tiny-vit")
    keys = {TokenCache(tmp_path, tiny).key(FASHION), TokenCache(tmp_path, tiny, dtype=torch.float32).key(FASHION),
            TokenCache(tmp_path, load_backbone("tiny-vit", resolution=64)).key(FASHION),
            TokenCache(tmp_path, tiny, weights="/elsewhere").key(FASHION),
            TokenCache(tmp_path, tiny).key(replace(FASHION, split="test"))}
    assert len(keys) == 5
    with pytest.raises(ConfigError, match="data.flip=false"):
        TokenCache(tmp_path, tiny).tokens(replace(FASHION, flip=True))


def _image_folder(root: Path) -> Path:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_imagefolder_limits_are_keyed_separately(tmp_path):
    # ImageFolder's limit keeps evenly spaced images, a different set per limit: not a prefix
    from fae.data.imagefolder import evenly_spaced

    root = _image_folder(tmp_path / "images")
    backbone = counting()
    cache = TokenCache(tmp_path / "cache", backbone)
    three = DataConfig(name="imagefolder", root=str(root), limit=3)
    assert cache.key(three) != cache.key(replace(three, limit=6))
    assert cache.key(FASHION) == cache.key(replace(FASHION, limit=7))
    tokens, labels = cache.tokens(three, progress=False)
    all_tokens, all_labels = cache.tokens(replace(three, limit=6), progress=False)
    assert backbone.images == 9 and tokens.shape[0] == 3 and all_tokens.shape[0] == 6
    picked = evenly_spaced(6, 3).tolist()  # [0, 2, 5]: not the first three
    assert all_labels.tolist() == [0, 0, 0, 1, 1, 1] and labels.tolist() == all_labels[picked].tolist()
    assert torch.equal(tokens, all_tokens[picked]) and not torch.equal(tokens, all_tokens[:3])
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_shard_is_named_with_what_to_do(tmp_path, damage):
    cache = TokenCache(tmp_path, load_backbone("tiny-vit"), shard_size=16)
    cache.tokens(FASHION, count=20, progress=False)
    shard = cache.folder_for(FASHION) / "shard-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(b"not a safetensors file" if damage == "garbage" else data[:len(data) // 2])
    with pytest.raises(DataError, match=r"shard-00000\.safetensors.*delete it"):
        cache.tokens(FASHION, count=20, progress=False)


def test_a_hand_edited_or_damaged_manifest_is_refused_naming_the_folder(tmp_path):
    cache = TokenCache(tmp_path, load_backbone("tiny-vit"), shard_size=16)
    cache.tokens(FASHION, count=4, progress=False)
    folder = cache.folder_for(FASHION)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "dtype": "float32"}))
    with pytest.raises(DataError, match=rf"token cache '{re.escape(str(folder))}' was started with "
                                        r"dtype='float32', now 'float16'; delete the folder"):
        cache.tokens(FASHION, count=4, progress=False)
    manifest.write_text('{"format": ')
    with pytest.raises(DataError, match=r"is not valid JSON.*the token cache manifest is damaged; delete the "
                                        rf"folder '{re.escape(str(folder))}'"):
        cache.tokens(FASHION, count=4, progress=False)


def test_two_stages_share_one_cache(tmp_path, monkeypatch):
    """Stage Ia fills the cache; stage Ib (same backbone, token_cache_dir) runs the backbone on nothing."""
    from test_pixel_decoder_stage import tiny_config

    from fae.config import load_config
    from fae.training.stages.autoencoder import AutoencoderRunConfig, AutoencoderStage
    from fae.training.stages.pixel_decoder import PixelDecoderStage

    backbones = []
    monkeypatch.setattr(BackboneConfig, "load", lambda self, device="cpu", dtype=None: backbones.append(counting())
                        or backbones[-1])
    cache_dir = tmp_path / "cache"
    autoencoder = AutoencoderStage(load_config(AutoencoderRunConfig, SHIPPED_CONFIGS / "demo/autoencoder.yaml", [
        f"train.run_dir={tmp_path / 'ia'}", "backbone.name=tiny-vit", "backbone.resolution=null",
        "model.encoder.heads=2", "model.encoder.head_dim=16", "model.decoder.width=32", "data.limit=64",
        "eval.limit=16", "train.progress=false", f"token_cache_dir={cache_dir}"]))
    autoencoder.build_models("cpu")
    autoencoder.setup(torch.device("cpu"))
    assert backbones[0].images == 64 + 16  # train and held-out split, once each
    pixel = PixelDecoderStage(tiny_config(tmp_path / "ib", cache_tokens=True, token_cache_dir=str(cache_dir)))
    pixel.build_models("cpu")
    pixel.setup(torch.device("cpu"))  # training tokens and the noise scale come from the cache
    pixel.held_out_set()  # so do the held-out tokens
    assert backbones[1].images == 0


def test_two_ranks_fill_once_and_read_the_same(tmp_path):
    from launch import torchrun

    torchrun(Path(__file__), tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["images"] for r in results] == [24, 0]  # rank 0 computed, rank 1 only read
    assert torch.equal(results[0]["tokens"], results[1]["tokens"])


if __name__ == "__main__":
    from fae import distributed as dist

    with dist.process_group():
        backbone = counting()
        tokens, _ = TokenCache(Path(sys.argv[1]) / "cache", backbone, shard_size=16).tokens(
            replace(FASHION, limit=24), progress=False)
        torch.save({"images": backbone.images, "tokens": tokens}, Path(sys.argv[1]) / f"rank{dist.rank()}.pt")
