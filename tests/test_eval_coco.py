"""``fae eval coco``: the U-ViT caption draw (seeded, one caption per distinct image) and the command
on a tiny COCO-format folder made here, with a tiny text-to-image export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fae.data.coco import CocoImage, draw_captions, read_coco_captions
from fae.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def coco_images(n: int, per_image: int = 5) -> list[CocoImage]:
    return [CocoImage(100 + 7 * i, f"COCO_{i:04d}.jpg", tuple(f"image {i} caption {j}" for j in range(per_image)))
            for i in range(n)]


def test_caption_draw_is_seeded_and_one_caption_per_distinct_image():
    images = coco_images(60)
    first, again, other = (draw_captions(images, 40, seed) for seed in (0, 0, 1))
    assert first == again  # same seed -> same draw
    assert [d.image_id for d in first] != [d.image_id for d in other]  # another seed -> another draw
    ids = [d.image_id for d in first]
    assert len(set(ids)) == 40  # one prompt per image, no image twice
    by_id = {im.image_id: im for im in images}
    assert all(d.caption in by_id[d.image_id].captions and d.file_name == by_id[d.image_id].file_name
               for d in first)
    assert ids != sorted(ids)  # a random order of images, not the first 40 by id
    chosen = {by_id[d.image_id].captions.index(d.caption) for d in first}
    assert len(chosen) >= 4  # the caption index is drawn, not always the first
    # the draw depends on the images, not on the order the file lists them in
    assert draw_captions(images[::-1], 40, 0) == first
    assert {d.image_id for d in draw_captions(images, 60, 3)} == set(by_id)  # num = all: every image once
    with pytest.raises(DataError, match="only 60 captioned images"):
        draw_captions(images, 61, 0)


def test_read_coco_captions_normalises_and_skips_uncaptioned_images(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({
        "images": [{"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}, {"id": 5, "file_name": "c.jpg"}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "A dog\n on a  beach. "},
                        {"id": 2, "image_id": 3, "caption": "a cat"}, {"id": 3, "image_id": 9, "caption": "two"},
                        {"id": 4, "image_id": 5, "caption": "   "}]}))
    images = read_coco_captions(path)
    assert images == [CocoImage(3, "a.jpg", ("a cat",)), CocoImage(9, "b.jpg", ("A dog on a beach.", "two"))]
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"id": 1, "image_id": 2, "caption": "x"}]}))
    with pytest.raises(DataError, match="names image 2"):
        read_coco_captions(path)
    with pytest.raises(DataError, match="does not exist"):
        read_coco_captions(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    """Eight RGB images of different sizes with three captions each, a tiny FAE and a tiny MMDiT
    export (untrained: the test checks the protocol's plumbing, not image quality)."""
    from PIL import Image

    from fae.autoencoder import FAE
    from fae.training.latents import fae_record
    from fae.generation.mmdit_config import MMDiTConfig
    from fae.generation.samplers import SamplerConfig
    from fae.generation.t2i_generator import TextToImageGenerator
    from test_generation_pipeline import export_fae

    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    (root / "val2014").mkdir()
    records, annotations = [], []
    for i in range(8):
        pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
        name = f"COCO_val2014_{i:012d}.png"
        Image.fromarray(pixels).save(root / "val2014" / name)
        records.append({"id": 1000 + i, "file_name": name})
        annotations += [{"id": 10 * i + j, "image_id": 1000 + i, "caption": f"a {['red', 'blue', 'green'][j]} "
                         f"object number {i}"} for j in range(3)]
    (root / "captions_val2014.json").write_text(json.dumps({"images": records, "annotations": annotations}))
    export_fae(root / "fae", seed=0)
    fae = FAE.from_pretrained(root / "fae")
    c, h, _ = fae.latent_shape
    torch.manual_seed(0)
    config = MMDiTConfig(depth=1, dim=32, heads=2, latent_channels=c, latent_size=h, text_dim=384,
                         pooled_dim=384).resolved()
    generator = TextToImageGenerator(config, sampling=SamplerConfig(steps=2), fae_identity=fae_record(fae),
                                     text={"encoder": "all-minilm-l6-v2", "weights": None, "max_length": 16})
    generator.save_pretrained(root / "t2i")
    return root


def test_eval_coco_writes_fid_and_the_prompts_of_its_samples(coco_folder, capsys):
    from fae.cli import main
    from fae.evaluation.stats import read_prompts, read_sample_batch, read_stats

    out = coco_folder / "out"
    args = lambda num: ["eval", "coco", "--generator", str(coco_folder / "t2i"), "--fae",  # noqa: E731
                        str(coco_folder / "fae"), "--captions", str(coco_folder / "captions_val2014.json"),
                        "--images", str(coco_folder / "val2014"), "--num", str(num), "--out-dir", str(out),
                        "image_size=32", "seed=3", "batch_size=4", "sqrt_method=eigh", "progress=false"]
    assert main(args(5)) == 0
    result = json.loads((out / "coco.json").read_text())
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert result["num"] == 5 and result["reference_images"] == 8 and "U-ViT" in result["protocol"]
    expected = draw_captions(read_coco_captions(coco_folder / "captions_val2014.json"), 5, 3)
    images, labels = read_sample_batch(out / "samples.npz")
    assert images.shape == (5, 28, 28, 3) and labels.tolist() == [-1] * 5
    assert read_prompts(out / "samples.npz") == [d.caption for d in expected]  # sample i has prompt i
    drawn = [json.loads(line) for line in (out / "drawn.jsonl").read_text().splitlines()]
    assert [d["image_id"] for d in drawn] == [d.image_id for d in expected]
    assert read_stats(str(out / "ref_stats.npz")).count == 8  # reference: every captioned image
    assert "fae eval coco: wrote" in capsys.readouterr().out
    # a second run reuses the reference statistics while their record matches
    stamp = (out / "ref_stats.npz").stat().st_mtime_ns
    assert main(args(4)) == 0
    assert (out / "ref_stats.npz").stat().st_mtime_ns == stamp
    assert json.loads((out / "coco.json").read_text())["num"] == 4
    # more prompts than captioned images is refused, naming the count
    assert main(args(9)) == 2
    assert "only 8 captioned images" in capsys.readouterr().err
