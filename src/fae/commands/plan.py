"""``fae plan --config FILE [--stage NAME] [--gpus N] [--gpu KIND] [--json] [--no-measure] [key=value ...]``

What a training stage costs before it runs: parameters (trainable / frozen, per module), FLOPs per
image (forward, one training step; generators also per sample at the configured sampler), memory
per GPU under DDP and FSDP2 at the config's global batch (weights, gradients, AdamW, EMA, frozen
helpers, measured activations), the largest micro-batch that fits and the grad_accum it needs,
step time, images/s and the GPU-hours to the paper's milestones. No weights, no data, no GPU: the
models are built on the ``meta`` device (``fae.training.plan``). The stage is read from the
config's sections when ``--stage`` is not given.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fae.config import read_yaml
from fae.errors import ConfigError
from fae.training.plan.hardware import GPUS
from fae.training.plan.planner import plan_stage
from fae.training.plan.report import format_plan
from fae.training.stages.registry import STAGES, config_class, load_plan_stage, stage_config


def _sections(schema) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


# top-level sections that say a file is not one stage's config, and what to plan instead
NOT_A_STAGE = {
    "num": "a `fae sample` config: plan its generator with it, fae plan --config GENERATOR.yaml --sampling {path}",
    "arms": "an experiment (`fae experiment`): plan the stage configs its arms override, e.g. "
            "fae plan --config demo/generator.yaml KEY=VALUE ...",
    "pixel_decoder_ib": "the demo's config (`fae demo`), which composes stage configs: plan those, "
                        "e.g. fae plan --config demo/autoencoder.yaml",
}


def infer_stage(path: str | None, overrides: list[str]) -> str:
    """The stage whose config schema has every top-level section of the file and overrides (a
    tie goes to the stage named in the file name, e.g. pixel_autoencoder.yaml)."""
    keys = set(read_yaml(path)) if path else set()
    for section, hint in NOT_A_STAGE.items():
        if section in keys:
            raise ConfigError(f"'{path}' is {hint.format(path=path)}")
    keys |= {o.split("=", 1)[0].split(".", 1)[0] for o in overrides if "=" in o}
    fits = [name for name in STAGES if keys <= _sections(config_class(name))]
    if len(fits) > 1:  # the sections every stage has (train, data): the defining ones decide
        fits = [name for name in fits if (keys - {"train", "data"}) & _sections(config_class(name))] or fits
    if len(fits) > 1 and path:
        named = [name for name in fits if name.replace("-", "_") in Path(path).stem]
        fits = sorted(named, key=len)[-1:] or fits  # the longest: pixel_autoencoder, not autoencoder
    if len(fits) != 1:
        raise ConfigError(f"cannot tell which stage '{path}' configures (sections {sorted(keys)} fit "
                          f"{', '.join(fits) or 'none of ' + ', '.join(STAGES)}); pass --stage NAME")
    return fits[0]


def sampling_overrides(path: str | None, stage: str) -> list[str]:
    """The ``sampling:`` section of a ``fae sample`` config as overrides of a generator config."""
    if path is None:
        return []
    if stage != "generator":
        raise ConfigError(f"--sampling applies to generator configs, not to stage '{stage}'")
    section = read_yaml(path).get("sampling")
    if not isinstance(section, dict):
        raise ConfigError(f"'{path}' has no 'sampling:' section to plan with")
    return [f"sampling.{key}={json.dumps(value)}" for key, value in section.items()]


def stage_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The stage to plan and its overrides (the command line's, then ``--sampling``'s)."""
    stage_name = args.stage or infer_stage(args.config, args.overrides)
    return stage_name, list(args.overrides) + sampling_overrides(args.sampling, stage_name)


def config_of(args: argparse.Namespace):
    """The validated stage config ``fae plan`` plans (``--print-config``)."""
    stage_name, overrides = stage_and_overrides(args)
    return stage_config(stage_name, args.config, overrides)


def run(args: argparse.Namespace) -> int:
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    stage_name, overrides = stage_and_overrides(args)
    stage = load_plan_stage(stage_name, args.config, overrides)
    plan = plan_stage(stage, gpus=args.gpus, gpu=args.gpu, measure=args.measure)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        print(format_plan(plan, config=args.config))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae plan` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="a stage config (e.g. imagenet256/sit_xl1.yaml)")
    parser.add_argument("--stage", choices=list(STAGES), help="the stage (default: read from the config)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the global batch is split over (default 8)")
    parser.add_argument("--gpu", choices=list(GPUS), default="h100-80gb", help="GPU kind (default h100-80gb)")
    parser.add_argument("--sampling", metavar="FILE", help="a `fae sample` config whose sampling: section "
                        "replaces the generator's (e.g. imagenet256/sample_cfg.yaml)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (FLOPs, bytes)")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="skip the activation measurement (seconds on the CPU); totals then exclude "
                        "activations")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for fae train")
    parser.set_defaults(func=run, config_of=config_of)


