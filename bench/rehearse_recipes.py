"""One paper recipe rehearsed on CPU at full width and shape (the worker of ``bench/rehearse.py``).

Every recipe of ``imagenet256/`` runs through the code a user runs: the ``fae train`` stage
loader and the engine's :class:`fae.training.engine.Trainer`, ``fae cache-latents``'s
``cache_latents`` and ``fae sample``'s ``sample_to_npz``, with the recipe file plus overrides
(:func:`run_overrides`) that shrink only what a rehearsal must shrink: 2 steps at global batch 2,
bf16 autocast, tiny evaluation / statistics sets, 2 sampler steps, and with ``depth`` every stack
capped at ``depth`` blocks (widths and shapes stay the paper's). Backbones and T5 are their
published architectures with seeded random weights (``weights=random[:N]``), LPIPS random too.

Each training recipe runs straight to step 2 with a checkpoint at each step, and its step-1
checkpoint is resumed to step 2 in another folder; the two step-2 checkpoints must agree bitwise in
every model, EMA and optimiser tensor (compared by SHA-256 digests, so that at most two checkpoints
are on disk at a time). The export is reloaded and must give the output of the trained
model with EMA weights exactly. Generators then sample 2 images at 256 px through the FAE's
decoders (``fae sample``).
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import multiprocessing
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from fae.autoencoder import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.commands.sample import SampleConfig, sample_to_npz
from fae.config import SHIPPED_CONFIGS, load_config
from fae.data.datasets import DataConfig
from fae.data.latent_cache import CacheConfig, read_manifest
from fae.data.latent_cache_writer import write_cache
from fae.generation import load_generator
from fae.training.checkpoint import checkpoint_name
from fae.training.engine import Trainer
from fae.training.latents import cache_latents as run_cache
from fae.training.stages.registry import load_stage

CONFIGS = SHIPPED_CONFIGS / "imagenet256"
BACKBONES = {"fae_dinov2g": "dinov2-g14", "fae_siglip2g": "siglip2-g-opt16-256",
             "pixel_decoder_vitl": "dinov2-g14", "pixel_decoder_vitl_ii": "dinov2-g14"}
TEXT_ENCODER = "t5-v1_1-xl"
STEPS = 2
BYTES_PER_TRAINED_PARAM = 20  # fp32 weights + grads + AdamW moments (8) + EMA
CHECKPOINT_BYTES_PER_PARAM = 16  # fp32 weights + AdamW moments (8) + EMA
CHECKPOINTS_ON_DISK = 2  # the straight run's step 1 (resumed) and the resumed run's step 2
# The share of this machine's RAM the training state may take; the rest holds the frozen helpers
# (the FAE's decoders, T5-XL), activations and the export (at 80%, STARFlow ran a 24 GiB machine out
# of memory while exporting, when exports still held a copy of the weights)
MEMORY_SHARE = 0.7
DISK_SHARE = 0.8  # of the free disk that the checkpoints may take


@dataclasses.dataclass(frozen=True)
class Work:
    """One rehearsal: ``root`` holds the images, the runs, the caches and the samples; ``precision``
    is the training autocast ("bf16": the recipes' GPU setting; "fp32": see bench/rehearse.py)."""

    root: Path
    precision: str = "bf16"

    @property
    def images(self) -> Path:
        return self.root / "imagenet"

    def run(self, recipe: str) -> Path:
        return self.root / "runs" / recipe

    def export(self, recipe: str) -> Path:
        return self.run(recipe) / "straight" / "export"

    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def caption_latents(self) -> Path:
        return self.root / "latents_captions"

    @property
    def sdvae_latents(self) -> Path:
        return self.root / "latents_sdvae"


def random_weights(layers: int | None) -> str:
    """The ``weights`` value of a random backbone / text encoder capped at ``layers`` blocks."""
    return "random" if layers is None else f"random:{layers}"


def cap(depth: int | None, published: int) -> int:
    return published if depth is None else min(depth, published)


# ------------------------------------------------------------------------------------ overrides


def train_overrides(run_dir: Path, steps: int, precision: str) -> list[str]:
    """The rehearsal's loop: ``steps`` steps at global batch 2 on one rank, ``precision`` autocast,
    a checkpoint and an evaluation at the end only."""
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "train.batch_size=2", "train.grad_accum=1",
            f"train.precision={precision}", "train.num_workers=0", "train.log_every=1", "train.ckpt_every=0",
            "train.eval_every=0", "train.progress=false", "train.tensorboard=false"]


