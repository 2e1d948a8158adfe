"""``fae eval coco``: FID of a text-to-image generator on COCO captions, U-ViT's protocol.

    fae eval coco --generator runs/cc12m/mmdit_t2i/export --fae runs/imagenet256/pixel_decoder_ii/export \
        --captions annotations/captions_val2014.json --images val2014/ --num 30000 [sampling.cfg_scale=1.5]

The protocol (the FAE paper evaluates its MMDiT "on COCO (30K samples, U-ViT protocol)"; U-ViT,
baofff/U-ViT ``eval_t2i_discrete.py``, ``datasets.py``):

1. prompts: ``num`` distinct val2014 images in a random order, one caption drawn uniformly among
   each image's (~5) captions (:func:`fae.data.coco.draw_captions`, seeded by ``seed``);
2. samples: one per prompt (``fae sample --prompts``: sample i has prompt i and noise seeded by
   (seed, i)), written as an ADM ``.npz`` that stores the prompts;
3. reference: Inception statistics of the val2014 images (``reference: all``, U-ViT's
   ``fid_stats_mscoco256_val.npz``; ``drawn``: only the drawn images), center-cropped to
   ``image_size`` = 256. Ours use the ADM center crop the rest of FAE uses (BOX halvings, BICUBIC
   resize, crop); U-ViT crops the center square first and resizes it with Lanczos: a small
   resampling difference, stated here;
4. FID (``fae eval fid``'s code: ADM InceptionV3 pool_3) of the samples against the reference.

Writes, under ``out_dir``: ``prompts.txt`` and ``drawn.jsonl`` (image id, file, caption per
prompt), ``samples.npz`` (+ ``samples.png``), ``ref_stats.npz`` with its record ``ref_stats.json``
(reused by a later run with the same images and size), ``fid.json`` and ``coco.json`` (the result
with the protocol's settings). Runs under torchrun like the other verbs.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fae import distributed as dist
from fae.commands.eval import _VERBS as EVAL_VERBS
from fae.commands.eval import _write, run_fid, run_ref_stats
from fae.commands.eval import configure as configure_eval
from fae.commands.sample import SampleConfig, check_exports, sample_to_npz
from fae.data.coco import CocoImage, DrawnCaption, draw_captions, read_coco_captions
from fae.data.datasets import DataConfig
from fae.errors import DataError
from fae.evaluation.config import CocoConfig, FidConfig, RefStatsConfig
from fae.io import atomic_save_json, atomic_write
from fae.preflight import input_file, input_folder, output_folder

PROTOCOL = ("U-ViT (baofff/U-ViT eval_t2i_discrete.py): num distinct val images in a seeded random order, "
            "one caption drawn uniformly per image; reference statistics of the {reference} images, ADM center "
            "crop to {size} px; FID on ADM InceptionV3 pool_3")


def run_coco(cfg: CocoConfig) -> dict[str, Any]:
    """Draw the prompts, sample them, build (or reuse) the reference statistics and score FID;
    rank 0 writes ``out_dir/coco.json``; returns the results."""
    cfg.check()
    check_inputs(cfg)
    images = read_coco_captions(cfg.captions)
    drawn = draw_captions(images, cfg.num, cfg.seed)
    _check_images_present(cfg.images, images if cfg.reference == "all" else drawn)
    out = Path(cfg.out_dir)
    prompts = out / "prompts.txt"
    if dist.is_main():
        _write_draw(out, drawn)
    dist.barrier()
    samples = sample_to_npz(SampleConfig(generator=cfg.generator, fae=cfg.fae, num=len(drawn), seed=cfg.seed,
                                         batch_size=cfg.batch_size, out=str(out / "samples.npz"),
                                         sampling=dict(cfg.sampling), prompts=str(prompts)))
    ref = reference_stats(cfg, images if cfg.reference == "all" else drawn)
    fid = run_fid(replace(FidConfig(), samples=str(samples), ref=str(ref), metrics=["fid"],
                          batch_size=cfg.inception_batch_size, device=cfg.device, sqrt_method=cfg.sqrt_method,
                          out=str(out / "fid.json"), progress=cfg.progress))
    results = {"fid": fid["fid"], "num": len(drawn), "seed": cfg.seed, "reference": cfg.reference,
               "reference_images": len(images) if cfg.reference == "all" else len(drawn),
               "image_size": cfg.image_size, "sampling": dict(cfg.sampling),
               "protocol": PROTOCOL.format(reference=cfg.reference, size=cfg.image_size),
               "samples": str(samples), "ref_stats": str(ref), "generator": cfg.generator, "fae": cfg.fae}
    return _write(results, str(out / "coco.json"))


def check_inputs(cfg: CocoConfig) -> None:
    """Every file ``fae eval coco`` reads and the folder it writes, checked before any model is
    built: the captions file, the images folder, both exports (the FAE with its pixel decoder)."""
    input_file(cfg.captions, "--captions", "COCO's annotations/captions_val2014.json")
    input_folder(cfg.images, "--images", "COCO's val2014/ image folder")
    check_exports(cfg.generator, cfg.fae)
    output_folder(cfg.out_dir, "config key 'out_dir'")


def _check_images_present(root: str, images: list[CocoImage] | list[DrawnCaption]) -> None:
    """Every image the reference statistics will read is in ``root`` (found now, not after sampling)."""
    folder = Path(root)
    missing = [im.file_name for im in images if not (folder / im.file_name).is_file()]
    if missing:
        raise DataError(f"--images '{root}' lacks {len(missing)} of the {len(images)} images the captions file "
                        f"names, e.g. '{missing[0]}': pass COCO's val2014/ folder")


def _write_draw(out: Path, drawn: list[DrawnCaption]) -> None:
    """``prompts.txt`` (one caption a line: ``fae sample --prompts``) and ``drawn.jsonl``."""
    lines = [json.dumps({"image_id": d.image_id, "file": d.file_name, "caption": d.caption}) for d in drawn]
    atomic_write(out / "prompts.txt", lambda f: f.write("".join(d.caption + "\n" for d in drawn)), mode="w")
    atomic_write(out / "drawn.jsonl", lambda f: f.write("\n".join(lines) + "\n"), mode="w")


def reference_stats(cfg: CocoConfig, images: list[CocoImage] | list[DrawnCaption]) -> Path:
    """The reference statistics file: reused while its record matches, else computed from the
    images (``fae eval ref-stats`` on a captions-file dataset of them) and recorded."""
    path = Path(cfg.ref_stats) if cfg.ref_stats else Path(cfg.out_dir) / "ref_stats.npz"
    record_path = path.with_suffix(".json")
    files = sorted({im.file_name for im in images})
    record = {"captions": str(Path(cfg.captions).resolve()), "images": str(Path(cfg.images).resolve()),
              "image_size": cfg.image_size, "count": len(files), "files": files}
    if path.is_file() and record_path.is_file() and json.loads(record_path.read_text()) == record:
        return path
    listing = path.with_name(path.stem + ".files.jsonl")
    if dist.is_main():  # the captions-file dataset of the reference images (the caption is unused)
        atomic_write(listing, lambda f: f.write("".join(json.dumps({"file": name, "caption": ""}) + "\n"
                                                        for name in files)), mode="w")
    dist.barrier()
    data = DataConfig(name="captions", root=cfg.images, captions=str(listing), image_size=cfg.image_size)
    run_ref_stats(RefStatsConfig(data=data, out=str(path), with_features=False,
                                 batch_size=cfg.inception_batch_size, device=cfg.device, progress=cfg.progress))
    if dist.is_main():
        atomic_save_json(record, record_path)
    dist.barrier()
    return path


COCO_FLAGS = [("--generator", "generator", "exported text-to-image generator folder"),
              ("--fae", "fae", "exported FAE folder (with a pixel decoder)"),
              ("--captions", "captions", "COCO captions file (captions_val2014.json)"),
              ("--images", "images", "the COCO images folder (val2014/)"),
              ("--num", "num", "prompts = samples (default 30000)", int),
              ("--out-dir", "out_dir", "output folder")]


def configure(parser) -> None:
    """The options of `fae eval`, ``coco`` among its verbs: this module uses ``fae.commands.eval``'s
    runners, so it adds itself to that module's verb table (``fae.cli`` configures `fae eval` here)."""
    EVAL_VERBS.setdefault("coco", ("CocoConfig", run_coco, "text-to-image FID on COCO captions (U-ViT's protocol: "
                              "one random caption per drawn image)", COCO_FLAGS))
    configure_eval(parser)
