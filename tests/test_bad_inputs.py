"""Every bad input is exit code 2 and one ``fae: error:`` line that names the input and says what
is wrong: no traceback, and no partial output left behind. One table row per bad input.

``BEFORE_COMPUTE`` rows are inputs the checks before compute must catch: each names the functions
that start the work (Inception, the sampler, the backbone, training), replaced by ones that fail
the test if they are called."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fae.cli import main
from tiny import TINY_GENERATOR, tiny_fae, tiny_fae_with_pixel_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _export_generator(folder: Path) -> Path:
    """An unconditional tiny SiT (tests/tiny.py's architecture), default settings otherwise."""
    from fae.generation import Generator, GeneratorConfig

    torch.manual_seed(0)
    return Generator(GeneratorConfig(**TINY_GENERATOR)).save_pretrained(folder)


def _edit_json(src: Path, dst: Path, edit) -> None:
    """Copy the folder ``src`` to ``dst`` and apply ``edit`` to the dict of its JSON file."""
    shutil.copytree(src.parent, dst.parent)
    data = json.loads(dst.read_text())
    edit(data)
    dst.write_text(json.dumps(data))


def _mixed_size_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, side in (("a/0.png", 28), ("a/1.png", 28), ("b/0.png", 32)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name)


def _npz_inputs(w: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(w / "images.npy", rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    np.savez(w / "three.npz", arr_0=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    np.savez(w / "ref10.npz", mu=np.zeros(10), sigma=np.eye(10))
    np.savez(w / "ref_not_square.npz", mu=np.zeros(2048), sigma=np.zeros((2048, 10)))
    (w / "text.npz").write_text("not a zip archive")
    (w / "captions.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "cat.jpg"}],
                                                 "annotations": [{"image_id": 1, "caption": "a cat"}]}))


def _latent_caches(w: Path) -> None:
    from fae.data.datasets import DataConfig
    from fae.data.latent_cache import CacheConfig
    from fae.data.shard_store import shard_path
    from fae.training.latents import cache_latents

    good = w / "cache"
    cache_latents(CacheConfig(fae=str(w / "fae"), out=str(good), data=DataConfig(limit=8), flip=False,
                              shard_size=4, batch_size=8, progress=False))
    shutil.copytree(good, w / "cache_bad_json")
    (w / "cache_bad_json" / "manifest.json").write_text("{\"format\": ")
    _edit_json(good / "manifest.json", w / "cache_no_count" / "manifest.json", lambda d: d.pop("count"))
    shutil.copytree(good, w / "cache_bad_shard")
    shard = shard_path(w / "cache_bad_shard", 1)
    shard.write_bytes(shard.read_bytes()[:100])


def _head_files(w: Path) -> None:
    """Linear heads for tiny-vit tokens (width 64, no CLS): wrong keys, too few classes, wrong width."""
    torch.save({"w": torch.zeros(10, 64), "b": torch.zeros(10)}, w / "head_keys.pth")
    torch.save({"weight": torch.zeros(5, 64), "bias": torch.zeros(5)}, w / "head_5_classes.pth")
    torch.save({"weight": torch.zeros(10, 7), "bias": torch.zeros(10)}, w / "head_width_7.pth")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad")
    (w / "not_yaml.yaml").write_text("train: [1,\n")
    (w / "binary.yaml").write_bytes(bytes(range(128, 256)))
    _npz_inputs(w)
    _mixed_size_folder(w / "mixed")
    tiny_fae_with_pixel_decoder().save_pretrained(w / "fae")
    tiny_fae().save_pretrained(w / "fae_no_pixels")
    np.savez(w / "no_images.npz", x=np.zeros(3))
    _head_files(w)
    _export_generator(w / "gen" / "export")
    _edit_json(w / "gen" / "export" / "config.json", w / "gen_no_sampling" / "config.json",
               lambda d: d.pop("sampling"))
    _edit_json(w / "gen" / "export" / "config.json", w / "gen_no_dim" / "config.json",
               lambda d: d["model"].pop("dim"))
    _latent_caches(w)
    return w


GEN_TRAIN = ["train", "generator", "model.depth=1", "model.dim=32", "model.heads=2", "train.steps=1",
             "train.batch_size=4", "train.progress=false"]
MIXED = ["data.name=imagefolder", "data.root={w}/mixed"]
FID = ["eval", "fid"]  # then the verb's flags and key=value overrides, in any order
FID_OPTIONS = ["sqrt_method=eigh", "progress=false", "out={t}/m.json"]

# (command with {w} = shared inputs, {t} = this test's folder and {repo} = the checkout, message
# fragment, paths that must not exist afterwards)
ROWS = [
    (["train", "autoencoder", "--dry-run", "--config", "{w}/not_yaml.yaml"],
     "config file '{w}/not_yaml.yaml' is not valid YAML", []),
    (["train", "autoencoder", "--dry-run", "--config", "{w}/binary.yaml"],
     "config file '{w}/binary.yaml' is not UTF-8 text", []),
    (["train", "autoencoder", "--dry-run", "key=[1,"], "override 'key=[1,': the value is not valid YAML",
     []),
    (["train", "autoencoder", "--dry-run", "train.lr"], "override 'train.lr' is not of the form key=value",
     []),
    (["train", "autoencoder", "--dry-run", "train.steps=ten"],
     "config key 'train.steps': expected an integer, got 'ten'", []),
    ([*FID, "--samples", "{w}/images.npy", "--ref", "{w}/ref10.npz", *FID_OPTIONS],
     "'{w}/images.npy' is a single .npy array, not an .npz archive", ["{t}/m.json"]),
    ([*FID, "--samples", "{w}/text.npz", "--ref", "{w}/ref10.npz", *FID_OPTIONS],
     "'{w}/text.npz' is not an .npz archive (not a zip file)", ["{t}/m.json"]),
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/three.npz", *FID_OPTIONS],
     "'{w}/three.npz' has 3 images; precision/recall with pr_k=3 needs more than 3", ["{t}/m.json"]),
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/ref10.npz", "metrics=[fid]", *FID_OPTIONS],
     "'{w}/ref10.npz' holds 10-d statistics; the ADM InceptionV3 pool_3 features are 2048-d",
     ["{t}/m.json"]),
    ([*FID, "--samples", "{w}/ref10.npz", "--ref", "{w}/ref_not_square.npz", "metrics=[fid]",
      *FID_OPTIONS],
     "'{w}/ref_not_square.npz': mu (2048,) and sigma (2048, 10) do not form a mean [D] and a square",
     ["{t}/m.json"]),
    (["cache-latents", "fae={w}/fae", "out={t}/cache", "progress=false", *MIXED],
     "images differ in size: '{w}/mixed/a/0.png' is 28x28, '{w}/mixed/b/0.png' is 32x32; set "
     "data.image_size", ["{t}/cache"]),
    (["eval", "probe", "--backbone", "tiny-vit", "--out", "{t}/p.json", "progress=false", "preprocess=adm", *MIXED],
     "images differ in size", ["{t}/p.json"]),  # the default (dinov2) crops every image to 224
    (["eval", "recon", "--fae", "{w}/fae", "--out", "{t}/r.json", "progress=false", "rfid=false", *MIXED],
     "images differ in size", ["{t}/r.json"]),
    ([*GEN_TRAIN, "data.cache={w}/cache_bad_json", "train.run_dir={t}/run"],
     "'{w}/cache_bad_json/manifest.json' is not valid JSON", ["{t}/run"]),
    ([*GEN_TRAIN, "data.cache={w}/cache_no_count", "train.run_dir={t}/run"],
     "'{w}/cache_no_count/manifest.json': 'count' should be an integer, holds 'nothing'",
     ["{t}/run"]),
    ([*GEN_TRAIN, "data.cache={w}/cache_bad_shard", "train.run_dir={t}/run"],
     "latent cache shard '{w}/cache_bad_shard/", ["{t}/run"]),
    (["sample", "--generator", "{w}/gen_no_sampling", "--fae", "{w}/fae", "--num", "2", "--out", "{t}/s.npz"],
     "'{w}/gen_no_sampling' is a generator export without the config section(s) sampling", ["{t}/s.npz"]),
    (["sample", "--generator", "{w}/gen_no_dim", "--fae", "{w}/fae", "--num", "2", "--out", "{t}/s.npz"],
     "weights in '{w}/gen_no_dim' do not match its config.json: Error(s) in loading state_dict for "
     "DiffusionTransformer: size mismatch", ["{t}/s.npz"]),
    (["sample", "--generator", "{w}/gen/export", "--fae", "{w}/fae", "--num", "2", "--out", "{t}/s.npz",
      "sampling.stepz=4"], "unknown config key 'sampling.stepz'", ["{t}/s.npz"]),
    (["sample", "--generator", "{w}/gen/export", "--fae", "{w}/fae", "--num", "2", "--out", "{t}/s.npz",
      "sampling.cfg_interval=[0.9,0.1]"], "config key 'sampling.cfg_interval' must satisfy", ["{t}/s.npz"]),
    (["demo", "--out", "{t}/demo", "generator.overrides.model.dpth=2"],
     "demo stage 'generator' (file {repo}/src/fae/configs/demo/generator.yaml, with generator.overrides): "
     "unknown config key 'model.dpth'", ["{t}/demo"]),
    (["demo", "--out", "{t}/demo", "pixel_decoder_ii.overrides.train.steps=many"],
     "demo stage 'pixel_decoder_ii' (file {repo}/src/fae/configs/demo/pixel_decoder_ii.yaml, with "
     "pixel_decoder_ii.overrides): config key 'train.steps': expected an integer, got 'many'", ["{t}/demo"]),
    (["demo", "--out", "{t}/demo", "eval.sampling.method=rk4"],
     "config key 'eval.sampling.method': 'rk4' is not one of", ["{t}/demo"]),
]


