"""Stage Ia of the paper: the FAE encoder + feature decoder (``fae train autoencoder``).

The frozen backbone (the ``backbone:`` section) turns images into tokens x; the FAE learns
x -> z -> x_hat with ``||x_hat - x||^2 + beta * KL`` on per-channel standardised features (see
``fae/autoencoder/normalization.py``). The FAE records the backbone it was trained on: the stage
fills ``model.backbone`` / ``model.resolution`` from ``backbone.name`` / ``backbone.resolution``
(setting them under ``model:`` is an error). Two ways to feed it:

- ``cache_tokens: true`` (small datasets, the demo): tokens of the training and held-out splits
  come from the shared disk cache (:class:`fae.backbones.token_cache.TokenCache`, under
  ``token_cache_dir``; default ``run_dir/token_cache``), so the backbone sees each image once
  across stages and runs.
- ``cache_tokens: false`` (ImageNet): images are read and the backbone runs inside every step.

``model.extra_tokens: reconstruct`` (see ``fae/autoencoder/extra_tokens.py``): the stage also feeds
the backbone's CLS / register tokens (``backbone.forward_all``; the token cache then keeps them
beside the patches, ``TokenCache(with_extra=True)``), the step is ``fae(tokens, extra=extras)`` and
the loss gains ``fae_loss``'s ``rec_extra`` term. The extra tokens are standardised by the FAE's own
``extra_normalizer`` (one per-channel mean / std over every CLS and register token of the same
``stats_images`` items, measured beside the patch statistics).

The feature statistics (:class:`fae.stats.ChannelStats` over the first ``stats_images`` training
items, sharded over ranks) are measured once per run folder and kept in
``run_dir/feature_stats.safetensors``, so a resume does not measure them again. The latent
statistics (posterior means of the same items) are measured at export and stored in the export
(``FAE.set_latent_stats``): the one place the latent cache and the generator read them from.

Held-out metrics (each evaluation): cosine similarity and relative L2 of reconstructed vs original
raw tokens (``fae.evaluation.recon``), normalised MSE, KL, latent per-channel mean/std (with
reconstructed extra tokens: their cosine ``extra_cosine`` and normalised MSE ``rec_extra``), and
optionally the paper's linear probe (a head trained on raw pooled train features, scored on raw vs
FAE-reconstructed held-out features).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from fae import distributed as du
from fae.autoencoder.model import FAE, FAEConfig, fae_loss
from fae.autoencoder.vae import gaussian_kl
from fae.backbones.config import PAPER_BACKBONE, BackboneConfig
from fae.backbones.token_cache import TokenCache, TokenDataset, dtype_named
from fae.config import to_dict
from fae.backbones.weights import RANDOM_WEIGHTS
from fae.data.batches import iterate_batches
from fae.data.datasets import DataConfig, build_dataset, synthetic_images
from fae.errors import ConfigError, DataError
from fae.evaluation.linear_head import head_accuracy
from fae.evaluation.probe import train_linear_head
from fae.evaluation.probe_features import probe_features
from fae.evaluation.recon import feature_cosine, feature_relative_l2
from fae.io import atomic_save_safetensors
from fae.stats import ChannelStats
from fae.training.config import OptimConfig, TrainConfig
from fae.training.preflight import backbone_check, data_checks
from fae.training.stage import Stage

# ``model.backbone`` of the run config: the stage fills it from the ``backbone:`` section.
FROM_BACKBONE_SECTION = "(from backbone.name)"


def _paper_train() -> TrainConfig:
    # Paper, stage Ia: AdamW (0.9, 0.999), peak LR 1e-4, cosine, 1000 warm-up steps, 1M steps, batch 1024.
    return TrainConfig(run_dir="runs/autoencoder", steps=1_000_000, batch_size=1024,
                       optim=OptimConfig(lr=1e-4, schedule="cosine", warmup_steps=1000))


def _model_without_backbone() -> FAEConfig:
    return FAEConfig(backbone=FROM_BACKBONE_SECTION)


def _paper_backbone() -> BackboneConfig:
    return BackboneConfig(name=PAPER_BACKBONE)


@dataclass
class LossConfig:
    """Stage Ia loss weights.

    Args:
        kl_weight: beta on the KL term (paper: unstated). Our default 1e-4, with both terms as
            per-element means (``fae_loss``): it keeps the posterior a proper distribution (finite
            sigma, bounded latent scale for the generator) while costing well under 1% of a typical
            reconstruction loss.
    """

    kl_weight: float = 1e-4

    def validate(self) -> None:
        if self.kl_weight < 0:
            raise ConfigError(f"config key 'loss.kl_weight' must be >= 0, got {self.kl_weight}")


@dataclass
class AutoencoderEvalConfig:
    """Held-out evaluation of stage Ia.

    Args:
        split: held-out split of ``data`` ("test" for Fashion-MNIST, "val" for ImageNet).
        limit: number of held-out images (``data``'s limit rule); null = all.
        batch_size: images/tokens per forward pass (also the token cache's backbone batch).
        probe: also run the linear probe (needs labels and ``cache_tokens``).
        probe_train_limit: training images for the probe head; null = all cached.
        probe_epochs: L-BFGS iterations of the probe.
    """

    split: str = "test"
    limit: int | None = 1000
    batch_size: int = 64
    probe: bool = False
    probe_train_limit: int | None = None
    probe_epochs: int = 100


@dataclass
class AutoencoderRunConfig:
    """``fae train autoencoder`` config.

    Args:
        train: loop settings (paper defaults above).
        backbone: the frozen backbone (name, resolution, weights; default: the paper's DINOv2-g/14);
            recorded in the FAE.
        model: the FAE architecture (c, feature norm, encoder kind, decoder size); its
            ``backbone`` / ``resolution`` come from ``backbone:``.
        data: training images.
        loss: stage Ia loss weights.
        eval: held-out metrics.
        cache_tokens: train on cached tokens (the backbone runs once; needs ``data.flip: false``).
        token_cache_dir: the token cache folder, shared by stages and runs; null = ``run_dir/token_cache``.
        cache_dtype: storage dtype of cached tokens.
        stats_images: training images used to measure the feature and latent statistics (the
            first ones; all of them when fewer).
    """

    train: TrainConfig = field(default_factory=_paper_train)
    backbone: BackboneConfig = field(default_factory=_paper_backbone)
    model: FAEConfig = field(default_factory=_model_without_backbone)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: AutoencoderEvalConfig = field(default_factory=AutoencoderEvalConfig)
    cache_tokens: bool = False
    token_cache_dir: str | None = None
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    stats_images: int = 10_000

    def validate(self) -> None:
        if self.backbone.name is None:
            raise ConfigError("config key 'backbone.name' must name the frozen backbone (`fae backbones` lists them)")
        if self.model.backbone != FROM_BACKBONE_SECTION:
            raise ConfigError(f"config key 'model.backbone' ('{self.model.backbone}') is not set under "
                              "model: any more: use 'backbone.name' (the FAE records it from there)")
        if self.model.resolution is not None:
            raise ConfigError(f"config key 'model.resolution' ({self.model.resolution}) is not set under "
                              "model: any more: use 'backbone.resolution'")
        if self.cache_tokens and self.data.flip:
            raise ConfigError("config key 'data.flip' must be false with cache_tokens: cached tokens "
                              "cannot be re-augmented")
        if self.eval.probe and not self.cache_tokens:
            raise ConfigError("config key 'eval.probe' needs cache_tokens: true (the probe head is "
                              "trained on cached raw train features)")
        if self.stats_images < 1:
            raise ConfigError(f"config key 'stats_images' must be >= 1, got {self.stats_images}")

    def token_cache_folder(self) -> Path:
        return Path(self.token_cache_dir or Path(self.train.run_dir) / "token_cache")

    def fae_config(self) -> FAEConfig:
        """``model:`` with the backbone it is trained on filled in (what the export records)."""
        info = self.backbone.info()
        return replace(self.model, backbone=info.name, resolution=info.resolution).resolved()


class AutoencoderStage(Stage):
    """Args: config: an :class:`AutoencoderRunConfig`."""

    name = "autoencoder"

    def __init__(self, config: AutoencoderRunConfig):
        self.config = config
        self.fae_config = config.fae_config()
        self.backbone = None
        self.fae: FAE | None = None
        self.tokens: dict[str, TokenDataset] = {}  # split -> cached tokens (cache_tokens mode)
        # extra_tokens "reconstruct": CLS / registers are fed beside the patches everywhere
        self.with_extra = self.fae_config.extra_tokens == "reconstruct"

    # ---- models and data -----------------------------------------------------------------------

    def build_models(self, device):
        device = torch.device(device)
        with device:  # meta: sizes from the backbone registry, no weights, no data
            fae = FAE(self.fae_config)
        if device.type != "meta" and self.fae is None:
            self.fae = fae
        return {"fae": fae}

    def ema_modules(self):
        return ["fae"]

    def setup(self, device: torch.device) -> None:
        """Load the frozen backbone, read (or fill) the token cache, set the feature statistics."""
        cfg = self.config
        self.backbone = cfg.backbone.load(device)
        self.fae.attach_backbone(self.backbone)
        if cfg.cache_tokens:
            cache = TokenCache(cfg.token_cache_folder(), self.backbone, cfg.backbone.weights,
                               dtype_named(cfg.cache_dtype), batch_size=cfg.eval.batch_size,
                               with_extra=self.with_extra)
            for split in dict.fromkeys([cfg.data.split, cfg.eval.split]):
                self.tokens[split] = cache.dataset(self.split_data(split), progress=cfg.train.progress)
                if du.is_main():
                    print(f"token cache ({split}): {cache.folder_for(self.split_data(split))} "
                          f"[{len(self.tokens[split])} items]", flush=True)
        if self.fae_config.feature_norm == "dataset":
            stats = self.feature_stats()
            self.fae.set_feature_stats(stats["mean"], stats["std"])
            if self.with_extra:
                self.fae.set_extra_stats(stats["extra_mean"], stats["extra_std"])

    def inputs(self):
        """The training and held-out images and the backbone's weights."""
        cfg = self.config
        return [*data_checks(cfg.data, cfg.data.split, cfg.eval.split), backbone_check(cfg.backbone)]

    def synthetic_setup(self, device):
        """The backbone with random weights (in the step unless ``cache_tokens``)."""
        self.backbone = replace(self.config.backbone, weights=RANDOM_WEIGHTS).load(device)
        return {"backbone": self.backbone}

    def synthetic_batch(self, size, device):
        """Cached tokens (and extras) with labels, or images with labels: what ``loss`` receives."""
        labels = torch.zeros(size, dtype=torch.long, device=device)
        cfg = self.fae_config
        if not self.config.cache_tokens:
            return synthetic_images(self.config.data, size, device), labels
        tokens = torch.randn(size, cfg.grid[0] * cfg.grid[1], cfg.token_dim, device=device)  # [B, N, D]
        if self.with_extra:
            return [tokens, torch.randn(size, cfg.extra_count, cfg.token_dim, device=device)], labels
        return tokens, labels

    def split_data(self, split: str) -> DataConfig:
        """The data config of ``split``: held-out splits use ``eval.limit`` and never flip."""
        cfg = self.config
        if split == cfg.data.split:
            return cfg.data
        return replace(cfg.data, split=split, limit=cfg.eval.limit, flip=False)

    def train_dataset(self) -> Dataset:
        if self.config.cache_tokens:
            return self.tokens[self.config.data.split]
        return build_dataset(self.config.data)

    def raw_tokens(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch from either dataset -> (raw tokens [B, N, D], raw extra tokens [B, P, D] or None),
        float32 (images go through the backbone; extras only with extra_tokens "reconstruct")."""
        if isinstance(x, (list, tuple)):  # cached (tokens [B, N, D], extra [B, P, D])
            return x[0].float(), x[1].float()
        if x.ndim == 4 and self.with_extra:  # images [B, C, H, W]
            out = self.backbone.forward_all(x)
            return out.patches, out.extra()
        if x.ndim == 4:
            return self.backbone(x), None
        return x.float(), None  # cached tokens [B, N, D]

    def loss(self, phase, batch, models, step):
        x, _ = batch
        tokens, extra = self.raw_tokens(x)
        # target/recon [B, N, D], mean/logvar [B, N, c] (extra_target/extra_recon [B, P, D])
        out = models["fae"](tokens, sample=True, extra=extra)
        return fae_loss(out, self.config.loss.kl_weight)

    @torch.no_grad()
    def batches(self, split: str, count: int | None, shard: bool, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """(raw tokens [b, N, D], raw extra tokens [b, P, D] or None, labels [b]) over the first
        ``count`` items of ``split`` (this rank's slice of them with ``shard``), unflipped, in
        order; tokens float32 on ``device``, extra tokens only with extra_tokens "reconstruct"."""
        cfg = self.config
        cached = self.tokens.get(split) if cfg.cache_tokens else None
        source = cached if cached is not None else build_dataset(replace(self.split_data(split), flip=False))
        n = len(source) if count is None else min(count, len(source))
        indices = du.shard_range(n) if shard else range(n)
        size = cfg.eval.batch_size
        if cached is not None:
            for start in range(indices.start, indices.stop, size):
                stop = min(start + size, indices.stop)
                extra = cached.extra[start:stop].to(device).float() if self.with_extra else None
                yield cached.tokens[start:stop].to(device).float(), extra, cached.labels[start:stop]
            return
        for images, labels in iterate_batches(source, size, indices):
            tokens, extra = self.raw_tokens(images)
            yield tokens.to(device), extra.to(device) if extra is not None else None, labels

    # ---- statistics ------------------------------------------------------------------------------

    def _stats_key(self) -> str:
        """What the feature statistics depend on: training data, backbone, items, token dtype."""
        cfg = self.config
        what = {"data": to_dict(replace(cfg.data, flip=False)), "backbone": to_dict(cfg.backbone),
                "resolution": self.fae_config.resolution, "stats_images": cfg.stats_images,
                "tokens": cfg.cache_dtype if cfg.cache_tokens else "float32"}
        if self.with_extra:  # only then: the key of every patch-only run stays what it was
            what["extra_tokens"] = self.fae_config.extra_count
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def feature_stats(self) -> dict[str, torch.Tensor]:
        """Per-channel ``mean`` / ``std`` [D] of the first ``stats_images`` training tokens (and
        ``extra_mean`` / ``extra_std`` [D] over their CLS / register tokens, with extra_tokens
        "reconstruct"), read from ``run_dir/feature_stats.safetensors`` when an earlier start of
        this run measured them."""
        cfg = self.config
        path, key = Path(cfg.train.run_dir) / "feature_stats.safetensors", self._stats_key()
        names = ("mean", "std") + (("extra_mean", "extra_std") if self.with_extra else ())
        stored = _read_stats(path, key, names)
        if stored is not None:
            return stored
        stats = ChannelStats(self.fae_config.token_dim)
        extra_stats = ChannelStats(self.fae_config.token_dim)
        for tokens, extra, _ in self.batches(cfg.data.split, cfg.stats_images, True, self.fae.latent_mean.device):
            stats.update(tokens)  # [b, N, D]
            if extra is not None:
                extra_stats.update(extra)  # [b, P, D]
        measured = dict(zip(("mean", "std"), stats.all_reduce().mean_std()))
        if self.with_extra:
            measured.update(zip(("extra_mean", "extra_std"), extra_stats.all_reduce().mean_std()))
        if du.is_main():
            atomic_save_safetensors(measured, path, metadata={"key": key})
        du.barrier()
        return measured

    # ---- evaluation and export -------------------------------------------------------------------

    def evaluate(self, models, step, run_dir):
        fae = models["fae"]
        results = self.held_out_metrics(fae)
        if self.config.eval.probe:
            results.update(self.probe(fae))
        return results

    @torch.no_grad()
    def held_out_metrics(self, fae: FAE) -> dict[str, float]:
        """Held-out reconstruction quality, averaged over every image of every rank.

        cosine / rel_l2: ``fae.evaluation.recon`` in the raw feature scale; rec_mse / kl: the
        training loss terms per image (posterior mean decoded, no sampling); latent_*: per-channel
        statistics of the posterior mean. With extra_tokens "reconstruct" also extra_cosine (the
        mean cosine of the reconstructed CLS / register tokens, raw scale) and rec_extra (their
        training loss term).
        """
        cfg = self.config
        per_image = ChannelStats(6 if self.with_extra else 4)  # cosine, rel_l2, rec_mse, kl (, extra's)
        latent = ChannelStats(fae.config.latent_channels)
        for tokens, extra, _ in self.batches(cfg.eval.split, cfg.eval.limit, True, fae.latent_mean.device):
            out = fae(tokens, sample=False, extra=extra)
            recon = fae.normalizer.denormalize(out["recon"].float())  # [b, N, D] raw scale
            mse = (out["recon"] - out["target"]).square().mean(dim=(1, 2))  # [b]
            kl = gaussian_kl(out["mean"], out["logvar"]).mean(dim=(1, 2))  # [b]
            columns = [feature_cosine(tokens, recon), feature_relative_l2(tokens, recon), mse.double(), kl.double()]
            if extra is not None:
                extra_recon = fae.extra_normalizer.denormalize(out["extra_recon"].float())  # [b, P, D] raw
                extra_mse = (out["extra_recon"] - out["extra_target"]).square().mean(dim=(1, 2))  # [b]
                columns += [feature_cosine(extra, extra_recon), extra_mse.double()]
            per_image.update(torch.stack(columns, dim=1))  # [b, 4 or 6]
            latent.update(out["mean"])  # [b, N, c]
        per_image.all_reduce()
        latent.all_reduce()
        if per_image.count == 0:
            raise DataError(f"the held-out split '{cfg.eval.split}' is empty (check eval.split / eval.limit)")
        (cos, rel, mse, kl, *extra_terms), _ = per_image.mean_std()
        mean, std = latent.mean_std()
        results = {"cosine": float(cos), "rel_l2": float(rel), "rec_mse": float(mse), "kl": float(kl),
                   "loss": float(mse) + cfg.loss.kl_weight * float(kl),
                   "latent_mean_abs": float(mean.abs().mean()), "latent_std_mean": float(std.mean()),
                   "latent_std_min": float(std.min()), "latent_std_max": float(std.max())}
        if extra_terms:  # fae_loss adds rec_extra with weight 1
            results.update(extra_cosine=float(extra_terms[0]), rec_extra=float(extra_terms[1]),
                           loss=results["loss"] + float(extra_terms[1]))
        return results

    @torch.no_grad()
    def probe(self, fae: FAE) -> dict[str, float]:
        """Paper protocol: a linear head trained on raw pooled train features, scored on raw and on
        FAE-reconstructed held-out features (the paper keeps the gap within ~1 point)."""
        cfg = self.config
        train, test = self.tokens[cfg.data.split], self.tokens[cfg.eval.split]
        n_train = len(train) if cfg.eval.probe_train_limit is None else min(cfg.eval.probe_train_limit, len(train))
        train_x = probe_features(fae, train.tokens[:n_train], ("raw",), cfg.eval.batch_size)["raw"]  # [M, D]
        test_x = probe_features(fae, test.tokens, ("raw", "reconstructed"), cfg.eval.batch_size)
        classes = int(max(train.labels[:n_train].max(), test.labels.max())) + 1
        head = train_linear_head(train_x, train.labels[:n_train], epochs=cfg.eval.probe_epochs, seed=0,
                                 num_classes=classes)  # one head, applied unchanged to both
        top_raw = head_accuracy(head, test_x["raw"], test.labels)["top1"]
        top_recon = head_accuracy(head, test_x["reconstructed"], test.labels)["top1"]
        return {"probe_top1_raw": top_raw, "probe_top1_recon": top_recon, "probe_gap": top_raw - top_recon}

    @torch.no_grad()
    def export(self, models, run_dir: Path):
        """The FAE with its latent statistics (posterior means of the first ``stats_images``
        training items; rank 0 alone, as ``export`` runs there) -> ``run_dir/export``."""
        fae = models["fae"]
        stats = ChannelStats(fae.config.latent_channels)
        for tokens, _, _ in self.batches(self.config.data.split, self.config.stats_images, False,
                                         fae.latent_mean.device):
            stats.update(fae.posterior(tokens).mean)  # [b, N, c]
        fae.set_latent_stats(*stats.mean_std())
        return fae.save_pretrained(Path(run_dir) / "export")

    def describe(self):
        cfg, fae_cfg = self.config, self.fae_config
        with torch.device("meta"):
            fae = FAE(fae_cfg)
        count = lambda m: f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"  # noqa: E731
        n_encoder = sum(p.numel() for p in fae.encoder.parameters())
        return {"parameters": f"encoder {count(fae.encoder)} = {n_encoder:,} ({_describe_encoder(cfg.model.encoder)}), "
                              f"feature decoder {count(fae.decoder)} (paper: 38.17M attention encoder, "
                              "170.43M decoder)",
                "backbone": cfg.backbone.describe(),
                "latent": f"{cfg.model.latent_channels}x{fae_cfg.grid[0]}x{fae_cfg.grid[1]} "
                          f"(encoder: {cfg.model.encoder.kind})",
                "loss": f"||x_hat - x||^2 + {cfg.loss.kl_weight:g} * KL on {cfg.model.feature_norm}"
                        "-normalised features" + (f" + ||cls_hat - cls||^2 ({fae_cfg.extra_count} CLS / "
                                                  "register tokens)" if self.with_extra else ""),
                "tokens": f"token cache ({cfg.cache_dtype}) in {cfg.token_cache_folder()}"
                if cfg.cache_tokens else "backbone runs every step"}


def _read_stats(path: Path, key: str, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The tensors ``names`` stored under ``key``, or None (absent, other key, unreadable: measure again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {name: f.get_tensor(name) for name in names}
    except Exception:  # a damaged file is only a cache of a measurement: measure again
        return None


CONFIG_CLASS = AutoencoderRunConfig


def build_stage(cfg: AutoencoderRunConfig) -> AutoencoderStage:
    return AutoencoderStage(cfg)


def _describe_encoder(encoder) -> str:
    """The encoder's kind, and for the attention kind its layout (skip, activation width, table)."""
    if encoder.kind != "attention":
        return encoder.kind
    table = "position table" if encoder.pos_embed else "no position table"
    return f"attention: {encoder.skip} skip, activation at {encoder.activation_width} width, {table}"
