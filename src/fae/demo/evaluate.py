"""The demo's final step: sample the generator and measure every stage on the Fashion-MNIST test split.

Measured (all on the first ``eval.test_images`` test images unless said otherwise):

* feature cosine / relative L2 of the FAE's reconstructed tokens x_hat vs the backbone's x;
* linear-probe top-1 (heads trained on the first ``eval.probe_train_images`` training images):
  raw pooled tokens; FAE-reconstructed pooled tokens scored by the *raw* head (the paper's protocol);
  pooled FAE latents (their own head);
* PSNR / SSIM of images decoded from the raw features (stage-Ib decoder) and from the FAE latents
  (the final FAE: encode -> decode_features -> stage-II decoder), and rFID of the latter;
* generation FID of ``eval.fid_samples`` class-balanced samples (with CFG, and optionally without)
  against the test images (the reference set's size is reported beside it);
* class accuracy of the samples: the raw linear head (real training images, pooled backbone
  features) applied to the backbone features of each generated image, compared to its requested class;
  the same head on the decoded test reconstructions tells how much of a miss the pixel decoder causes.

Results go to ``out/eval/metrics.json`` with the tensors the figures need (``out/eval/images.pt``);
a re-run reuses them while the exports they came from are unchanged.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fae.config import to_dict

NUM_CLASSES = 10
INCEPTION_CPU_BATCH = 16  # on a 2-core CPU ~15% faster than batches of 50-100 (bench/inception_throughput.py)


def _fingerprint(cfg, out: Path) -> dict[str, Any]:
    """What the evaluation depends on: its settings and the exports' modification times."""
    exports = {name: (out / name / "export" / "model.safetensors")
               for name in ("pixel_decoder_ib", "pixel_decoder_ii", "generator")}
    return {"eval": to_dict(cfg.eval), "data_root": cfg.data_root,
            "exports": {k: p.stat().st_mtime if p.exists() else None for k, p in exports.items()}}


def evaluate_step(cfg, out: Path) -> tuple[str, dict[str, Any]]:
    """Evaluate unless ``out/eval`` already holds results for these exports and settings."""
    from fae.io import atomic_save_json, atomic_torch_save

    folder = out / "eval"
    fingerprint = _fingerprint(cfg, out)
    metrics_path, images_path = folder / "metrics.json", folder / "images.pt"
    if metrics_path.is_file() and images_path.is_file():
        saved = json.loads(metrics_path.read_text())
        if saved.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            return "skipped (outputs valid)", saved["metrics"]
    metrics, images = evaluate(cfg, out)
    atomic_torch_save(images, images_path)
    atomic_save_json({"fingerprint": fingerprint, "metrics": metrics}, metrics_path)
    return "ran", metrics


# ------------------------------------------------------------------------------------------ passes


def _dataset(cfg, split: str, limit: int):
    from fae.data.datasets import DataConfig, build_dataset

    return build_dataset(DataConfig(name="fashion-mnist", root=cfg.data_root, split=split, limit=limit))


def _batches(dataset, batch_size: int, desc: str):
    """(uint8 images [b, C, H, W], labels [b]) over the dataset, with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(dataset), desc=desc, unit="img")
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        bar.update(len(items))
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])
    bar.close()


@torch.no_grad()
def train_features(fae, dataset, batch_size: int) -> dict[str, torch.Tensor]:
    """Pooled raw tokens [M, D], pooled latents [M, c] and labels [M] of the probe's training images."""
    raw, latent, labels = [], [], []
    for images, y in _batches(dataset, batch_size, "probe features (train)"):
        tokens = fae.tokens_from(images)  # [b, N, D]
        raw.append(tokens.mean(1))
        latent.append(fae.encode(tokens).mean(dim=(2, 3)))  # [b, c]
        labels.append(y)
    return {"raw": torch.cat(raw), "latent": torch.cat(latent), "labels": torch.cat(labels)}


