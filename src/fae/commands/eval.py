"""``fae eval {fid, ref-stats, probe, retrieval, recon}``: each verb is a function taking its config and
returning its results dict (``run_fid``, ...), plus the thin parser that calls it.

Every verb takes ``--config FILE`` plus ``key=value`` overrides (anywhere among its options); its
convenience flags (``--samples``, ``--ref``, ``--fae``, ...) are overrides applied last. Each checks
every file it reads and the place it writes before it loads a network or reads an image
(``check_fid_files``, ``check_probe_inputs``, ...). All of them run unchanged
under ``torchrun --nproc_per_node=N -m fae eval ...``: images are sharded over ranks,
features/sums are gathered, and rank 0 writes the results file. The metrics themselves live in
``fae.evaluation``; the process group is ``fae.cli.main``'s.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.utils.data

from fae import distributed as dist
from fae.autoencoder import FAE
from fae.backbones import load_backbone
from fae.backbones.registry import GENERIC_HF_NAMES, check_weights, get_info
from fae.config import load_config
from fae.data.datasets import (FOLDER_DATASETS, build_dataset, check_batchable, check_data, class_count,
                               data_root_label)
from fae.data.imagefolder import ImageFiles
from fae.data.karpathy import read_karpathy, squashed_images
from fae.data.transforms import DINOV2_CROP, DINOV2_RESIZE, dinov2_eval_crop
from fae.errors import ConfigError, DataError
from fae.evaluation import config
from fae.evaluation.config import FidConfig, ProbeConfig, ReconConfig, RefStatsConfig, RetrievalConfig
from fae.evaluation.inception import POOL_DIM, SPATIAL_DIM
from fae.evaluation.inception_v3 import load_scoring_network
from fae.evaluation.linear_head import (LinearHead, check_head_classes, check_head_width, head_accuracy,
                                        patch_mean_half)
from fae.evaluation.probe import fit_linear_probe
from fae.evaluation.probe_features import BackboneFeatures, FAEFeatures, HeadFeatures, pooled_features
from fae.evaluation.recon import reconstruction_metrics
from fae.evaluation.retrieval import RetrievalImageEmbeddings, retrieval_scores, text_embeddings
from fae.evaluation.scorer import FIDScorer
from fae.evaluation.stats import (FolderImages, InceptionStats, NpzImages, has_pool_features, has_stats,
                                  read_moments)
from fae.evaluation.suite import format_table
from fae.io import atomic_save_json
from fae.preflight import input_file, output_file
from fae.text import CaptionRules, load_text_encoder


def resolve_device(name: str) -> torch.device:
    """"auto" -> this rank's device; else ``name``."""
    return dist.device() if name == "auto" else torch.device(name)


def run_fid(cfg: FidConfig) -> dict[str, Any]:
    """Score ``cfg.samples`` against ``cfg.ref``; writes JSON on rank 0 and returns the results."""
    check_fid_files(cfg)
    device = resolve_device(cfg.device)
    net = load_scoring_network(cfg.inception_weights, device=device)  # IS with weights
    scorer = FIDScorer(net, device=device, batch_size=cfg.batch_size, sqrt_method=cfg.sqrt_method,
                       progress=cfg.progress)
    need = any(m in cfg.metrics for m in ("kid", "pr"))
    samples = scorer.npz_stats(cfg.samples, need_features=need or cfg.fid_resamples > 0, desc="samples")
    scorer.use_reference(scorer.npz_stats(cfg.ref, need_features=need, desc="reference"))
    check_fid_inputs(cfg, {cfg.samples: samples, cfg.ref: scorer.reference})
    results = scorer.metrics(samples, metrics=tuple(cfg.metrics), kid_subsets=cfg.kid_subsets,
                             kid_subset_size=cfg.kid_subset_size, pr_k=cfg.pr_k)
    if cfg.fid_resamples:  # every rank draws the same resamples (seed 0) and gets the same ends
        interval = list(scorer.fid_interval(samples.pool_features, resamples=cfg.fid_resamples))
        ordered: dict[str, Any] = {}
        for key, value in results.items():
            ordered[key] = value
            if key == "fid":
                ordered["fid_ci"] = interval  # listed right after the FID
        results = ordered
    results.update(samples=str(cfg.samples), ref=str(cfg.ref))
    return _write(results, fid_out(cfg))


def fid_out(cfg: FidConfig) -> str:
    """The results file: ``out``, else ``<samples without suffix>.metrics.json``."""
    return cfg.out or str(Path(cfg.samples).with_suffix("")) + ".metrics.json"


