"""Configs of the ``fae eval`` verbs (YAML + ``key=value`` overrides, validated by ``fae.config``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fae.config import check_choices
from fae.data.datasets import FOLDER_DATASETS, DataConfig
from fae.errors import ConfigError
from fae.generation.decode import check_sampler_overrides
from fae.evaluation.fid import PR_NEAREST_K


@dataclass
class FidConfig:
    """``fae eval fid``: score a sample batch against a reference.

    Args:
        samples: ADM ``.npz`` sample batch (``arr_0`` uint8 NHWC), a statistics file, or a folder of
            images of one size (PNG / JPEG; ``fae sample --png`` writes one): the same images score
            the same either way.
        ref: ADM reference batch (``arr_0`` and/or precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``)
            or a ``fae eval ref-stats`` file. Precomputed statistics are used as they are.
        metrics: any of fid, sfid, kid, pr (precision/recall).
        batch_size: images per Inception forward pass on each rank.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        kid_subsets / kid_subset_size: KID's random subsets (Binkowski et al.: 100 x 1000).
        pr_k: nearest-neighbour k of improved precision/recall (ADM: 3).
        sqrt_method: "sqrtm" (ADM's scipy square root, checked, with an eigen fallback) or "eigh"
            (the eigen-decomposition directly: same value, ~10x faster on CPU at 2048-d).
        out: where to write the JSON results (default: next to the samples, ``<stem>.metrics.json``).
        progress: show tqdm bars.
        inception_weights: the 1008-class ``pt_inception-2015-12-05`` state dict (a local file); null =
            ``$FAE_INCEPTION_WEIGHTS``, else the TorchScript (no logits: IS unavailable). With it, every
            Inception feature of the run comes from that network (:mod:`fae.evaluation.inception_v3`).
        fid_resamples: bootstrap resamples of a 95% interval of the FID (``fid_ci``: the samples
            resampled, the reference fixed; :func:`fae.evaluation.intervals.bootstrap_fid`); 0 = none.
            1000 gives stable ends. Each resample of n >= 2048 samples is a 2048-d covariance of all n
            rows and an eigen-solve (float64, on ``device``): on 2 CPU cores 1.4 s at n = 4096 and
            1.8 s at 10K (measured 2026-12-05), growing with n; on a GPU ``device`` for 50K samples.
            Needs the samples' images or a statistics file with pool features.
    """

    samples: str | None = None
    ref: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["fid", "sfid", "kid", "pr"])
    batch_size: int = 50
    device: str = "auto"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = PR_NEAREST_K
    sqrt_method: Literal["sqrtm", "eigh"] = "sqrtm"
    out: str | None = None
    progress: bool = True
    inception_weights: str | None = None
    fid_resamples: int = 0

    def validate(self) -> None:
        if self.fid_resamples == 1 or self.fid_resamples < 0:
            raise ConfigError(f"config key 'fid_resamples' must be 0 (no interval) or >= 2, got {self.fid_resamples}")
        if self.fid_resamples and "fid" not in self.metrics:
            raise ConfigError("config key 'fid_resamples' asks for an FID interval, but 'fid' is not in 'metrics'")
        bad = [m for m in self.metrics if m not in ("fid", "sfid", "kid", "pr")]
        if bad:
            raise ConfigError(f"config key 'metrics': unknown metric(s) {bad}; choose from fid, sfid, kid, pr")
        _positive("batch_size", self.batch_size)
        _positive("pr_k", self.pr_k)


@dataclass
class RefStatsConfig:
    """``fae eval ref-stats``: Inception statistics of a reference image set.

    Args:
        data: the dataset to read (``fae.data.datasets.DataConfig``), unless ``images`` is given.
        images: an ``.npz`` of uint8 NHWC images (``arr_0``) to use instead of ``data``.
        out: the statistics file to write (``mu, sigma, mu_s, sigma_s, count[, pool_features]``).
        with_features: also store the [N, 2048] pool features (for KID and precision/recall).
        batch_size, device, progress: as for ``fae eval fid``.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(split="test"))
    images: str | None = None
    out: str = "runs/eval/ref_stats.npz"
    with_features: bool = True
    batch_size: int = 50
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        _positive("batch_size", self.batch_size)