REPO = Path(__file__).resolve().parents[1]


def _fill(text: str, w: Path, t: Path) -> str:
    return text.replace("{w}", str(w)).replace("{t}", str(t)).replace("{repo}", str(REPO))


INCEPTION = ["fae.commands.eval.load_scoring_network", "fae.evaluation.scorer.compute_inception_stats"]
SAMPLING = ["fae.commands.sample.load_generator", "fae.commands.sample.SampleDecoder"]
BACKBONE = ["fae.commands.eval.load_backbone", "fae.commands.eval.pooled_features"]
CACHING = ["fae.commands.cache_latents.cache_latents"]
COCO_SAMPLING = ["fae.commands.eval_coco.sample_to_npz"]
COCO = ["eval", "coco", "--generator", "{w}/gen/export", "--fae", "{w}/fae", "--num", "1", "out_dir={t}/coco"]
RECON = ["fae.autoencoder.model.FAE.from_pretrained", "fae.commands.eval.reconstruction_metrics"]
TRAINING = ["fae.commands.train.train"]
SAMPLE = ["sample", "--generator", "{w}/gen/export", "--num", "2"]
HEAD_PROBE = ["eval", "probe", "--backbone", "tiny-vit", "--out", "{t}/p.json", "data.split=test", "progress=false"]
TINY_TRAIN = ["train.run_dir={t}/run", "train.steps=1", "train.batch_size=4"]