def check_fid_files(cfg: FidConfig) -> None:
    """Before Inception loads: both sets are there and readable (an ADM ``.npz`` of images or of
    statistics, or a folder of images of one size), statistics have the ADM widths, image sets
    are large enough for KID and P&R, and the results file can be written."""
    if not cfg.samples or not cfg.ref:
        raise ConfigError("fae eval fid needs both samples=<.npz or folder> and ref=<.npz> (or --samples/--ref)")
    moments = {path: _check_image_set(cfg, path, f"--{key}") for key, path in (("samples", cfg.samples),
                                                                              ("ref", cfg.ref))}
    for path, stats in moments.items():  # both files read first: a damaged one is named before widths
        if stats is not None:
            _check_widths(path, stats)
    if cfg.fid_resamples and moments[cfg.samples] is not None and not has_pool_features(cfg.samples):
        raise DataError(f"'{cfg.samples}' holds statistics without pool features, and the FID interval "
                        f"(fid_resamples={cfg.fid_resamples}) resamples the samples' features: give the "
                        f"images, or statistics written by `fae eval ref-stats` with with_features=true")
    output_file(fid_out(cfg), "--out")


def _check_image_set(cfg: FidConfig, path: str, flag: str) -> InceptionStats | None:
    """One FID input, read as far as its headers (no image is decoded); its precomputed moments
    when it holds statistics."""
    if Path(path).is_dir():
        _check_image_count(cfg, path, len(FolderImages(path)))
        return None
    input_file(path, flag, "an ADM .npz (arr_0 images or mu/sigma statistics) or a folder of PNG / JPEG images")
    if has_stats(path):
        return read_moments(path)
    images = NpzImages(path)
    images.close()
    _check_image_count(cfg, path, len(images))
    return None


def check_fid_inputs(cfg: FidConfig, sets: dict[str, InceptionStats]) -> None:
    """Each set's statistics have the ADM Inception widths, and enough images for KID and P&R."""
    for path, stats in sets.items():
        _check_widths(path, stats)
        _check_feature_count(cfg, path, stats.pool_features)


def _check_widths(path: str, stats: InceptionStats) -> None:
    """Statistics of the ADM InceptionV3's pool_3 (and spatial) features."""
    if stats.mu.shape[0] != POOL_DIM:
        raise DataError(f"'{path}' holds {stats.mu.shape[0]}-d statistics; the ADM InceptionV3 "
                        f"pool_3 features are {POOL_DIM}-d (mu [{POOL_DIM}], sigma "
                        f"[{POOL_DIM}, {POOL_DIM}])")
    if stats.mu_s is not None and stats.mu_s.shape[0] != SPATIAL_DIM:
        raise DataError(f"'{path}' holds {stats.mu_s.shape[0]}-d spatial statistics (mu_s); "
                        f"sFID uses {SPATIAL_DIM}-d ones")


def _check_feature_count(cfg: FidConfig, path: str, features) -> None:
    if features is not None:
        _check_image_count(cfg, path, features.shape[0])


def _check_image_count(cfg: FidConfig, path: str, n: int) -> None:
    """Enough images (or feature rows) for the metrics asked for."""
    if "pr" in cfg.metrics and n <= cfg.pr_k:
        raise DataError(f"'{path}' has {n} images; precision/recall with pr_k={cfg.pr_k} needs "
                        f"more than {cfg.pr_k} (lower pr_k or leave 'pr' out of metrics)")
    if "kid" in cfg.metrics and n < 2:
        raise DataError(f"'{path}' has {n} image(s); KID needs at least 2")


def run_ref_stats(cfg: RefStatsConfig) -> dict[str, Any]:
    """Write reference statistics of ``cfg.images`` (an .npz or a folder of images) or of ``cfg.data``."""
    check_ref_stats_inputs(cfg)
    scorer = FIDScorer(device=resolve_device(cfg.device), batch_size=cfg.batch_size, progress=cfg.progress)
    if cfg.images:
        source, label = _image_set(cfg.images), cfg.images
    else:
        source, label = build_dataset(cfg.data), f"{cfg.data.name}:{cfg.data.split}"
    stats = scorer.stats(source, keep_features=cfg.with_features, desc="ref-stats")
    if dist.is_main():
        stats.save(cfg.out, with_features=cfg.with_features)
    dist.barrier()
    return {"source": label, "count": stats.count, "out": str(cfg.out), "with_features": cfg.with_features}


