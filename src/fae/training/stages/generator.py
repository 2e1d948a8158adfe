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

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fae.config import OMIT_IF_DEFAULT, to_dict
from fae.errors import ConfigError, LatentCacheError
from fae.generation import (SIZES, FlowConfig, FlowGenerator, FlowSamplerConfig, Generator, GeneratorConfig,
                            SamplerConfig, Transport, TransportConfig, build_flow)
from fae.generation.flow import flow_loss
from fae.generation.conditioning import TextCondition
from fae.generation.flow_config import FLOW_SIZES, PUBLISHED_PARAMS
from fae.generation.mmdit import build_mmdit
from fae.generation.mmdit_config import MMDIT_SIZES, PUBLISHED_MMDIT_PARAMS, MMDiTConfig
from fae.generation.model import build_generator, format_params
from fae.generation.t2i_generator import TextToImageGenerator
from fae.text import TextEncoderConfig
from fae.training.config import OptimConfig, TrainConfig
from fae.training.stage import Stage


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
        """A section of the other kind that is set would be silently ignored: refuse it."""
        if self.kind == "diffusion":
            unused, hint = ("flow", "flow_sampling", "mmdit", "text"), "set kind: flow or kind: mmdit to use it"
        elif self.kind == "mmdit":
            unused, hint = ("model", "flow", "flow_sampling"), "the MMDiT is configured by mmdit / text"
        else:
            unused, hint = ("model", "transport", "sampling", "mmdit", "text"), \
                "the flow is configured by flow / flow_sampling"
        for section in unused:
            if to_dict(getattr(self, section)) != to_dict(type(getattr(self, section))()):
                raise ConfigError(f"config section '{section}' is set, but kind is '{self.kind}', which "
                                  f"does not use it ({hint})")

    @property
    def flow_kind(self) -> bool:
        return self.kind == "flow"

    @property
    def text_kind(self) -> bool:
        return self.kind == "mmdit"

    @property
    def architecture_section(self) -> str:
        return {"flow": "flow", "mmdit": "mmdit"}.get(self.kind, "model")


