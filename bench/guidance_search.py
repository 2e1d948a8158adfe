"""Guidance search on a trained generator: FID and class accuracy per CFG scale and interval.

RAE and LightningDiT pick their guidance this way; the paper prints its schedule only in part
(App. D; ``imagenet256/sample_cfg.yaml`` is our reading). Every setting draws the same
class-balanced samples (sample i: class i % K, noise seeded by (seed, i)) through the normal
sample-then-decode path, so the rows differ only by guidance. Per row: FID against a reference
statistics file (``fae eval ref-stats`` or an ADM reference batch), and the top-1 of a linear probe
trained on the FAE backbone's pooled features of real training images at reading the sampled class
(guidance trades diversity, FID, for class fidelity, accuracy), each with its 95% interval
(FID: bootstrap over the samples, reference fixed; accuracy: Wilson): two rows differ only when
their intervals separate.

    .venv/bin/python bench/guidance_search.py --generator runs/demo/generator/export \\
        --fae runs/demo/pixel_decoder_ii/export --ref runs/eval/ref_stats.npz --num 1000 \\
        --scales 1.0 1.5 2.0 3.0 --intervals 0,0.7 0,1 --paper-schedule data.limit=2000

Every guided setting runs once per ``--cfg-times`` value (default both): ``shifted`` reads the
interval / pieces at the time the network sees, ``unshifted`` on the uniform grid before the shift
(``sampling.cfg_time``; ``imagenet256/sample_cfg.yaml`` explains the two). ``--list`` prints the
settings and exits without loading anything.

Trailing ``key=value`` set the probe's training images (``fae.data.datasets.DataConfig``; default:
Fashion-MNIST train). Results: ``--out``/results.json and results.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from torch.utils.data import TensorDataset

from fae.autoencoder import FAE
from fae.config import load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.errors import ConfigError
from fae.evaluation.features import compute_inception_stats
from fae.evaluation.fid import frechet_distance
from fae.evaluation.inception import load_inception
from fae.evaluation.intervals import bootstrap_fid, wilson
from fae.evaluation.probe import linear_probe
from fae.evaluation.probe_features import FAEFeatures, pooled_features
from fae.evaluation.stats import read_stats
from fae.generation import Generator
from fae.generation.decode import SampleDecoder, check_pair, class_list, sampler_config
from fae.generation.samplers import PAPER_CFG_SCHEDULE, SamplerConfig
from fae.generation.seeding import balanced_labels

PAPER_SETTING = "paper schedule"


def settings(scales: list[float], intervals: list[str], paper: bool,
             cfg_times: list[str] = ("shifted",)) -> dict[str, dict]:
    """Row name -> sampler overrides; scale 1 (no guidance) appears once, whatever the interval or
    the time the interval is read at; every guided row once per ``cfg_times`` value."""
    rows = {}
    for scale in scales:
        for text in ([intervals[0]] if scale == 1.0 else intervals):
            low, high = (float(v) for v in text.split(","))
            for cfg_time in ([cfg_times[0]] if scale == 1.0 else cfg_times):
                name = "no guidance" if scale == 1.0 else f"w={scale:g} on {cfg_time} t in [{low:g}, {high:g}]"
                rows[name] = {"cfg_scale": scale, "cfg_interval": [low, high], "cfg_schedule": [],
                              "cfg_time": cfg_time}
    if paper:
        for cfg_time in cfg_times:
            rows[f"{PAPER_SETTING} ({cfg_time} t)"] = {
                "cfg_schedule": [list(piece) for piece in PAPER_CFG_SCHEDULE], "cfg_time": cfg_time}
    return rows


def probe_head(fae, overrides: list[str], batch_size: int):
    """(pooled raw backbone features [n, D], labels [n]) of the real training images."""
    data = load_config(DataConfig, None, ["split=train", "flip=false", *overrides])
    return pooled_features(FAEFeatures(fae, "raw"), build_dataset(data), batch_size=batch_size,
                           desc="probe train features")


def score(decoder, num: int, seed: int, head, reference, fae, batch_size: int) -> dict:
    """FID and class accuracy of ``num`` class-balanced samples drawn through ``decoder``."""
    labels = balanced_labels(range(num), class_list(decoder.generator))
    start = time.perf_counter()
    batch = decoder.all(range(num), labels, seed=seed, progress=True)
    sample_s = time.perf_counter() - start
    stats = compute_inception_stats(batch.images, load_inception(), batch_size=batch_size, keep_features=True)
    fid = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma, "eigh")
    fid_ci = bootstrap_fid(stats.pool_features, reference.mu, reference.sigma, seed=seed)
    features, _ = pooled_features(FAEFeatures(fae, "raw"), TensorDataset(batch.images, batch.labels),
                                  batch_size=batch_size, desc="sample features")
    accuracy = linear_probe(head[0], head[1], features, batch.labels)["top1"]
    return {"fid": fid, "fid_ci": list(fid_ci), "class_accuracy": accuracy,
            "class_accuracy_ci": list(wilson(round(accuracy * num), num)), "samples": num, "sample_s": sample_s}


def markdown(rows: list[dict]) -> str:
    lines = ["| guidance | FID [95% bootstrap] | class acc [95% Wilson] | sample s |", "|---|---|---|---|"]
    for r in rows:
        (f_lo, f_hi), (a_lo, a_hi) = r["fid_ci"], r["class_accuracy_ci"]
        lines.append(f"| {r['setting']} | {r['fid']:.2f} [{f_lo:.2f}, {f_hi:.2f}] | {r['class_accuracy']:.1%} "
                     f"[{a_lo:.1%}, {a_hi:.1%}] | {r['sample_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", help="exported generator folder (required unless --list)")
    parser.add_argument("--fae", help="exported FAE folder with a pixel decoder (required unless --list)")
    parser.add_argument("--ref", help="reference statistics (.npz with mu / sigma) (required unless --list)")
    parser.add_argument("--num", type=int, default=1000, help="samples per setting (same for every row)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--intervals", nargs="+", default=["0,0.7", "0,1"], help="t_low,t_high pairs")
    parser.add_argument("--paper-schedule", action="store_true", help="add the paper's piecewise schedule")
    parser.add_argument("--cfg-times", nargs="+", default=["shifted", "unshifted"], choices=["shifted", "unshifted"],
                        help="which time the interval / schedule refers to (sampling.cfg_time); each is a row")
    parser.add_argument("--list", action="store_true", help="print the settings and exit (nothing is loaded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/guidance_search"))
    parser.add_argument("data", nargs="*", metavar="key=value", help="the probe's training images")
    args = parser.parse_args(argv)
    rows_to_run = settings(args.scales, args.intervals, args.paper_schedule, args.cfg_times)
    if args.list:
        for name, overrides in rows_to_run.items():
            try:  # a bad interval fails here, before hours of sampling
                SamplerConfig(**overrides).validate()
            except ConfigError as e:
                parser.error(str(e))
            print(f"{name}: {json.dumps(overrides)}")
        return 0
    missing = [flag for flag in ("generator", "fae", "ref") if getattr(args, flag) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join('--' + m for m in missing)}")
    generator, fae = Generator.from_pretrained(args.generator), FAE.from_pretrained(args.fae)
    check_pair(generator, fae.identity(), fae.latent_shape, args.generator, args.fae)
    reference, head = read_stats(args.ref), probe_head(fae, args.data, args.batch_size)
    rows = []
    for name, overrides in rows_to_run.items():
        decoder = SampleDecoder(generator, fae, sampler_config(generator, overrides), args.batch_size)
        rows.append({"setting": name, **overrides, **score(decoder, args.num, args.seed, head, reference, fae,
                                                           args.batch_size)})
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    print(f"results: {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