# As ROWS, with the functions that must not run: (command, fragment, absent paths, forbidden)
BEFORE_COMPUTE = [
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/missing.npz", "metrics=[fid]", *FID_OPTIONS],
     "--ref '{w}/missing.npz' does not exist: an ADM .npz", ["{t}/m.json"], INCEPTION),
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/no_images.npz", "metrics=[fid]", *FID_OPTIONS],
     "'{w}/no_images.npz' has no 'arr_0' array (keys: x)", ["{t}/m.json"], INCEPTION),
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/ref10.npz", "metrics=[fid]", *FID_OPTIONS],
     "'{w}/ref10.npz' holds 10-d statistics", ["{t}/m.json"], INCEPTION),
    ([*FID, "--samples", "{w}/mixed", "--ref", "{w}/three.npz", "metrics=[fid]", *FID_OPTIONS],
     "images differ in size: '{w}/mixed/a/0.png' is 28x28, '{w}/mixed/b/0.png' is 32x32; every image of a "
     "sample folder must have one size", ["{t}/m.json"], INCEPTION),
    ([*FID, "--samples", "{w}/three.npz", "--ref", "{w}/three.npz", "metrics=[fid]", "sqrt_method=eigh",
      "out={w}/three.npz/m.json"],
     "--out '{w}/three.npz/m.json' cannot be created: '{w}/three.npz' is a file, not a folder", [], INCEPTION),
    ([*HEAD_PROBE, "--head", "{w}/head_keys.pth"],
     "linear head '{w}/head_keys.pth' must hold exactly the keys 'weight' and 'bias' (an nn.Linear state "
     "dict, as DINOv2's released heads), got 2 key(s): 'w', 'b'", ["{t}/p.json"], BACKBONE),
    ([*HEAD_PROBE, "--head", "{w}/head_5_classes.pth"],
     "this head scores 5 classes, but data fashion-mnist:(default folder) (test) has 10", ["{t}/p.json"],
     BACKBONE),
    ([*HEAD_PROBE, "--head", "{w}/head_width_7.pth"],
     "this head takes 7 features; tokens of width 64 give 64 (mean of patches) or 128", ["{t}/p.json"],
     BACKBONE),
    ([*SAMPLE, "--fae", "{w}/fae_no_pixels", "--out", "{t}/s.npz"],
     "the FAE export '{w}/fae_no_pixels' has no pixel decoder, so it cannot turn latents into images",
     ["{t}/s.npz", "{t}/s.png"], SAMPLING),
    ([*SAMPLE, "--fae", "{w}/fae", "--out", "{t}"],
     "--out '{t}' is a folder; name the file to write", ["{t}.png"], SAMPLING),
    ([*SAMPLE, "--fae", "{w}/fae", "--out", "{w}/three.npz/s.npz"],
     "--out '{w}/three.npz/s.npz' cannot be created: '{w}/three.npz' is a file, not a folder", [], SAMPLING),
    ([*SAMPLE, "--fae", "{w}/fae", "--out", "/proc/fae-preflight/s.npz"],  # no file can be made in /proc
     "--out '/proc/fae-preflight/s.npz' cannot be written: no new file can be created in '/proc'", [],
     SAMPLING),
    ([*SAMPLE, "--fae", "{w}/fae", "--out", "{t}/s.npz", "--png", "{w}/mixed"],
     "--png '{w}/mixed' is not empty", ["{t}/s.npz", "{t}/s.png"], SAMPLING),
    (["train", "pixel-decoder", "backbone.name=tiny-vit", "loss.perceptual=lpips", "loss.lpips_vgg_path={t}/vgg16.pth",
      "loss.lpips_heads_path={t}/vgg.pth", *TINY_TRAIN],
     "config key 'loss.lpips_vgg_path': file '{t}/vgg16.pth' (the VGG16 weights) does not exist", ["{t}/run"],
     TRAINING),
    (["train", "pixel-decoder", "--dry-run", "backbone.name=tiny-vit", "loss.perceptual=lpips",
      "loss.lpips_vgg_path={t}/vgg16.pth", "loss.lpips_heads_path={t}/vgg.pth", *TINY_TRAIN],
     "preflight: missing or unusable: loss.lpips_vgg_path, loss.lpips_heads_path", ["{t}/run"], TRAINING),
    (["train", "autoencoder", "backbone.name=dinov2-s14", "backbone.weights={t}/dinov2-s14", *TINY_TRAIN],
     "weights for 'dinov2-s14' (argument): '{t}/dinov2-s14' does not exist", ["{t}/run"], TRAINING),
    (["train", "autoencoder", "backbone.name=tiny-vit", "data.name=imagefolder", "data.root={t}/imagenet",
      *TINY_TRAIN],
     "config key 'data.root': '{t}/imagenet' does not exist (imagefolder data)", ["{t}/run"], TRAINING),
    (["eval", "recon", "--fae", "{w}/fae", "--out", "{t}/r.json", "data.name=imagefolder", "data.root={t}/nope"],
     "config key 'data.root': '{t}/nope' does not exist (imagefolder data)", ["{t}/r.json"], RECON),
    (["eval", "recon", "--fae", "{w}/fae_no_pixels", "--out", "{t}/r.json"],
     "the FAE in '{w}/fae_no_pixels' has no pixel decoder: pass pixels=false", ["{t}/r.json"], RECON),
    (["cache-latents", "fae={t}/no_fae", "out={t}/cache", "progress=false"],
     "'{t}/no_fae'", ["{t}/cache"], CACHING),
    (["cache-latents", "fae={w}/fae", "out={t}/cache", "data.name=imagefolder", "data.root={t}/nope"],
     "config key 'data.root': '{t}/nope' does not exist (imagefolder data)", ["{t}/cache"], CACHING),
    (["cache-latents", "fae={w}/fae", "out={w}/three.npz/cache"],
     "config key 'out' '{w}/three.npz/cache' cannot be created: '{w}/three.npz' is a file, not a folder", [],
     CACHING),
    ([*COCO, "--captions", "{t}/captions_val2014.json", "--images", "{w}/mixed"],
     "--captions '{t}/captions_val2014.json' does not exist", ["{t}/coco"], COCO_SAMPLING),
    ([*COCO, "--captions", "{w}/captions.json", "--images", "{w}/mixed"],
     "--images '{w}/mixed' lacks 1 of the 1 images the captions file names, e.g. 'cat.jpg'", ["{t}/coco"],
     COCO_SAMPLING),
]