def run_overrides(recipe: str, work: Work, depth: int | None) -> list[str]:
    """What the rehearsal changes in ``imagenet256/<recipe>.yaml`` besides the loop."""
    images = [f"data.root={work.images}"]
    if recipe.startswith("fae_"):
        return images + [f"backbone.weights={random_weights(depth)}", f"model.decoder.depth={cap(depth, 6)}",
                         "eval.limit=2", "eval.batch_size=2", "stats_images=2"]
    if recipe.startswith("pixel_decoder"):
        out = images + [f"backbone.weights={random_weights(depth)}", f"pixel_decoder.depth={cap(depth, 24)}",
                        "loss.lpips_vgg_path=random", "loss.lpips_heads_path=random",
                        "loss.gan_start_step=0",  # the discriminator phase (and LeCam) run too
                        "eval.limit=2", "eval.batch_size=2", "eval.grid_images=2"]
        if recipe.endswith("_ii"):
            out += [f"fae={work.export('fae_dinov2g')}", f"init_from={work.export('pixel_decoder_vitl')}"]
        return out + ["noise.scale_images=2"] * (not recipe.endswith("_ii"))
    fae = f"data.fae={work.export('pixel_decoder_vitl_ii')}"
    grids = ["eval.loss_items=2", "eval.grid_samples=2"]
    if recipe in ("sit_xl1", "lightningdit_xl1"):
        return [f"data.cache={work.latents}", fae, f"model.depth={cap(depth, 28)}", "sampling.steps=2"] + grids
    if recipe.startswith("starflow"):
        flow = [f"flow.deep_layers={cap(depth, 18)}", f"flow.shallow_blocks={cap(depth, 5)}",
                f"flow.shallow_layers={cap(depth, 2)}"]
        if recipe == "starflow_sdvae":
            return [f"data.cache={work.sdvae_latents}", "eval.loss_items=2"] + flow
        return [f"data.cache={work.latents}", fae] + flow + grids
    if recipe == "mmdit_t2i":
        return [f"data.cache={work.caption_latents}", fae, f"mmdit.depth={cap(depth, 16)}",
                f"text.weights={random_weights(depth)}", "sampling.steps=2"] + grids
    raise KeyError(recipe)


STAGE_OF = {"fae_dinov2g": "autoencoder", "fae_siglip2g": "autoencoder", "pixel_decoder_vitl": "pixel-decoder",
            "pixel_decoder_vitl_ii": "pixel-decoder", "sit_xl1": "generator", "lightningdit_xl1": "generator",
            "starflow_fae": "generator", "starflow_sdvae": "generator", "mmdit_t2i": "generator"}


def load(recipe: str, work: Work, depth: int | None, run_dir: Path, steps: int, extra: list[str] = ()):
    """The recipe's stage, as ``fae train <stage> --config <recipe>.yaml <overrides>`` builds it."""
    overrides = run_overrides(recipe, work, depth) + train_overrides(run_dir, steps, work.precision) + list(extra)
    return load_stage(STAGE_OF[recipe], str(CONFIGS / f"{recipe}.yaml"), overrides)


# ------------------------------------------------------------------------------------ depth that fits


def trained_params(stage) -> int:
    """Parameters the optimisers train (the models built on ``meta``: no memory)."""
    return sum(p.numel() for m in stage.build_models("meta").values() for p in m.parameters() if p.requires_grad)