@dataclass
class CocoConfig:
    """``fae eval coco``: COCO text-to-image FID (U-ViT's protocol, ``fae.commands.eval_coco``).

    Args:
        generator: exported text-to-image generator folder (``kind: mmdit``); required.
        fae: the exported FAE (with a pixel decoder) it was trained for; required.
        captions: COCO captions file (``annotations/captions_val2014.json``); required.
        images: the folder its ``file_name`` s are relative to (``val2014/``); required.
        num: prompts = samples = distinct images drawn (U-ViT / the FAE paper: 30000).
        seed: seed of the caption draw and of the samples' noise.
        image_size: reference images are ADM-center-cropped to this size (U-ViT: 256).
        reference: "all" captioned images of the file (U-ViT's val2014 statistics) or only the
            "drawn" ones.
        ref_stats: reference statistics file (default ``out_dir/ref_stats.npz``); reused while its
            record (``.json`` beside it) matches these settings, else written.
        out_dir: where the prompts, ``samples.npz`` (with the prompts), the statistics and
            ``coco.json`` go.
        sampling: sampler overrides (keys of ``SamplerConfig``, e.g. ``cfg_scale``).
        batch_size: samples per generator pass on each rank.
        inception_batch_size: images per Inception pass.
        sqrt_method, device, progress: as for ``fae eval fid``.
    """

    generator: str | None = None
    fae: str | None = None
    captions: str | None = None
    images: str | None = None
    num: int = 30000
    seed: int = 0
    image_size: int = 256
    reference: Literal["all", "drawn"] = "all"
    ref_stats: str | None = None
    out_dir: str = "runs/eval/coco"
    sampling: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    inception_batch_size: int = 50
    sqrt_method: Literal["sqrtm", "eigh"] = "sqrtm"
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        for key in ("num", "image_size", "batch_size", "inception_batch_size"):
            _positive(key, getattr(self, key))
        check_sampler_overrides(self.sampling, "sampling")

    def check(self) -> None:
        """Called when the run starts (flags fill the required paths after loading)."""
        for key in ("generator", "fae", "captions", "images"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' is required (or pass --{key})")


@dataclass
class ProbeConfig:
    """``fae eval probe``: top-1 of a linear classifier on pooled features (train split -> test split),
    or, given ``head``, the zero-shot protocol of the paper's Table 1: a fixed head (DINOv2's
    released ImageNet head, or one saved here with ``save_head``) scored on the raw and on the
    FAE-reconstructed features of ``data`` (its own split: e.g. ``data.split=val``), no training.

    Args:
        backbone: registry name of the frozen backbone (ignored with ``fae``: the FAE's own is used).
        resolution: backbone input size (null: the registry default).
        weights: local weights folder / file for the backbone (offline use; with ``fae``: of the
            backbone the FAE records).
        fae: an exported FAE folder; then ``features`` picks what is probed.
        features: "raw" backbone tokens, FAE "latent" z, or FAE-"reconstructed" tokens (mean-pooled).
        data: dataset (its ``split`` is ignored: the probe trains on "train", scores on "test").
        train_limit / test_limit: use only the first N images of each split.
        epochs: L-BFGS iterations; weight_decay: L2 penalty; seed: makes the result deterministic.
        batch_size: images per backbone forward pass; device: as for ``fae eval fid``.
        out: JSON results file.
        head: a linear head file (``weight`` [K, F] / ``bias`` [K], the released DINOv2 format; see
            ``fae.evaluation.linear_head``): the zero-shot protocol above. With an FAE the raw and
            the reconstructed features are scored (for a CLS + patch-mean head: the rows
            ``reconstructed``, ``pass_through`` and ``patch_mean_only``, see
            :func:`fae.commands.eval.run_head_probe`); ``features`` and the training keys are not used.
        save_head: (training mode) also write the head trained on the raw train features, in the
            same format (standardisation folded in), for a later ``head=FILE`` run.
        preprocess: how the image folders (``data.name`` imagefolder / folder) become the
            backbone's input, in both modes. "dinov2" (default) follows DINOv2's linear
            evaluation, as the paper's Table 1 does ("for data preprocessing we follow DINOv2"):
            BICUBIC resize of the short side to 256, centre crop 224, ImageNet mean/std in the
            backbone adapter (a 224 backbone takes the crop as it is). Images smaller than 256 are
            resized up, then cropped, as DINOv2 would; ``data.image_size`` / ``data.decode=draft``
            (the ADM crop's settings) are refused with it. "adm" is the old behaviour: the ADM
            crop to ``data.image_size`` (the training stages' path; the backbone then resizes the
            whole square, at 256 -> 224 a ~14% wider field of view than DINOv2's crop).
            Fashion-MNIST is read as it is either way (the demo's probe and its numbers).
    """

    backbone: str = "efficientnet-lite0"
    resolution: int | None = None
    weights: str | None = None
    fae: str | None = None
    features: Literal["raw", "latent", "reconstructed"] = "raw"
    data: DataConfig = field(default_factory=DataConfig)
    train_limit: int | None = None
    test_limit: int | None = None
    epochs: int = 100
    weight_decay: float = 3e-2  # our choice: best of 1e-2..1e-1 on Fashion-MNIST features
    seed: int = 0
    batch_size: int = 128
    device: str = "auto"
    out: str = "runs/eval/probe.json"
    progress: bool = True
    head: str | None = None
    save_head: str | None = None
    preprocess: Literal["dinov2", "adm"] = "dinov2"

    def validate(self) -> None:
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.features != "raw" and not self.fae and not self.head:
            raise ConfigError(f"config key 'features': '{self.features}' features need an FAE (fae=DIR)")
        if self.head and self.save_head:
            raise ConfigError("config keys 'head' and 'save_head' exclude each other: a given head is "
                              "not trained")
        if self.save_head and self.features != "raw":
            raise ConfigError("config key 'save_head': the protocol's head is trained on raw features "
                              f"(features=raw), not '{self.features}'")
        if self.preprocess == "dinov2" and self.data.name in FOLDER_DATASETS:
            adm_keys = (("image_size", self.data.image_size, None), ("decode", self.data.decode, "exact"))
            for key, value, default in adm_keys:
                if value != default:
                    raise ConfigError(f"config key 'data.{key}' ({value}) is a setting of the ADM crop; "
                                      "preprocess=dinov2 resizes to 256 and crops 224 itself: drop "
                                      f"data.{key}, or set preprocess=adm for the ADM crop")


@dataclass
class ReconConfig:
    """``fae eval recon``: feature and pixel reconstruction metrics of an exported FAE.

    Args:
        fae: exported FAE folder (``config.json`` + ``model.safetensors``); required.
        data: dataset to reconstruct (default: Fashion-MNIST test split).
        limit: use only the first N images (null: all of ``data``).
        pixels: decode to pixels for PSNR / SSIM / rFID (needs a pixel decoder in the export).
        rfid: compute rFID (Inception on originals vs reconstructions).
        sqrt_method: FID matrix square root, "sqrtm" (checked, with fallback) or "eigh".
        batch_size, device, progress: as for ``fae eval fid``.
        out: JSON results file.
    """

    fae: str | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(split="test"))
    limit: int | None = None
    pixels: bool = True
    rfid: bool = True
    sqrt_method: Literal["sqrtm", "eigh"] = "sqrtm"
    batch_size: int = 32
    device: str = "auto"
    out: str = "runs/eval/recon.json"
    progress: bool = True

    def validate(self) -> None:
        _positive("batch_size", self.batch_size)
        if not self.fae:
            raise ConfigError("config key 'fae': reconstruction metrics need an exported FAE folder")