def _image_set(path: str) -> FolderImages | NpzImages:
    """The images of a folder, or of an ADM ``.npz`` (``arr_0``)."""
    return FolderImages(path) if Path(path).is_dir() else NpzImages(path)


def check_ref_stats_inputs(cfg: RefStatsConfig) -> None:
    """Before Inception loads: the images (their headers) or the dataset's files, and the output place."""
    if cfg.images:
        if not Path(cfg.images).is_dir():
            input_file(cfg.images, "--images", "an .npz of uint8 NHWC images (arr_0) or a folder of images")
        _image_set(cfg.images)
    else:
        check_data(cfg.data)
    output_file(cfg.out, "--out")


def run_probe(cfg: ProbeConfig) -> dict[str, Any]:
    """Linear-probe top-1 of raw backbone features, or FAE latents / reconstructed features; with
    ``cfg.head``, the zero-shot protocol (:func:`run_head_probe`)."""
    head = check_probe_inputs(cfg)
    if head is not None:
        return run_head_probe(cfg, head)
    encoder = _probe_encoder(cfg, resolve_device(cfg.device))
    splits = {split: pooled_features(encoder, _limited(cfg.data, split, limit, _probe_crop(cfg)),
                                     batch_size=cfg.batch_size, progress=cfg.progress, desc=f"probe {split}")
              for split, limit in (("train", cfg.train_limit), ("test", cfg.test_limit))}
    result, head = fit_linear_probe(*splits["train"], *splits["test"], epochs=cfg.epochs, seed=cfg.seed,
                                    weight_decay=cfg.weight_decay)
    result.update(features=cfg.features, backbone=encoder.name, fae=cfg.fae, preprocess=_preprocess_label(cfg))
    if cfg.save_head:  # the head the scores came from, kept as a head file
        if dist.is_main():
            head.save(cfg.save_head)
        result["saved_head"] = str(cfg.save_head)
    return _write(result, cfg.out)


# What each row of the zero-shot probe with a CLS + patch-mean head scores (notes under the table).
HEAD_ROW_NOTES = {
    "reconstructed": "the headline: reconstructed CLS (decoded from the latent) + reconstructed patch mean",
    "pass_through": "original CLS: not a reconstruction (the backbone's CLS + the reconstructed patch mean)",
    "patch_mean_only": "the head's patch-mean weight columns + bias on the reconstructed patch mean (CLS half "
                       "zeroed; the released head's half, not a head trained on the patch mean)",
    "raw_patch_mean_only": "as patch_mean_only, on the raw patch mean",
}


def run_head_probe(cfg: ProbeConfig, head: LinearHead) -> dict[str, Any]:
    """Zero-shot top-1 / top-5 of a fixed head (``head``, read from ``cfg.head``) on ``cfg.data`` (its own split): raw
    backbone features and, with ``cfg.fae``, the FAE's reconstructions - the same head on all.

    For a CLS + patch-mean head (the released DINOv2 heads) the reconstruction gives three
    labelled rows: ``reconstructed`` (the headline; only an FAE trained with ``extra_tokens:
    reconstruct`` decodes the CLS token), ``pass_through`` (the original CLS beside the
    reconstructed patch mean) and ``patch_mean_only`` (:func:`patch_mean_half`), with
    ``raw_patch_mean_only`` as its raw reference. A head on the patch mean has ``reconstructed``.
    """
    device = resolve_device(cfg.device)
    if cfg.fae:
        fae = load_fae(cfg.fae, device, cfg.weights)
        encoder, mode = HeadFeatures(head, fae=fae), fae.config.extra_tokens
    else:
        encoder = HeadFeatures(head, backbone=load_backbone(cfg.backbone, weights=cfg.weights, device=device,
                                                            resolution=cfg.resolution))
        mode = None
    feats, labels = pooled_features(encoder, _limited(cfg.data, None, cfg.test_limit, _probe_crop(cfg)),
                                    batch_size=cfg.batch_size, progress=cfg.progress,
                                    desc=f"head probe {cfg.data.split}")
    width = head.in_features
    result: dict[str, Any] = {"protocol": "zero-shot: one fixed head on raw and on reconstructed features",
                              "head": str(cfg.head), "head_input": width, "num_test": int(len(labels)),
                              "data": f"{cfg.data.name}:{cfg.data.split}", "preprocess": _preprocess_label(cfg),
                              "backbone": encoder.name, "fae": cfg.fae, "extra_tokens": mode}
    rows = {kind: feats[:, i * width:(i + 1) * width] for i, kind in enumerate(encoder.kinds)}  # [N, F] each
    if "pass_through" in rows:  # a CLS + patch-mean head on an FAE's reconstruction
        rows["patch_mean_only"] = patch_mean_half(rows["pass_through"], head)
        rows["raw_patch_mean_only"] = patch_mean_half(rows["raw"], head)
    for kind, features in rows.items():
        scores = head_accuracy(head, features, labels)
        result[f"top1_{kind}"], result[f"top5_{kind}"] = scores["top1"], scores["top5"]
    if "top1_reconstructed" in result:
        result["top1_gap"] = result["top1_raw"] - result["top1_reconstructed"]
    if "pass_through" in rows:
        result.update({f"{kind}_note": note for kind, note in HEAD_ROW_NOTES.items() if kind in rows})
        if "reconstructed" not in rows:
            result["reconstructed_note"] = (f"no reconstructed row: this FAE has extra_tokens '{mode}' and does not "
                                            "decode the CLS token the head reads; the headline row needs an FAE "
                                            "trained with model.extra_tokens=reconstruct")
    return _write(result, cfg.out)