def memory_budget() -> int:
    """Bytes the training state may take: MEMORY_SHARE of MemTotal (/proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(MEMORY_SHARE * int(line.split()[1]) * 1024)
    raise RuntimeError("no MemTotal in /proc/meminfo")


def disk_budget(root: Path) -> int:
    """Bytes the rehearsal's checkpoints may take: DISK_SHARE of the free space under ``root``."""
    return int(DISK_SHARE * shutil.disk_usage(root).free)


def state_fits(params: int, work: Work) -> str:
    """'' when ``params`` trained parameters fit in RAM (training state) and on disk (the
    rehearsal's checkpoints), else what does not fit."""
    memory, disk = params * BYTES_PER_TRAINED_PARAM, params * CHECKPOINT_BYTES_PER_PARAM * CHECKPOINTS_ON_DISK
    if memory > memory_budget():
        return f"~{memory / 2**30:.1f} GiB of training state, over the {memory_budget() / 2**30:.1f} GiB RAM budget"
    if disk > disk_budget(work.root):
        return (f"~{disk / 2**30:.1f} GiB for {CHECKPOINTS_ON_DISK} checkpoints, over the "
                f"{disk_budget(work.root) / 2**30:.1f} GiB disk budget")
    return ""


def fitting_depth(recipe: str, work: Work, depth: int | None) -> tuple[int | None, str]:
    """``depth``, or for the full depth (None) the deepest one whose training state fits RAM and
    whose checkpoints fit the disk (:func:`state_fits`); and a note saying so."""
    scratch = work.root / "scratch"
    over = state_fits(trained_params(load(recipe, work, depth, scratch, STEPS)), work)
    if depth is not None or not over:
        return depth, ""
    for smaller in range(64, 0, -1):
        if not state_fits(trained_params(load(recipe, work, smaller, scratch, STEPS)), work):
            return smaller, f"full depth needs {over}: rehearsed at depth {smaller}"
    raise RuntimeError(f"{recipe}: not even depth 1 fits this machine (full depth needs {over})")


# ------------------------------------------------------------------------------------ training


def train_run(recipe: str, work: Work, depth: int | None, run_dir: Path, steps: int, force: bool = False,
              probe: Callable | None = None, ckpt_every: int = 0) -> dict:
    """One ``fae train`` run; ``probe(stage, models)`` runs on the EMA weights before the trainer
    closes (the export's reference output); ``ckpt_every`` > 0 keeps every step's checkpoint."""
    stage = load(recipe, work, depth, run_dir, steps, [f"train.ckpt_every={ckpt_every}", "train.keep_last=8"])
    trainer = Trainer(stage, resume=True, force=force)
    try:
        result = trainer.run()
        if probe is not None:
            with trainer.ema_weights() as models, torch.no_grad():
                result["reference"] = probe(stage, models)
        result["frozen_params"] = frozen_params(stage)
        result["trained_params"] = {n: sum(p.numel() for p in m.parameters()) for n, m in trainer.modules.items()}
    finally:
        trainer.close()
    return result


def frozen_params(stage) -> int:
    """Parameters of the frozen helpers a stage holds (backbone, FAE, LPIPS, Ib decoder)."""
    modules = [getattr(stage, name, None) for name in ("backbone", "fae", "perceptual", "ib_decoder", "text_encoder")]
    if getattr(stage, "name", "") == "autoencoder":
        modules = [stage.backbone]  # its ``fae`` is the trained model
    return sum(p.numel() for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters())


