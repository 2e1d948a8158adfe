"""The kinds of generator the generator stage trains (config key ``kind``), one module each:
``diffusion`` (SiT / LightningDiT), ``flow`` (STARFlow) and ``mmdit`` (text-to-image MMDiT).
See :class:`GeneratorKind` for what a kind supplies."""
from fae.training.stages.generator_kinds.base import GeneratorKind
from fae.training.stages.generator_kinds.diffusion import DiffusionKind
from fae.training.stages.generator_kinds.flow import FlowKind
from fae.training.stages.generator_kinds.mmdit import MMDiTKind

KINDS: dict[str, type[GeneratorKind]] = {"diffusion": DiffusionKind, "flow": FlowKind, "mmdit": MMDiTKind}

__all__ = ["GeneratorKind", "DiffusionKind", "FlowKind", "MMDiTKind", "KINDS"]