class GeneratorStage(Stage):
    """Args: config: a :class:`GeneratorRunConfig`."""

    name = "generator"

    def __init__(self, config: GeneratorRunConfig):
        config.validate()
        section = config.architecture_section
        model, self.latent_source = resolve_latent_shape(getattr(config, section), config.data, section)
        if config.text_kind:
            config.text.validate()
            info = config.text.info()  # registry entry or a local folder's config.json: no weights
            model = model.with_text(info.dim, info.pooled_dim, f"text encoder '{info.name}' (text.encoder)")
        config = replace(config, **{section: model})
        model.resolved()  # validate the architecture now, before any work
        config.transport.validate()
        config.sampling.validate()
        config.flow_sampling.validate()
        self.config = config
        self.transport = Transport(config.transport)
        self.cache = None
        self.text_encoder = None  # loaded in setup for text.embeddings: online
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def architecture(self) -> GeneratorConfig | FlowConfig | MMDiTConfig:
        """The config of the network this run trains (``model``, ``flow`` or ``mmdit``)."""
        return getattr(self.config, self.config.architecture_section)

    def text_identity(self) -> dict:
        """What a latent cache's text embeddings must have been made with (no weights needed)."""
        info, text = self.config.text.info(), self.config.text
        return {"name": info.name, "max_length": text.max_length or info.max_length, "dim": info.dim,
                "pooled_dim": info.pooled_dim}

    @property
    def sampling(self) -> SamplerConfig | FlowSamplerConfig:
        return self.config.flow_sampling if self.config.flow_kind else self.config.sampling

    def build_models(self, device) -> dict[str, nn.Module]:
        if self.config.flow_kind:
            return {"generator": build_flow(self.config.flow, device)}
        if self.config.text_kind:
            return {"generator": build_mmdit(self.config.mmdit, device)}
        return {"generator": build_generator(self.config.model, device)}

    def ema_modules(self) -> list[str]:
        return ["generator"]

    def setup(self, device: torch.device) -> None:
        """Open the cache; check it was written by ``data.fae`` and fits the model."""
        from fae.data.latent_cache import LatentCache

        data, model = self.config.data, self.architecture.resolved()
        self.cache = LatentCache(data.cache, fae=data.fae)
        if tuple(self.cache.latent_shape) != model.latent_shape:
            raise LatentCacheError(f"latent cache '{data.cache}' holds latents of shape "
                                   f"{list(self.cache.latent_shape)}, but the model is built for "
                                   f"{list(model.latent_shape)} (from {self.latent_source})")
        if self.config.text_kind:
            self._setup_text(device)
        labels = self.cache.labels()
        if model.num_classes > 0 and len(labels) and (labels.min() < 0 or labels.max() >= model.num_classes):
            key = "flow" if self.config.flow_kind else "model"
            raise ConfigError(f"config key '{key}.num_classes' is {model.num_classes}, but cache "
                              f"'{data.cache}' has labels in [{int(labels.min())}, {int(labels.max())}] "
                              f"(-1 = unlabelled: use {key}.num_classes=0)")
        self.stats = self.cache.stats()
        self.device = device

    def _setup_text(self, device: torch.device) -> None:
        if not self.cache.has_captions:
            raise LatentCacheError(f"latent cache '{self.config.data.cache}' holds no captions; kind: mmdit "
                                   f"needs a cache written from a captioned dataset (data.name: captions "
                                   f"or webdataset in `fae cache-latents`)")
        if self.config.text.embeddings == "cache":
            self.cache.check_text_encoder(self.text_identity())
        else:
            self.text_encoder = self.config.text.load(device)

    def synthetic_batch(self, size, device):
        """Normalised latents with labels, or with cached text embeddings (tokens, mask, pooled)."""
        model = self.architecture.resolved()
        latents = torch.randn(size, *model.latent_shape, device=device)  # [B, c, h, w]
        if not self.config.text_kind:
            return [latents, torch.zeros(size, dtype=torch.long, device=device)]
        if self.config.text.embeddings != "cache":
            raise ConfigError("fae plan needs text.embeddings: cache (captions encoded online depend on "
                              "the text encoder's weights and tokenizer)")
        text = self.text_identity()  # tokens [B, L, D], mask [B, L], pooled [B, P]
        return [latents, torch.randn(size, text["max_length"], text["dim"], device=device),
                torch.ones(size, text["max_length"], dtype=torch.bool, device=device),
                torch.randn(size, text["pooled_dim"], device=device)]

    def sampling_passes(self) -> float:
        """Network forward passes per sample at the configured sampler, in units of one item.
        Diffusion / MMDiT: counted by running the real integrator and guidance code on a stand-in
        network that returns zeros (steps x model calls per step x CFG branches where w != 1).
        Flow: the KV-cached inversion visits every token of every block once, the cost of one
        forward pass (two with guidance: conditional and unconditional), and the score-based
        denoising step is a forward and a backward pass (3 forward-equivalents)."""
        if self.config.flow_kind:
            sampling = self.config.flow_sampling
            return (2.0 if sampling.guided else 1.0) + (3.0 if sampling.denoise and self.config.flow.noise_std > 0
                                                        else 0.0)
        from fae.generation.samplers import GuidedVelocity, integrate

        items = []

        def stand_in(x, t, cond):
            items.append(x.shape[0])
            return torch.zeros_like(x)

        cond = torch.zeros(1, dtype=torch.long)  # one sample; any condition enables CFG branches
        velocity = GuidedVelocity(stand_in, cond, cond, self.config.sampling)
        integrate(velocity, torch.zeros(1, 1), self.config.sampling, shift=self.config.transport.shift or 1.0)
        return float(sum(items))

    def train_dataset(self):
        from fae.data.latent_cache import CaptionLatentDataset, LatentDataset

        if self.config.text_kind:
            return CaptionLatentDataset(self.cache, *self.stats, flip=self.config.data.flip,
                                        embeddings=self.config.text.embeddings == "cache")
        return LatentDataset(self.cache, *self.stats, flip=self.config.data.flip)

    def _cond(self, labels):
        """The network's condition from a batch's second part: labels [b] (class-conditional), the
        cached text embeddings (tokens, mask, pooled), or captions encoded now (online)."""
        if self.config.text_kind:
            if self.text_encoder is not None:  # a list of caption strings
                return TextCondition(*self.text_encoder.encode(list(labels)))
            return TextCondition(*labels)
        return labels if self.architecture.num_classes > 0 else None

    def _loss(self, network: nn.Module, latents: torch.Tensor, labels,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Velocity loss (diffusion) or NLL per dimension in nats of noise-augmented latents (flow)."""
        if self.config.flow_kind:
            return flow_loss(network, latents, self._cond(labels), self.config.flow.noise_std, generator)
        return self.transport.loss(network, latents, self._cond(labels), generator=generator)

    def loss(self, phase, batch, models, step):
        latents, *rest = batch  # [b, c, h, w] normalised; labels [b], captions, or text embeddings
        labels = rest[0] if len(rest) == 1 else rest
        loss = self._loss(models["generator"], latents, labels)
        return loss, ({"bits_per_dim": loss.detach() / math.log(2)} if self.config.flow_kind else {})

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
        labels = self._eval_conditions(items, device)
        generator = torch.Generator(device=device).manual_seed(self.config.eval.seed)
        loss = self._loss(network, latents.to(device), labels, generator)
        if self.config.data.fae and self.config.eval.grid_samples > 0:
            from fae import distributed as du

            if du.is_main():
                self._sample_grid(network, step, run_dir)
        if self.config.flow_kind:  # the flow's loss is an exact likelihood (of noisy latents)
            return {"fixed_noise_loss": float(loss), "bits_per_dim": float(loss) / math.log(2)}
        return {"fixed_noise_loss": float(loss)}

    def _eval_conditions(self, items: list[tuple], device: torch.device):
        """The second part of a batch of dataset items, as ``loss`` receives it."""
        if not self.config.text_kind:
            return torch.tensor([item[1] for item in items]).to(device)  # labels [n]
        if len(items[0]) == 2:  # captions (online text encoding)
            return [item[1] for item in items]
        return [torch.stack([item[k] for item in items]).to(device) for k in (1, 2, 3)]

    def wrap(self, network: nn.Module) -> Generator | FlowGenerator | TextToImageGenerator:
        """The network as a :class:`Generator` (or :class:`FlowGenerator`) with this run's
        statistics and settings."""
        if self.config.flow_kind:
            return FlowGenerator(self.config.flow, *self.stats, sampling=self.config.flow_sampling,
                                 fae_identity=self.cache.identity, network=network)
        if self.config.text_kind:
            gen = TextToImageGenerator(self.config.mmdit, self.config.transport, *self.stats,
                                       sampling=self.config.sampling, fae_identity=self.cache.identity,
                                       text={**self.config.text.record(), "identity": self.text_identity()},
                                       network=network)
            if self.text_encoder is not None:
                gen.attach_text_encoder(self.text_encoder)
            return gen
        return Generator(self.config.model, self.config.transport, *self.stats,
                         sampling=self.config.sampling, fae_identity=self.cache.identity, network=network)

    def _sample_grid(self, network: nn.Module, step: int, run_dir: Path) -> Path | None:
        """Decode ``eval.grid_samples`` samples (classes cycled) with the FAE into a PNG grid."""
        from fae.autoencoder import FAE
        from fae.generation.decode import SampleDecoder
        from fae.images import image_grid, save_png

        fae = FAE.from_pretrained(self.config.data.fae, device=next(network.parameters()).device)
        if fae.pixel_decoder is None:
            return None
        n = self.config.eval.grid_samples
        decoder = SampleDecoder(self.wrap(network), fae, self.sampling)
        prompts = None
        if self.config.text_kind:  # the first captions of the cache, cycled
            captions = self.cache.captions()
            prompts = [captions[i % len(captions)] for i in range(n)]
        samples = decoder.all(range(n), seed=self.config.eval.seed, prompts=prompts)  # uint8 [n, C, H, W]
        ncol = max(1, int(n ** 0.5))
        return save_png(image_grid(samples.images, ncol=ncol), run_dir / "samples" / f"step_{step:07d}.png")

    def export(self, models, run_dir: Path) -> Path:
        return self.wrap(models["generator"]).save_pretrained(run_dir / "export")

    def describe(self) -> dict[str, str]:
        if self.config.flow_kind:
            return self._describe_flow()
        if self.config.text_kind:
            return self._describe_mmdit()
        cfg = self.config.model.resolved()
        style = {"sit": "SiT", "lightningdit": "LightningDiT"}[cfg.style]
        blocks = f"norm={cfg.norm}, mlp={cfg.mlp}, rope={cfg.rope}, qk_norm={cfg.qk_norm}"
        params = build_generator(cfg, "meta").num_params()
        size = cfg.size if SIZES[cfg.size] == (cfg.depth, cfg.dim, cfg.heads) else "custom"
        return {"generator": f"{style}-{size}/{cfg.patch_size} ({cfg.depth} x {cfg.dim}, {cfg.heads} "
                             f"heads; {blocks}) on {cfg.latent_channels}x{cfg.latent_size}x"
                             f"{cfg.latent_size} latents: {format_params(params)} parameters",
                "transport": f"{self.config.transport.time_sampling} t, shift {self.config.transport.shift} "
                             f"(paper form; t = 1 is noise), cosine velocity loss weight "
                             f"{self.config.transport.cosine_weight:g}",
                "data": f"latent cache {self.config.data.cache}; latent shape from {self.latent_source}"}

    def _describe_mmdit(self) -> dict[str, str]:
        cfg = self.config.mmdit.resolved()
        network = build_mmdit(cfg, "meta")
        blocks = sum(p.numel() for p in network.blocks.parameters())
        size = cfg.size if MMDIT_SIZES[cfg.size] == (cfg.depth, cfg.dim, cfg.heads) else "custom"
        published = PUBLISHED_MMDIT_PARAMS.get(size, "none for this size")
        info, text = self.config.text.info(), self.config.text
        return {"generator": f"MMDiT-{size}/{cfg.patch_size} ({cfg.depth} x {cfg.dim}, {cfg.heads} heads x "
                             f"{cfg.dim // cfg.heads}, MLP ratio {cfg.mlp_ratio:g}, qk_norm={cfg.qk_norm}, "
                             f"2-D RoPE on latent tokens={cfg.rope}, text tokens unrotated) on "
                             f"{cfg.latent_channels}x{cfg.latent_size}x{cfg.latent_size} latents: "
                             f"{format_params(network.num_params())} parameters (the trainable network: "
                             f"{format_params(blocks)} in the {cfg.depth} joint blocks"
                             f"{', last text stream pre-only' if cfg.context_pre_only else ''}, the rest in "
                             f"patch/text/pooled/timestep embedders, null caption and final layer; the "
                             f"frozen text encoder is not counted); published: {published}",
                "text": f"{info.name} ({info.description}; tokens {info.dim}-d, pooled {info.pooled_dim}-d, "
                        f"{text.max_length or info.max_length} tokens), embeddings {text.embeddings}; "
                        f"caption dropout {cfg.caption_dropout:g}",
                "transport": f"{self.config.transport.time_sampling} t, shift {self.config.transport.shift} "
                             f"(paper form; t = 1 is noise)",
                "data": f"latent cache {self.config.data.cache}; latent shape from {self.latent_source}"}

    def _describe_flow(self) -> dict[str, str]:
        cfg = self.config.flow.resolved()
        params = build_flow(cfg, "meta").num_params()
        size = cfg.size if FLOW_SIZES[cfg.size] == (cfg.deep_layers, cfg.shallow_blocks, cfg.shallow_layers,
                                                    cfg.dim) else "custom"
        published = PUBLISHED_PARAMS.get(size, "none for this size")
        heads = cfg.dim // cfg.head_dim
        return {"generator": f"STARFlow-{size}/{cfg.patch_size} (deep block {cfg.deep_layers} layers + "
                             f"{cfg.shallow_blocks} shallow x {cfg.shallow_layers}, width {cfg.dim}, {heads} "
                             f"heads, {cfg.style}) on {cfg.latent_channels}x{cfg.latent_size}x{cfg.latent_size} "
                             f"latents ({cfg.grid[0] * cfg.grid[1]} tokens): {format_params(params)} "
                             f"parameters; published: {published}",
                "flow": f"noise augmentation std {cfg.noise_std:g} (normalised latents), classes "
                        f"{cfg.num_classes} (label dropout {cfg.class_dropout:g}, conditioning "
                        f"{cfg.condition} blocks); sampling cfg_scale {self.config.flow_sampling.cfg_scale:g}, "
                        f"denoise {self.config.flow_sampling.denoise}",
                "data": f"latent cache {self.config.data.cache}; latent shape from {self.latent_source}"}


def upstream_latent_shape(data: LatentDataConfig) -> tuple[tuple[int, int, int], str] | None:
    """(c, h, w) of the latents the generator will see, and where it was read: the FAE export
    ``data.fae`` when it exists, else the manifest of the cache ``data.cache``; None when neither
    exists yet (e.g. a dry run before the FAE is trained). Reads JSON only."""
    from fae.data.latent_cache import MANIFEST, read_fae_export, read_manifest

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
