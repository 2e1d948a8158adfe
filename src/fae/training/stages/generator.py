"""``fae train generator``: a SiT / LightningDiT on a latent cache (FAE paper, Sec. 3.3).

Data: the latent cache written by ``fae cache-latents`` (and its flipped copies when present),
normalised per channel with the statistics the cache records, which are the FAE export's. The
latent shape (``model.latent_channels`` / ``model.latent_size``) is read from upstream when left
null: the FAE export named by ``data.fae``, else the cache's manifest (JSON only, so ``--dry-run``
works before any weights are loaded); explicit values must agree with it.

Loss: the flow-matching velocity MSE of ``fae.generation.transport`` with the configured t-sampling
and shift. The engine keeps an EMA of the network; evaluation and the export use it. The export
(``run_dir/export``) is a ``Generator`` folder holding the EMA weights, the resolved architecture
(numbers, never null), the latent statistics (to un-normalise samples) and the identity of the
FAE that wrote the cache.

``kind: mmdit`` trains the text-to-image MMDiT (``fae.generation.mmdit``, FAE paper Sec. 5.2) on a
captioned latent cache with the same transport and sampler: its architecture is the ``mmdit``
section, its frozen text encoder the ``text`` section (embeddings read from the cache, whose
manifest must name the same encoder, or computed online from the cached captions); captions are
replaced by the learned null caption with probability ``mmdit.caption_dropout`` (CFG training). Its
export is a ``TextToImageGenerator`` folder (``fae sample --prompts``).

``kind: flow`` trains a STARFlow normalizing flow (``fae.generation.flow``) instead, on the same
cache through the same loop: its architecture is the ``flow`` section, its sampler settings
``flow_sampling``, its loss the exact NLL per dimension of noise-augmented latents (evaluation:
``bits_per_dim``), its export a ``FlowGenerator`` folder that ``fae sample`` recognises.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fae import distributed as du
from fae.autoencoder import FAE
from fae.config import OMIT_IF_DEFAULT, to_dict
from fae.data.latent_cache import LatentCache, read_fae_export, read_manifest
from fae.data.shard_store import MANIFEST
from fae.errors import CheckpointError, ConfigError, LatentCacheError
from fae.generation import FlowConfig, FlowSamplerConfig, GeneratorConfig, MMDiTConfig, SamplerConfig, TransportConfig
from fae.generation.decode import SampleDecoder, check_pair, decoder_folder
from fae.generation.generator import LatentGenerator
from fae.images import image_grid, save_png
from fae.text import TextEncoderConfig
from fae.training.config import OptimConfig, TrainConfig
from fae.training.preflight import fae_export_check, latent_cache_check
from fae.training.stage import Stage
from fae.training.stages.generator_kinds import KINDS

# The config sections that belong to one kind or another (each kind reads some of them).
KIND_SECTIONS = ("model", "transport", "sampling", "flow", "flow_sampling", "mmdit", "text")


def _default_train() -> TrainConfig:
    # Paper: AdamW lr 1e-4 constant, batch 512, EMA.
    return TrainConfig(run_dir="runs/generator", batch_size=512, ema_decay=0.9999,
                       optim=OptimConfig(lr=1e-4, schedule="constant", grad_clip=None))


@dataclass
class LatentDataConfig:
    """Where the training latents come from.

    Args:
        cache: folder written by ``fae cache-latents``.
        fae: the FAE export the generator is for (optional); the cache must have been written by it.
            When set, evaluation also decodes a grid of samples to PNG (if it has a pixel decoder).
        flip: train on the cache's horizontally flipped copies too (when it stored them).
    """

    cache: str = "runs/latents"
    fae: str | None = None
    flip: bool = True


@dataclass
class GeneratorEvalConfig:
    """Held-out figures computed at evaluation (EMA weights).

    Args:
        loss_items: first cache items whose velocity loss, with fixed noise and times, is reported
            as fixed_noise_loss (training items: the cache has no held-out split).
        grid_samples: samples decoded into ``run_dir/samples/step_XXXXXXX.png`` (needs data.fae).
        seed: seed of the evaluation noise and samples.
    """

    loss_items: int = 256
    grid_samples: int = 16
    seed: int = 0


@dataclass
class GeneratorRunConfig:
    """``fae train generator`` config: kind / train / model / transport / sampling / flow /
    flow_sampling / mmdit / text / data / eval sections. ``kind: diffusion`` uses model, transport
    and sampling; ``kind: flow`` uses flow and flow_sampling; ``kind: mmdit`` uses mmdit, text,
    transport and sampling (the sections of the other kinds must stay unset)."""

    kind: Literal["diffusion", "flow", "mmdit"] = field(default="diffusion", metadata=OMIT_IF_DEFAULT)
    train: TrainConfig = field(default_factory=_default_train)
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig, metadata=OMIT_IF_DEFAULT)
    flow_sampling: FlowSamplerConfig = field(default_factory=FlowSamplerConfig, metadata=OMIT_IF_DEFAULT)
    mmdit: MMDiTConfig = field(default_factory=MMDiTConfig, metadata=OMIT_IF_DEFAULT)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig, metadata=OMIT_IF_DEFAULT)
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    eval: GeneratorEvalConfig = field(default_factory=GeneratorEvalConfig)

    def validate(self) -> None:
        """A section of another kind that is set would be silently ignored: refuse it."""
        kind = KINDS[self.kind]
        for section in (s for s in KIND_SECTIONS if s not in kind.sections):
            if to_dict(getattr(self, section)) != to_dict(type(getattr(self, section))()):
                raise ConfigError(f"config section '{section}' is set, but kind is '{self.kind}', which "
                                  f"does not use it ({kind.unused_hint})")

    @property
    def architecture_section(self) -> str:
        """The config section of the network this run trains (``model``, ``flow`` or ``mmdit``)."""
        return KINDS[self.kind].section


class GeneratorStage(Stage):
    """Args: config: a :class:`GeneratorRunConfig`. What depends on its ``kind`` is delegated to
    ``self.kind`` (``fae.training.stages.generator_kinds``)."""

    name = "generator"

    def __init__(self, config: GeneratorRunConfig):
        config.validate()
        kind, section = KINDS[config.kind], config.architecture_section
        model, self.latent_source = resolve_latent_shape(getattr(config, section), config.data, section)
        model = kind.complete(model, config)
        config = replace(config, **{section: model})
        model.resolved()  # validate the architecture now, before any work
        config.transport.validate()
        config.sampling.validate()
        config.flow_sampling.validate()
        self.config = config
        self.kind = kind(config)
        self.cache = None
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def build_models(self, device) -> dict[str, nn.Module]:
        return {"generator": self.kind.build(device)}

    def ema_modules(self) -> list[str]:
        return ["generator"]

    def setup(self, device: torch.device) -> None:
        """Open the cache; check it was written by ``data.fae`` and fits the model."""
        data, model = self.config.data, self.kind.architecture.resolved()
        self.cache = LatentCache(data.cache, fae=data.fae)
        if tuple(self.cache.latent_shape) != model.latent_shape:
            raise LatentCacheError(f"latent cache '{data.cache}' holds latents of shape "
                                   f"{list(self.cache.latent_shape)}, but the model is built for "
                                   f"{list(model.latent_shape)} (from {self.latent_source})")
        self.kind.setup(self.cache, device)
        labels = self.cache.labels()
        if model.num_classes > 0 and len(labels) and (labels.min() < 0 or labels.max() >= model.num_classes):
            key = self.kind.section
            raise ConfigError(f"config key '{key}.num_classes' is {model.num_classes}, but cache "
                              f"'{data.cache}' has labels in [{int(labels.min())}, {int(labels.max())}] "
                              f"(-1 = unlabelled: use {key}.num_classes=0)")
        self.stats = self.cache.stats()
        self.device = device

    def inputs(self):
        """The FAE export ``data.fae`` (when set) and the finished latent cache it wrote."""
        data = self.config.data
        made_by = "`fae train pixel-decoder --config ...` with stage=finetune (stage II; or stage Ia's export)"
        return [*([fae_export_check(data.fae, "data.fae", made_by)] if data.fae else []),
                latent_cache_check(data.cache, data.fae)]

    def synthetic_batch(self, size, device):
        """Normalised latents [B, c, h, w], then the kind's conditions (labels, or cached text
        embeddings)."""
        latents = torch.randn(size, *self.kind.architecture.resolved().latent_shape, device=device)
        return [latents, *self.kind.synthetic_conditions(size, device)]

    def sampling_passes(self) -> float:
        """Network forward passes per sample at the configured sampler (the kind counts them)."""
        return self.kind.sampling_passes()

    def train_dataset(self):
        return self.kind.dataset(self.cache, self.stats)

    def loss(self, phase, batch, models, step):
        latents, *rest = batch  # [b, c, h, w] normalised; labels [b], captions, or text embeddings
        labels = rest[0] if len(rest) == 1 else rest
        loss = self.kind.loss(models["generator"], latents, labels)
        return loss, self.kind.loss_figures(loss.detach())

    def evaluate(self, models, step: int, run_dir: Path) -> dict[str, float]:
        """fixed_noise_loss: the loss on the first cache items with fixed noise and times (low
        variance, comparable across evaluations; the flow's: NLL per dimension with fixed
        augmentation noise, also as bits_per_dim); plus a sample grid when data.fae is set."""
        network = models["generator"]
        device = next(network.parameters()).device
        dataset = self.train_dataset()
        n = min(self.config.eval.loss_items, len(self.cache))
        if n == 0:
            return {}
        items = [dataset[i] for i in range(n)]
        latents = torch.stack([item[0] for item in items])  # [n, c, h, w]
        labels = self.kind.eval_conditions(items, device)
        generator = torch.Generator(device=device).manual_seed(self.config.eval.seed)
        loss = self.kind.loss(network, latents.to(device), labels, generator)
        if self.config.data.fae and self.config.eval.grid_samples > 0 and du.is_main():
            self._sample_grid(network, step, run_dir)
        return {"fixed_noise_loss": float(loss), **self.kind.loss_figures(float(loss))}

    def wrap(self, network: nn.Module) -> LatentGenerator:
        """The network as its kind's exported generator, with this run's statistics and settings."""
        return self.kind.wrap(network, self.stats, self.cache.identity)

    def _sample_grid(self, network: nn.Module, step: int, run_dir: Path) -> Path | None:
        """Decode ``eval.grid_samples`` samples (classes or the cache's captions, cycled) with the
        FAE into a PNG grid."""
        generator = self.wrap(network)
        fae, sampling = self.grid_decoder(next(network.parameters()).device, generator)
        if fae.pixel_decoder is None:
            return None
        n = self.config.eval.grid_samples
        decoder = SampleDecoder(generator, fae, sampling)
        prompts = self.kind.grid_prompts(self.cache, n)
        samples = decoder.all(range(n), seed=self.config.eval.seed, prompts=prompts)  # uint8 [n, C, H, W]
        ncol = max(1, int(n ** 0.5))
        return save_png(image_grid(samples.images, ncol=ncol), run_dir / "samples" / f"step_{step:07d}.png")

    def grid_decoder(self, device: torch.device | str, generator: LatentGenerator) -> tuple[FAE, object]:
        """The FAE that decodes ``generator``'s sample grid, and the sampler settings that go with
        it: a flow sampler's ``finetuned_decoder`` once that export exists (its samples skip the
        score step, as ``fae sample`` draws them, and it is checked to fit the generator as there);
        before then, ``data.fae`` with the score step."""
        sampling, folder = self.kind.sampling, decoder_folder(self.kind.sampling, self.config.data.fae)
        if folder == self.config.data.fae:
            return FAE.from_pretrained(folder, device=device), sampling
        try:
            FAE.check_export(folder, pixel_decoder=True)
        except CheckpointError:
            return FAE.from_pretrained(self.config.data.fae, device=device), replace(sampling, finetuned_decoder=None)
        fae = FAE.from_pretrained(folder, device=device)
        check_pair(generator, fae.identity(), fae.latent_shape, "the generator being trained", folder)
        return fae, sampling

    def export(self, models, run_dir: Path) -> Path:
        return self.wrap(models["generator"]).save_pretrained(run_dir / "export")

    def describe(self) -> dict[str, str]:
        return {**self.kind.describe(),
                "data": f"latent cache {self.config.data.cache}; latent shape from {self.latent_source}"}


def upstream_latent_shape(data: LatentDataConfig) -> tuple[tuple[int, int, int], str] | None:
    """(c, h, w) of the latents the generator will see, and where it was read: the FAE export
    ``data.fae`` when it exists, else the manifest of the cache ``data.cache``; None when neither
    exists yet (e.g. a dry run before the FAE is trained). Reads JSON only."""
    if data.fae and Path(data.fae).exists():
        return read_fae_export(data.fae)["latent_shape"], f"the FAE export data.fae='{data.fae}'"
    if (Path(data.cache) / MANIFEST).is_file():
        shape = tuple(read_manifest(data.cache)["fae"]["latent_shape"])
        return shape, f"the latent cache data.cache='{data.cache}'"
    return None


def resolve_latent_shape(model: GeneratorConfig | FlowConfig, data: LatentDataConfig, section: str = "model"
                         ) -> tuple[GeneratorConfig | FlowConfig, str]:
    """``model`` (the config section ``section``) with its latent shape filled (and explicit
    values checked) from upstream, and a description of the source. Explicit values alone are
    used when nothing upstream exists yet."""
    found = upstream_latent_shape(data)
    if found is not None:
        return model.with_latent_shape(*found), found[1]
    missing = [f"'{section}.{k}'" for k in ("latent_channels", "latent_size") if getattr(model, k) is None]
    if missing:
        raise ConfigError(f"config key{'s' if len(missing) > 1 else ''} {' and '.join(missing)} "
                          f"{'are' if len(missing) > 1 else 'is'} null and there is nothing to read them "
                          f"from: data.fae ({data.fae or 'unset'}) names no FAE export and data.cache "
                          f"('{data.cache}') holds no manifest. Point data.fae at the FAE export "
                          f"(`fae train autoencoder` writes run_dir/export) or data.cache at a latent "
                          f"cache (`fae cache-latents`), or set {section}.latent_channels and "
                          f"{section}.latent_size to the FAE's latent c and h")
    return model, f"the config ({section}.latent_channels / {section}.latent_size)"


CONFIG_CLASS = GeneratorRunConfig


def build_stage(cfg: GeneratorRunConfig) -> GeneratorStage:
    return GeneratorStage(cfg)