def checkpoint_digest(path: str | Path) -> dict[str, str]:
    """Every model / EMA / optimiser entry of a checkpoint: a tensor as its dtype, shape and the
    SHA-256 of its bytes, anything else as its repr. Two checkpoints are bitwise equal where their
    digests are, so the first can be deleted before the second is written (at full depth each is
    up to tens of GB). Read in a child process: the checkpoint's mapped pages would otherwise count
    in this process's peak RSS, which the rehearsal reports as the training's."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_checkpoint_digest, str(path)).result()


def _checkpoint_digest(path: str) -> dict[str, str]:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {key: value for part in ("models", "ema", "optimizers") for key, value in _digest(state[part], part)}


def _digest(x, key: str):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _digest(v, f"{key}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _digest(v, f"{key}[{i}]")
    elif isinstance(x, torch.Tensor):
        data = x.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        yield key, f"{x.dtype} {tuple(x.shape)} {hashlib.sha256(memoryview(data)).hexdigest()}"
    else:
        yield key, repr(x)


def digest_differences(first: dict[str, str], second: dict[str, str]) -> list[str]:
    """Keys present in one digest only, or whose entries differ."""
    return sorted(set(first) ^ set(second)) + [k for k in first if k in second and first[k] != second[k]]


def last_record(run_dir: Path) -> dict:
    """The last logged training step of a run (metrics.jsonl)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("kind", "train") == "train"][-1]


def last_losses(run_dir: Path) -> dict[str, float]:
    """The training losses of the last logged step."""
    return {k: v for k, v in last_record(run_dir).items() if k.endswith("loss") and isinstance(v, (int, float))}


def rehearse_training(recipe: str, work: Work, depth: int | None) -> dict:
    """A straight run to step 2 and its step-1 checkpoint resumed to step 2 in another folder; the
    resume check (every tensor equal), the losses, the export check."""
    base = work.run(recipe)
    straight = train_run(recipe, work, depth, base / "straight", STEPS, probe=PROBES[STAGE_OF[recipe]],
                         ckpt_every=1)
    last = Path(straight["checkpoint"])
    checkpoint_mib, digest = last.stat().st_size / 2**20, checkpoint_digest(last)
    last.unlink()  # two checkpoints on disk at a time, not three: the digest stands for it
    # the straight run's step-1 checkpoint, moved and resumed in a folder of its own (its run_dir
    # differs: force)
    first = last.with_name(checkpoint_name(1))
    (base / "resumed" / "checkpoints").mkdir(parents=True, exist_ok=True)
    first.replace(base / "resumed" / "checkpoints" / first.name)
    gc.collect()
    resumed = train_run(recipe, work, depth, base / "resumed", STEPS, force=True)
    differences = digest_differences(digest, checkpoint_digest(resumed["checkpoint"]))
    losses = last_losses(base / "straight")
    reloaded = RELOADS[STAGE_OF[recipe]](load(recipe, work, depth, base / "straight", STEPS), straight["export"])
    shutil.rmtree(base / "resumed")  # the exports of "straight" are what later steps need
    return {"trained_params": straight["trained_params"], "frozen_params": straight["frozen_params"],
            "checkpoint_mib": checkpoint_mib,
            "resumed_from": resumed["resumed_from"], "resume_bitwise": not differences,
            "resume_differences": differences[:5], "losses": losses,
            "losses_finite": all(math.isfinite(v) for v in losses.values()),
            "export": straight["export"], "export_same_output": bool(torch.equal(straight["reference"], reloaded))}


# ------------------------------------------------------------------------------------ export checks
# probe(stage, models): an output of the trained models (EMA weights); reload(stage, export): the
# same output of the export loaded back by its public loader. Fixed inputs, seeded.