def _probe_crop(cfg: ProbeConfig):
    """The probe's image transform of the folder datasets (None: the dataset's own path)."""
    return dinov2_eval_crop if cfg.preprocess == "dinov2" and cfg.data.name in FOLDER_DATASETS else None


def _preprocess_label(cfg: ProbeConfig) -> str:
    """What the results file says about the images' preprocessing."""
    if cfg.data.name not in FOLDER_DATASETS:
        crop = f", ADM crop {cfg.data.image_size}" if cfg.data.image_size else ""
        return f"{cfg.data.name} images as stored{crop}"
    if cfg.preprocess == "dinov2":
        return f"dinov2: bicubic resize of the short side to {DINOV2_RESIZE}, centre crop {DINOV2_CROP}"
    return "adm: " + (f"ADM crop {cfg.data.image_size}" if cfg.data.image_size else "images as stored")


def check_probe_inputs(cfg: ProbeConfig) -> LinearHead | None:
    """Before a network loads: the head file (its keys, its input width against the tokens and its
    classes against the data's), the data splits, the FAE export or the backbone weights, and
    the output places. Returns the head read from ``cfg.head`` (None without one)."""
    head = LinearHead.load(cfg.head) if cfg.head else None
    for split in [cfg.data.split] if head is not None else ["train", "test"]:
        check_data(cfg.data, split)
    dim, has_cls = _check_probe_tokens(cfg)
    if head is not None:
        if dim is not None:
            check_head_width(head, dim, has_cls)
        classes = class_count(cfg.data)
        if classes is None:
            raise DataError(f"config key 'head': the zero-shot head probe needs labelled data (fashion-mnist or "
                            f"imagefolder); data '{cfg.data.name}' has no labels")
        check_head_classes(head, classes, f"data {data_root_label(cfg.data)}")
    output_file(cfg.out, "--out")
    if cfg.save_head:
        output_file(cfg.save_head, "config key 'save_head'")
    return head


def _check_probe_tokens(cfg: ProbeConfig) -> tuple[int | None, bool | None]:
    """Checks the FAE export (or the backbone's weights); returns the token width and whether the
    tokens carry a CLS token (None where it is not known before loading)."""
    if cfg.fae:
        record = _check_fae(cfg.fae, cfg.weights)["backbone"]
        return record.get("dim"), None
    check_weights(cfg.backbone, cfg.weights, cfg.resolution)
    if cfg.backbone in GENERIC_HF_NAMES:  # width and CLS come from the folder's config
        return None, None
    info = get_info(cfg.backbone, cfg.resolution)
    return info.dim, info.prefix_tokens > 0


def _check_fae(folder: str, backbone_weights: str | None = None, pixel_decoder: bool = False) -> dict[str, Any]:
    """An FAE export's config (no weights read) and the weights of the backbone it records."""
    config = FAE.check_export(folder, pixel_decoder=pixel_decoder)
    record = config.get("backbone") or {}
    name = str(record.get("name", "")).split(":")[0]
    if backbone_weights or (name and name not in GENERIC_HF_NAMES):
        check_weights(name, backbone_weights, record.get("resolution"))
    return config


