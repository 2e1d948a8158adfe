"""Encoder ablation on the demo setting: both attention layouts vs linear vs transformer at one budget.

The attention kind comes in its two layouts (``fae.autoencoder.encoder``): ``attention-projected``
(the paper's exact-count layout, the ImageNet default: fused projected skip, activation at the
attention width, no position table) and ``attention-identity`` (identity skip, activation at the
token width, learned position table: the earlier layout). Trains one FAE per variant with everything else equal (data, cached tokens, decoder, steps,
batch, optimiser, seed) through the normal `fae train autoencoder` stage, then prints a Markdown
table of the held-out metrics (Fashion-MNIST test split, EfficientNet-Lite0 tokens): feature
cosine similarity, relative L2, normalised MSE, KL, and the linear probe on raw vs reconstructed
features (paper: attention 86.17% vs 6-layer transformer 85.74%, raw 87.00%, on ImageNet).

    .venv/bin/python bench/encoder_ablation.py                       # demo config, all four variants
    .venv/bin/python bench/encoder_ablation.py --variants attention-projected attention-identity --steps 600

The backbone runs once per image: every run shares one token cache (default: the config's
``token_cache_dir``, else its run folder's ``token_cache``). Results: ``--out``/results.json and
results.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> the config overrides that make it (everything else is the config's)
    "attention-projected": ["model.encoder.kind=attention", "model.encoder.skip=projected",
                            "model.encoder.activation_width=attention", "model.encoder.pos_embed=false"],
    "attention-identity": ["model.encoder.kind=attention", "model.encoder.skip=identity",
                           "model.encoder.activation_width=token", "model.encoder.pos_embed=true"],
    "linear": ["model.encoder.kind=linear"],
    "transformer": ["model.encoder.kind=transformer"],
}
COLUMNS = (("cosine", "cos sim", "{:.4f}"), ("rel_l2", "rel L2", "{:.4f}"), ("rec_mse", "norm. MSE", "{:.4f}"),
           ("kl", "KL/elem", "{:.2f}"), ("probe_top1_raw", "probe raw", "{:.2%}"),
           ("probe_top1_recon", "probe recon", "{:.2%}"), ("probe_gap", "gap", "{:+.2%}"))


def run_variant(config: Path, variant: str, out: Path, steps: int | None, overrides: list[str]) -> dict:
    """Train one FAE with encoder ``variant`` (a key of VARIANTS); returns its held-out metrics and sizes."""
    import torch

    from fae.config import load_config
    from fae.training.engine import train
    from fae.training.stages.autoencoder import AutoencoderRunConfig, build_stage

    base = load_config(AutoencoderRunConfig, config, overrides)
    cache = base.token_cache_folder()  # the base run's cache, shared by every variant
    extra = [*VARIANTS[variant], f"train.run_dir={out / variant}", f"token_cache_dir={cache}"]
    if steps is not None:
        extra.append(f"train.steps={steps}")
    stage = build_stage(load_config(AutoencoderRunConfig, config, overrides + extra))
    with torch.device("meta"):
        params = sum(p.numel() for p in stage.build_models("meta")["fae"].encoder.parameters())
    start = time.perf_counter()
    result = train(stage, resume=False, force=True)
    return {"variant": variant, "encoder_params": params, "train_s": time.perf_counter() - start,
            "steps": stage.config.train.steps, **result["eval"]}


def markdown(rows: list[dict]) -> str:
    head = "| encoder | params | " + " | ".join(c[1] for c in COLUMNS) + " | train s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [fmt.format(r[key]) if key in r else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {r['variant']} | {r['encoder_params'] / 1e6:.2f}M | " + " | ".join(cells)
                     + f" | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo" / "autoencoder.yaml")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="override train.steps for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/encoder_ablation"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    rows = [run_variant(args.config, name, args.out, args.steps, args.overrides) for name in args.variants]
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    print(f"results: {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