def _tokens(stage) -> torch.Tensor:
    """Backbone tokens [2, N, D] of two fixed random images at the backbone's resolution."""
    info = stage.backbone.info
    images = torch.randint(0, 256, (2, 3, info.resolution, info.resolution),
                           generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return stage.backbone(images)


def _probe_autoencoder(stage, models) -> torch.Tensor:
    return models["fae"](_tokens(stage), sample=False)["recon"]  # [2, N, D]


def _reload_autoencoder(stage, export) -> torch.Tensor:
    stage.backbone = stage.config.backbone.load("cpu")
    return FAE.from_pretrained(export, backbone=stage.backbone)(_tokens(stage), sample=False)["recon"]


def _probe_pixel_decoder(stage, models) -> torch.Tensor:
    return models["pixel_decoder"](_tokens(stage))  # [2, 3, 256, 256]


def _reload_pixel_decoder(stage, export) -> torch.Tensor:
    stage.backbone = stage.backbone_config.load("cpu")
    decoder = FAE.from_pretrained(export).pixel_decoder if stage.finetune else PixelDecoder.from_pretrained(export)
    return decoder(_tokens(stage))


def _generator_batch(stage):
    """The first two training items, as ``loss`` receives them."""
    dataset = stage.train_dataset()
    items = [dataset[i] for i in range(2)]
    return torch.stack([item[0] for item in items]), stage.kind.eval_conditions(items, torch.device("cpu"))


def _probe_generator(stage, models) -> torch.Tensor:
    latents, cond = _generator_batch(stage)
    return stage.kind.loss(models["generator"], latents, cond, torch.Generator().manual_seed(0))


def _reload_generator(stage, export) -> torch.Tensor:
    stage.setup(torch.device("cpu"))
    latents, cond = _generator_batch(stage)
    with torch.no_grad():
        return stage.kind.loss(load_generator(export).model.eval(), latents, cond, torch.Generator().manual_seed(0))


PROBES = {"autoencoder": _probe_autoencoder, "pixel-decoder": _probe_pixel_decoder, "generator": _probe_generator}
RELOADS = {"autoencoder": _reload_autoencoder, "pixel-decoder": _reload_pixel_decoder,
           "generator": _reload_generator}


# ------------------------------------------------------------------------------------ the chain


def write_images(root: Path, classes: int = 3, train: int = 8, val: int = 2, seed: int = 0) -> Path:
    """An ImageNet-layout folder (root/{train,val}/<wnid>/*.JPEG) of random-size noise JPEGs with
    200-500 px sides, and root/captions.jsonl (one caption per training image)."""
    rng = np.random.default_rng(seed)
    captions = []
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{1440764 + c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(200, 501, size=2))
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i:04d}.JPEG", quality=90)
                if split == "train":
                    captions.append({"file": f"train/{folder.name}/img_{i:04d}.JPEG",
                                     "caption": f"a photo of class {c}, number {i}"})
    (root / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    return root


def cache_latents(work: Work, depth: int | None) -> dict:
    """``fae cache-latents`` over the JPEG folder with the stage-II FAE: a labelled cache with
    flipped copies (the class-conditional generators), and a captioned one with T5-XL embeddings
    (``mmdit_t2i``)."""
    cache_labelled(work)
    cache_captioned(work, depth)
    return {"latents": read_manifest(work.latents)["count"], "captioned": read_manifest(work.caption_latents)["count"]}


def _cache(work: Work, overrides: list[str]) -> Path:
    """``fae cache-latents fae=<stage-II export> ... <overrides>`` over the JPEG folder."""
    common = [f"fae={work.export('pixel_decoder_vitl_ii')}", "batch_size=2", "progress=false",
              f"data.root={work.images}", "data.image_size=256"]
    return run_cache(load_config(CacheConfig, None, common + overrides))


def cache_labelled(work: Work) -> Path:
    return _cache(work, [f"out={work.latents}", "data.name=imagefolder", "flip=true"])


def cache_captioned(work: Work, depth: int | None) -> Path:
    return _cache(work, [f"out={work.caption_latents}", "data.name=captions",
                         f"data.captions={work.images / 'captions.jsonl'}", f"text_encoder={TEXT_ENCODER}",
                         f"text_weights={random_weights(depth)}"])


class RandomLatents:
    """Stand-in encoder of the STARFlow SD-VAE baseline (fae ships no SD-VAE): seeded random
    latents of the SD-VAE shape for any images."""

    shape = (4, 32, 32)

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(images), *self.shape, generator=self.generator)  # [b, 4, 32, 32]