def _probe_encoder(cfg: ProbeConfig, device: torch.device):
    """Images -> pooled features: through the FAE when one is given, else the raw backbone."""
    if cfg.fae:
        return FAEFeatures(FAE.from_pretrained(cfg.fae, device=device), cfg.features)
    return BackboneFeatures(load_backbone(cfg.backbone, weights=cfg.weights, device=device,
                                          resolution=cfg.resolution))


def load_fae(folder: str, device: torch.device, backbone_weights: str | None = None):
    """An exported FAE; ``backbone_weights`` (a local folder) loads the backbone it records from
    there (a generic ``hf``/``dinov2``/``siglip`` record such as ``siglip:<folder>`` needs one)."""
    fae = FAE.from_pretrained(folder, device=device)
    if backbone_weights:
        name = fae.config.backbone.split(":")[0]
        fae.attach_backbone(load_backbone(name, weights=backbone_weights, device=device,
                                          resolution=fae.config.resolution))
    return fae


def _limited(data, split: str | None, limit: int | None, crop=None):
    """The dataset ``data`` (split overridden when given, ``crop`` as :func:`build_dataset`), cut
    to its first ``limit`` items."""
    dataset = build_dataset(data, split=split, crop=crop)
    check_batchable(dataset)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return dataset


def run_recon(cfg: ReconConfig) -> dict[str, Any]:
    """Feature cosine / relative L2, PSNR, SSIM and rFID of an exported FAE on ``cfg.data``."""
    check_recon_inputs(cfg)
    fae = FAE.from_pretrained(cfg.fae, device=resolve_device(cfg.device))
    results = reconstruction_metrics(fae, _limited(cfg.data, None, cfg.limit), batch_size=cfg.batch_size,
                                     pixels=cfg.pixels, rfid=cfg.rfid, sqrt_method=cfg.sqrt_method,
                                     progress=cfg.progress)
    results.update(fae=cfg.fae, data=f"{cfg.data.name}:{cfg.data.split}")
    return _write(results, cfg.out)


def check_recon_inputs(cfg: ReconConfig) -> None:
    """Before a network loads: the FAE export (with a pixel decoder for pixel metrics) and its
    backbone's weights, the data's files, and the output place."""
    if not _check_fae(cfg.fae).get("pixel_decoder") and cfg.pixels:
        raise ConfigError(f"the FAE in '{cfg.fae}' has no pixel decoder: pass pixels=false for feature "
                          "metrics only, or export an FAE with a trained pixel decoder")
    check_data(cfg.data)
    output_file(cfg.out, "--out")


def run_retrieval(cfg: RetrievalConfig) -> dict[str, Any]:
    """Top-1 / top-5 text->image and image->text retrieval of raw and FAE-reconstructed SigLIP
    tokens (image embedding: the tower's MAP head; text: the SigLIP text tower), with SigLIP2's
    image and caption preprocessing unless the config selects the earlier one."""
    device = resolve_device(cfg.device)
    split = read_karpathy(cfg.captions, cfg.images, cfg.split, cfg.limit)
    _check_fae(cfg.fae, cfg.backbone_weights)
    output_file(cfg.out, "--out")
    fae = load_fae(cfg.fae, device, cfg.backbone_weights)
    encoder = RetrievalImageEmbeddings(fae)
    size = cfg.image_size or fae.config.resolution
    dataset = squashed_images(split.files, size) if cfg.image_preprocess == "squash" \
        else ImageFiles(split.files, list(range(len(split.files))), size)
    emb, index = pooled_features(encoder, dataset, batch_size=cfg.batch_size, progress=cfg.progress,
                                 desc="retrieval images")
    order = torch.argsort(index)  # dataset order (gathered across ranks already in order)
    emb = emb[order]
    rules = CaptionRules(lowercase=cfg.text_lowercase, big_vision=cfg.text_tokens == "big_vision")
    text = load_text_encoder(cfg.text_encoder, cfg.text_weights, cfg.text_max_length, device=device, rules=rules)
    texts = text_embeddings(text, split.captions, cfg.batch_size, progress=cfg.progress)
    caption_image = torch.tensor(split.caption_image)
    width = emb.shape[1] // 2
    results: dict[str, Any] = {"fae": cfg.fae, "backbone": encoder.name, "text_encoder": text.info.name,
                               "split": cfg.split, "images": len(split.files), "captions": len(split.captions),
                               "image_preprocess": cfg.image_preprocess, "text_lowercase": cfg.text_lowercase,
                               "text_tokens": cfg.text_tokens, "text_max_length": text.max_length}
    for i, kind in enumerate(encoder.kinds):
        scores = retrieval_scores(emb[:, i * width:(i + 1) * width], texts, caption_image)
        results.update({f"{key}_{kind}": value for key, value in scores.items()})
    return _write(results, cfg.out)