@torch.no_grad()
def test_pass(fae, ib_decoder, dataset, batch_size: int) -> dict[str, torch.Tensor]:
    """One pass over the test images: pooled features, feature errors and both decodings."""
    from fae.images import from_unit_range
    from fae.evaluation.recon import feature_cosine, feature_relative_l2

    keys = ("raw", "recon", "latent", "cosine", "rel_l2", "original", "from_features", "from_latents",
            "labels")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for images, y in _batches(dataset, batch_size, "test split: FAE + decoders"):
        tokens = fae.tokens_from(images)  # [b, N, D]
        z = fae.encode(tokens)  # [b, c, h, w]
        x_hat = fae.decode_features(z)  # [b, N, D]
        values = {"raw": tokens.mean(1), "recon": x_hat.mean(1), "latent": z.mean(dim=(2, 3)),
                  "cosine": feature_cosine(tokens, x_hat).float(),
                  "rel_l2": feature_relative_l2(tokens, x_hat).float(), "original": images,
                  "from_features": from_unit_range(ib_decoder(tokens)),  # [b, C, H, W] in [0, 1]
                  "from_latents": fae.decode_features_to_pixels(x_hat), "labels": y}
        for k, v in values.items():
            parts[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 (what a PNG of the image holds; every image metric uses these)."""
    return (images01.clamp(0, 1) * 255).round().to(torch.uint8)


def image_scores(original: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    from fae.evaluation.image_metrics import psnr, ssim
    from fae.evaluation.recon import match_reference

    decoded = quantize(decoded).float() / 255.0
    reference = match_reference(original, decoded)
    return {"psnr": psnr(reference, decoded), "ssim": ssim(reference, decoded)}


@torch.no_grad()
def generate(generator, fae, indices: list[int], labels: torch.Tensor, seed: int, sampling,
             batch_size: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded samples float [n, C, H, W] in [0, 1] and their pooled latents [n, c] (the FAE's
    scale); sample i depends only on (seed, index, label)."""
    from tqdm.auto import tqdm

    images, pooled = [], []
    bar = tqdm(total=len(indices), desc=desc, unit="img")
    for latents in generator.iter_samples(indices, labels, seed=seed, config=sampling, batch_size=batch_size):
        latents = latents.to(fae.latent_mean.device)  # [b, c, h, w]
        images.append(fae.decode(latents).cpu())  # [b, C, H, W]
        pooled.append(latents.mean(dim=(2, 3)).cpu())  # [b, c]
        bar.update(len(latents))
    bar.close()
    return torch.cat(images), torch.cat(pooled)


@torch.no_grad()
def pooled_backbone(fae, images01: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pooled backbone features [n, D] of decoded images (quantised to uint8 first, as saved)."""
    return torch.cat([fae.backbone(quantize(images01[i:i + batch_size])).mean(1)
                      for i in range(0, len(images01), batch_size)])


def inception_features(net, images: torch.Tensor, batch_size: int, desc: str) -> np.ndarray:
    """InceptionV3 pool_3 features [n, 2048] (float64) of uint8 images."""
    from fae.evaluation.features import compute_inception_stats

    stats = compute_inception_stats(images, net, batch_size=min(batch_size, INCEPTION_CPU_BATCH),
                                    keep_features=True, desc=desc)
    return stats.pool_features.astype(np.float64)


def fid_from_samples(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets [n1, d], [n2, d] (unbiased covariances, as ``np.cov``), exactly,
    through the n1 x n2 cross-Gram matrix instead of a d x d matrix square root.

    With centred features A, B: S1 = A^T A / (n1 - 1), S2 = B^T B / (n2 - 1). The non-zero
    eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T / ((n1 - 1)(n2 - 1)), so
    tr (S1 S2)^(1/2) = sum of the singular values of A B^T / sqrt((n1 - 1)(n2 - 1)).
    For the demo's few hundred samples this replaces a 2048 x 2048 ``sqrtm`` (minutes on 2 CPU
    cores) with a small SVD; it equals ``fae.evaluation.fid.frechet_distance`` (see the test).
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    A, B = a - mu1, b - mu2  # [n1, d], [n2, d]
    n1, n2 = len(a), len(b)
    trace_root = np.linalg.svd(A @ B.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    value = (mu1 - mu2) @ (mu1 - mu2) + (A * A).sum() / (n1 - 1) + (B * B).sum() / (n2 - 1) - 2 * trace_root
    return float(max(value, 0.0))  # tiny negative values are rounding


# ------------------------------------------------------------------------------------------ evaluate


def load_models(out: Path):
    """The final FAE (with the stage-II decoder), the stage-Ib decoder and the generator."""
    from fae.autoencoder import FAE
    from fae.autoencoder.pixel_decoder import PixelDecoder
    from fae.generation import Generator
    from fae.commands.sample import check_pair

    fae_dir, gen_dir = out / "pixel_decoder_ii" / "export", out / "generator" / "export"
    fae = FAE.from_pretrained(fae_dir)
    ib_decoder = PixelDecoder.from_pretrained(out / "pixel_decoder_ib" / "export").eval()
    generator = Generator.from_pretrained(gen_dir)
    check_pair(generator, fae, str(gen_dir), str(fae_dir))
    return fae, ib_decoder, generator


def evaluate(cfg, out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """All metrics (a flat dict of numbers) and the images the figures show."""
    from fae.evaluation.inception import load_inception
    from fae.evaluation.probe import linear_probe
    from fae.generation.seeding import balanced_labels
    from fae.commands.sample import sampler_config

    ev = cfg.eval
    fae, ib_decoder, generator = load_models(out)
    train = train_features(fae, _dataset(cfg, "train", ev.probe_train_images), ev.batch_size)
    test = test_pass(fae, ib_decoder, _dataset(cfg, "test", ev.test_images), ev.batch_size)
    probe = lambda tr, te, y: linear_probe(tr, train["labels"], te, y, epochs=ev.probe_epochs)["top1"]  # noqa: E731
    m: dict[str, Any] = {
        "test_images": len(test["labels"]), "probe_train_images": len(train["labels"]),
        "feature_cosine": float(test["cosine"].mean()), "feature_rel_l2": float(test["rel_l2"].mean()),
        "probe_raw": probe(train["raw"], test["raw"], test["labels"]),
        "probe_reconstructed": probe(train["raw"], test["recon"], test["labels"]),
        "probe_latent": probe(train["latent"], test["latent"], test["labels"]),
    }
    for name in ("from_features", "from_latents"):
        for key, value in image_scores(test["original"], test[name]).items():
            m[f"{key}_{name}"] = value

    # Samples: sample i asks for class i % 10; CFG on and off share every sample's noise.
    sampling = sampler_config(generator, ev.sampling)
    unguided = replace(sampling, cfg_scale=1.0, cfg_schedule=[])
    n = ev.fid_samples
    labels = balanced_labels(range(n), list(range(NUM_CLASSES)))
    guided, guided_z = generate(generator, fae, list(range(n)), labels, ev.seed, sampling, ev.batch_size,
                                "samples (CFG)")
    n_off = n if ev.fid_without_cfg else min(n, ev.grid_per_class * NUM_CLASSES)
    plain, plain_z = generate(generator, fae, list(range(n_off)), labels[:n_off], ev.seed, unguided,
                              ev.batch_size, "samples (no CFG)")
    m["cfg"] = sampling_summary(sampling)
    m["class_accuracy_cfg"] = probe(train["raw"], pooled_backbone(fae, guided, ev.batch_size), labels)
    m["class_accuracy_no_cfg"] = probe(train["raw"], pooled_backbone(fae, plain, ev.batch_size), labels[:n_off])
    m["class_accuracy_samples_no_cfg"] = n_off
    # The generator alone: a head trained on the pooled FAE latents of real training images,
    # applied to the generated latents (no pixel decoder, no second backbone pass).
    m["latent_class_accuracy_cfg"] = probe(train["latent"], guided_z, labels)
    m["latent_class_accuracy_no_cfg"] = probe(train["latent"], plain_z, labels[:n_off])
    # The same head on decoded test reconstructions: how much of a miss is the pixel decoder's.
    m["class_accuracy_reconstructions"] = probe(train["raw"], pooled_backbone(fae, test["from_latents"],
                                                                              ev.batch_size), test["labels"])

    net = load_inception()
    feats = lambda images, desc: inception_features(net, images, ev.batch_size, desc)  # noqa: E731
    real = feats(test["original"], "inception (test images)")
    m["rfid"] = fid_from_samples(feats(quantize(test["from_latents"]), "inception (reconstructions)"), real)
    m["fid_cfg"] = fid_from_samples(feats(quantize(guided), "inception (samples, CFG)"), real)
    m["fid_samples"] = n
    if ev.fid_without_cfg:
        m["fid_no_cfg"] = fid_from_samples(feats(quantize(plain), "inception (samples, no CFG)"), real)
    images = {"original": test["original"][:ev.recon_rows],
              "from_features": test["from_features"][:ev.recon_rows],
              "from_latents": test["from_latents"][:ev.recon_rows],
              "guided": guided[:ev.grid_per_class * NUM_CLASSES],
              "plain": plain[:ev.grid_per_class * NUM_CLASSES]}
    return m, images


def sampling_summary(sampling) -> str:
    if sampling.cfg_schedule:
        guidance = "schedule " + ", ".join(f"{s:g} on t in [{lo:g}, {hi:g}]" for lo, hi, s in sampling.cfg_schedule)
    else:
        lo, hi = sampling.cfg_interval
        guidance = f"scale {sampling.cfg_scale:g} on t in [{lo:g}, {hi:g}]"
    return f"{sampling.method}, {sampling.steps} steps, CFG {guidance}"