@dataclass
class RetrievalConfig:
    """``fae eval retrieval``: COCO-style text-image retrieval, raw vs FAE-reconstructed tokens (the
    paper's Table 4; protocol in ``fae.evaluation.retrieval``).

    Args:
        fae: exported FAE folder over a SigLIP / SigLIP2 backbone (its tower must keep its MAP head).
        backbone_weights: local folder of that backbone's weights (null: the registry lookup of the
            name the FAE records; e.g. ``$FAE_WEIGHTS_SIGLIP2_G_OPT16_256``).
        images: folder of the images (COCO: the one holding ``val2014/``).
        captions: Karpathy-format captions file (``dataset_coco.json``, see ``fae.data.karpathy``).
        split: which split of it ("test": COCO 5K).
        limit: only the first N images of the split (and their captions).
        image_size: the square side images are brought to before the backbone (which then resizes
            to its own resolution); null = the FAE backbone's resolution.
        image_preprocess: "squash" (default, SigLIP2's setting: the whole image resized to
            ``image_size`` x ``image_size``, PIL bilinear, no crop - SigLIP's image processor and
            big_vision's ``resize``) or "center_crop" (the ADM centre crop; before issue 30).
        text_encoder: ``fae.text`` name of the SigLIP text tower (generic ``siglip-text`` reads any
            local SigLIP / SigLIP2 folder: give ``text_weights``).
        text_weights: local folder (or hub id) of the text tower; null = the registry lookup.
        text_max_length: tokens per caption (null: the entry's; 64 for SigLIP / SigLIP2 towers,
            generic ``siglip-text`` included: SigLIP2's training length).
        text_lowercase: lowercase captions first (default true, SigLIP2's setting: its text tower
            was trained on lowercased text; false: captions as written, before issue 30).
        text_tokens: "big_vision" (default, SigLIP2's setting: no BOS, an EOS appended and kept
            when cutting, right padding with the pad id - big_vision's ``tok(bos="no",
            eos="sticky")``, whatever tokenizer class the checkpoint names) or "tokenizer" (the
            checkpoint tokenizer's own special tokens and padding; before issue 30).
        batch_size, device, progress: as for ``fae eval fid``.
        out: JSON results file.
    """

    fae: str | None = None
    backbone_weights: str | None = None
    images: str | None = None
    captions: str | None = None
    split: str = "test"
    limit: int | None = None
    image_size: int | None = None
    image_preprocess: Literal["squash", "center_crop"] = "squash"  # SigLIP2's setting; "center_crop": before issue 30
    text_encoder: str = "siglip-text"
    text_weights: str | None = None
    text_max_length: int | None = None
    text_lowercase: bool = True  # SigLIP2's setting; false: before issue 30
    text_tokens: Literal["big_vision", "tokenizer"] = "big_vision"  # SigLIP2's setting; "tokenizer": before issue 30
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True
    out: str = "runs/eval/retrieval.json"

    def validate(self) -> None:
        _positive("batch_size", self.batch_size)
        for key in ("fae", "images", "captions"):
            if not getattr(self, key):
                raise ConfigError(f"config key '{key}' is required for retrieval (--{key})")
        if self.limit is not None:
            _positive("limit", self.limit)
        if self.image_size is not None:
            _positive("image_size", self.image_size)
        if self.text_max_length is not None:
            _positive("text_max_length", self.text_max_length)
        check_choices(self)


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