def _write(results: dict[str, Any], out: str) -> dict[str, Any]:
    """Rank 0 writes ``out`` (JSON); every rank returns the results with ``out`` recorded."""
    results = {**results, "out": str(out)}
    if dist.is_main():
        atomic_save_json(json.loads(json.dumps(results, default=float)), out)
    dist.barrier()
    return results


# ------------------------------------------------------------------------------------------ CLI


# verb -> (config class in fae.evaluation.config, runner, help, flags mapping to config keys [, flag type]);
# ``coco`` is added by fae.commands.eval_coco.add_verb (it uses the runners here, so it is not imported here)
_VERBS: dict[str, tuple[str, Callable[[Any], dict], str, list[tuple[str, str, str]]]] = {
    "fid": ("FidConfig", run_fid,
            "score an ADM sample batch against a reference (FID, sFID, KID, precision/recall)",
            [("--samples", "samples", "ADM .npz sample batch (arr_0 uint8 NHWC), stats file, or a folder of "
              "PNG/JPEG images (fae sample --png)"),
             ("--ref", "ref", "ADM reference batch / statistics .npz"),
             ("--out", "out", "JSON results file")]),
    "ref-stats": ("RefStatsConfig", run_ref_stats,
                  "Inception reference statistics of a dataset or an .npz of images",
                  [("--images", "images", ".npz of uint8 NHWC images (instead of data.*)"),
                   ("--out", "out", "statistics .npz to write")]),
    "probe": ("ProbeConfig", run_probe,
              "linear-probe top-1 of backbone features, FAE latents or reconstructions",
              [("--backbone", "backbone", "registry name of the backbone"),
               ("--fae", "fae", "exported FAE folder"),
               ("--features", "features", "raw | latent | reconstructed"),
               ("--head", "head", "fixed linear head file (DINOv2 released format): zero-shot, raw vs reconstructed"),
               ("--out", "out", "JSON results file")]),
    "retrieval": ("RetrievalConfig", run_retrieval,
                  "text-image retrieval top-1/top-5 (COCO Karpathy format) of raw vs FAE-reconstructed SigLIP tokens",
                  [("--fae", "fae", "exported FAE folder (SigLIP / SigLIP2 backbone)"),
                   ("--images", "images", "image folder (COCO: the one holding val2014/)"),
                   ("--captions", "captions", "Karpathy-format captions file (dataset_coco.json)"),
                   ("--out", "out", "JSON results file")]),
    "recon": ("ReconConfig", run_recon,
              "reconstruction metrics of an exported FAE (feature cos/L2, PSNR, SSIM, rFID)",
              [("--fae", "fae", "exported FAE folder"),
               ("--out", "out", "JSON results file")]),
}


def _overrides(args: argparse.Namespace, flags) -> list[str]:
    extra = [f"{key}={json.dumps(getattr(args, key))}" for _, key, *_ in flags if getattr(args, key) is not None]
    return list(args.overrides) + extra


def _config(verb: str, args: argparse.Namespace):
    """The validated config ``fae eval VERB`` runs with: file, overrides, then flags (``--print-config``)."""
    schema_name, _, _, flags = _VERBS[verb]
    return load_config(getattr(config, schema_name), args.config, _overrides(args, flags))


def _run(verb: str, args: argparse.Namespace) -> int:
    results = _VERBS[verb][1](_config(verb, args))
    if dist.is_main():
        _print(verb, results)
    return 0


def _print(verb: str, results: dict[str, Any]) -> None:
    print(json.dumps(results, default=float))
    print(format_table({k: v for k, v in results.items() if k != "out"}))
    print(f"fae eval {verb}: wrote {results['out']}")


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae eval` (``fae.cli`` made its parser, with the one-line help)."""
    verbs = parser.add_subparsers(dest="eval_verb", metavar="EVAL_VERB", required=True)
    for verb, (_, _, help_text, flags) in _VERBS.items():
        p = verbs.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML config file (default: the schema's defaults)")
        for flag, key, flag_help, *kind in flags:  # a 4th entry: the flag's type
            p.add_argument(flag, dest=key, default=None, help=flag_help, type=kind[0] if kind else str)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(func=lambda args, verb=verb: _run(verb, args),
                       config_of=lambda args, verb=verb: _config(verb, args))