def write_sdvae_cache(work: Work) -> Path:
    """A 4x32x32 latent cache written with the cache writer (``write_cache``) from random latents."""
    cfg = CacheConfig(fae="random 4x32x32 latents (rehearsal stand-in for SD-VAE)", out=str(work.sdvae_latents),
                      data=DataConfig(name="imagefolder", root=str(work.images), image_size=256), flip=True,
                      batch_size=2, progress=False)
    identity = {"identity": "rehearsal-random-sdvae", "backbone": None, "resolution": 256,
                "latent_shape": list(RandomLatents.shape)}
    return write_cache(cfg, RandomLatents(), identity=identity, latent_mean=torch.zeros(4),
                       latent_std=torch.ones(4))


def sample_images(work: Work, generator: Path, out: Path, config: str | None = None,
                  prompts: list[str] | None = None, steps: int | None = 2) -> dict:
    """``fae sample`` of 2 images through the stage-II FAE's decoders; checks the ADM batch."""
    overrides = [f"generator={generator}", f"fae={work.export('pixel_decoder_vitl_ii')}", "num=2",
                 "batch_size=2", f"out={out}"] + ([f"sampling.steps={steps}"] if steps else [])
    if prompts is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / "prompts.txt").write_text("\n".join(prompts) + "\n")
        overrides.append(f"prompts={out.parent / 'prompts.txt'}")
    cfg = load_config(SampleConfig, config, overrides)
    start = time.perf_counter()
    with np.load(sample_to_npz(cfg)) as batch:
        images = batch["arr_0"]
    return {"sample_s": time.perf_counter() - start, "samples_shape": list(images.shape),
            "samples_dtype": str(images.dtype),
            "samples_ok": images.dtype == np.uint8 and images.shape == (2, 256, 256, 3) and bool(images.std() > 0),
            "cfg_schedule": [list(p) for p in cfg.sampling.get("cfg_schedule", [])] or None}


def sample_latents(export: Path) -> dict:
    """2 latents of a generator without an FAE decoder (the SD-VAE-shaped STARFlow)."""
    z = load_generator(export).sample(range(2), labels=torch.tensor([0, 1]), seed=0)
    return {"samples_shape": list(z.shape), "samples_ok": bool(torch.isfinite(z).all())}


# ------------------------------------------------------------------------------------ recipes


def rehearse(recipe: str, work: Work, depth: int | None) -> dict:
    """Everything the rehearsal does for one recipe (or the ``cache_latents`` chain step)."""
    if recipe == "cache_latents":
        return cache_latents(work, depth)
    if recipe == "sample_cfg":
        return sample_images(work, work.export("lightningdit_xl1"), work.run(recipe) / "samples.npz",
                             config=str(CONFIGS / "sample_cfg.yaml"))
    if recipe == "starflow_sdvae" and not work.sdvae_latents.exists():
        write_sdvae_cache(work)
    used, note = fitting_depth(recipe, work, depth)
    result = {"depth": used, "depth_note": note, **rehearse_training(recipe, work, used)}
    export, samples = Path(result["export"]), work.run(recipe) / "samples.npz"
    if recipe in ("sit_xl1", "lightningdit_xl1"):
        result.update(sample_images(work, export, samples))
    elif recipe == "starflow_fae":
        result.update(sample_images(work, export, samples, steps=None))
    elif recipe == "mmdit_t2i":
        result.update(sample_images(work, export, samples, prompts=["a photo of class 0", "a red square"]))
    elif recipe == "starflow_sdvae":
        result.update(sample_latents(export))
    return result


def peak_rss_gib() -> float:
    """Peak resident memory of this process (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(recipe: str, work: Work, depth: int | None) -> dict:
    """:func:`rehearse` with its wall time and this process's peak RSS."""
    start = time.perf_counter()
    result = rehearse(recipe, work, depth)
    return {"recipe": recipe, **result, "wall_s": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib()}
