"""``fae eval {fid, ref-stats, probe, recon}``: thin parsers over :mod:`fae.evaluation.commands`.

Every verb takes ``--config FILE`` plus trailing ``key=value`` overrides; its convenience flags
(``--samples``, ``--ref``, ``--fae``, ...) are overrides applied last. Run any of them under
``torchrun --nproc_per_node=N -m fae.cli eval ...`` to shard the work.
"""
from __future__ import annotations

import argparse
import json

# verb -> (config class name, flags that map to config keys: (flag, key, help))
_VERBS = {
    "fid": ("FidConfig", "score an ADM sample batch against a reference (FID, sFID, KID, precision/recall)",
            [("--samples", "samples", "ADM .npz sample batch (arr_0 uint8 NHWC) or stats file"),
             ("--ref", "ref", "ADM reference batch / statistics .npz"),
             ("--out", "out", "JSON results file")]),
    "ref-stats": ("RefStatsConfig", "Inception reference statistics of a dataset or an .npz of images",
                  [("--images", "images", ".npz of uint8 NHWC images (instead of data.*)"),
                   ("--out", "out", "statistics .npz to write")]),
    "probe": ("ProbeConfig", "linear-probe top-1 of backbone features, FAE latents or reconstructions",
              [("--backbone", "backbone", "registry name of the backbone"),
               ("--fae", "fae", "exported FAE folder"),
               ("--features", "features", "raw | latent | reconstructed"),
               ("--out", "out", "JSON results file")]),
    "recon": ("ReconConfig", "reconstruction metrics of an exported FAE (feature cos/L2, PSNR, SSIM, rFID)",
              [("--fae", "fae", "exported FAE folder"),
               ("--out", "out", "JSON results file")]),
}
_RUNNERS = {"fid": "run_fid", "ref-stats": "run_ref_stats", "probe": "run_probe", "recon": "run_recon"}


def _overrides(args: argparse.Namespace, flags) -> list[str]:
    extra = [f"{key}={json.dumps(getattr(args, key))}" for _, key, _ in flags if getattr(args, key) is not None]
    return list(args.overrides) + extra


def _run(verb: str, args: argparse.Namespace) -> int:
    from fae.config import load_config
    from fae.evaluation import commands, config
    from fae import distributed as dist

    schema_name, _, flags = _VERBS[verb]
    cfg = load_config(getattr(config, schema_name), args.config, _overrides(args, flags))
    results = getattr(commands, _RUNNERS[verb])(cfg)
    if dist.is_main():
        _print(verb, results)
    return 0


def _print(verb: str, results: dict) -> None:
    from fae.evaluation.suite import format_table

    print(json.dumps(results, default=float))
    print(format_table({k: v for k, v in results.items() if k != "out"}))
    print(f"fae eval {verb}: wrote {results['out']}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate: FID/sFID/KID/precision-recall, reference "
                                   "statistics, linear probe, reconstruction metrics")
    verbs = parser.add_subparsers(dest="eval_verb", metavar="EVAL_VERB", required=True)
    for verb, (_, help_text, flags) in _VERBS.items():
        p = verbs.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML config file (default: the schema's defaults)")
        for flag, key, flag_help in flags:
            p.add_argument(flag, dest=key, default=None, help=flag_help)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(func=lambda args, verb=verb: _run(verb, args))