def _row_ids(rows) -> list[str]:
    return [" ".join(r[0][:2]) + f" #{i}" for i, r in enumerate(rows)]


@pytest.mark.parametrize("command, fragment, absent", ROWS, ids=_row_ids(ROWS))
def test_bad_input_is_one_named_error(world, tmp_path, capsys, command, fragment, absent):
    _one_named_error(world, tmp_path, capsys, command, fragment, absent)


@pytest.mark.parametrize("command, fragment, absent, forbidden", BEFORE_COMPUTE, ids=_row_ids(BEFORE_COMPUTE))
def test_bad_input_is_found_before_compute(world, tmp_path, capsys, monkeypatch, command, fragment, absent,
                                           forbidden):
    for target in forbidden:
        monkeypatch.setattr(target, _compute_started(target))
    _one_named_error(world, tmp_path, capsys, command, fragment, absent)


def _compute_started(target: str):
    def started(*args, **kwargs):
        raise AssertionError(f"{target} ran: the bad input was found only after the work started")
    return started


def _one_named_error(world: Path, tmp_path: Path, capsys, command: list[str], fragment: str,
                     absent: list[str]) -> None:
    """Exit code 2, one ``fae: error:`` line holding ``fragment``, no traceback, no ``absent`` path."""
    code = main([_fill(part, world, tmp_path) for part in command])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fae: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert _fill(fragment, world, tmp_path) in lines[0], err
    for path in absent:
        assert not Path(_fill(path, world, tmp_path)).exists(), path
